"""The public API: importable without side effects, every exported name resolves, typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ovfkit
from ovfkit.errors import InvalidArgumentError, NotFoundError, OperationFailedError


def test_import_loads_nothing_and_writes_nothing(tmp_path: Path) -> None:
    code = (
        "import sys, os, ovfkit\n"
        "heavy = [m for m in sys.modules if m.startswith(('ovfkit.', 'lxml', 'isal'))]\n"
        "heavy = [m for m in heavy if m not in ('ovfkit._lazy',)]\n"
        "print(','.join(heavy)); print(len(os.listdir('.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    loaded, files = out.stdout.splitlines()
    assert loaded == ""
    assert files == "0"


def test_every_exported_name_resolves() -> None:
    for name in ovfkit.__all__:
        assert getattr(ovfkit, name) is not None, name
    assert set(dir(ovfkit)) == set(ovfkit.__all__)


def test_package_is_typed() -> None:
    assert (Path(ovfkit.__file__).parent / "py.typed").is_file()


def test_error_code_shape_nests_the_cause() -> None:
    root = NotFoundError("volume /x.qcow2 does not exist")
    err = OperationFailedError("export failed", cause=root)
    assert err.to_error_code() == {
        "code": "SYS.1006",
        "description": "An operation failed",
        "details": "export failed",
        "cause": {
            "code": "SYS.1003",
            "description": "Resource not found",
            "details": "volume /x.qcow2 does not exist",
        },
    }
    assert str(InvalidArgumentError("field[vmUuid] is mandatory")) == (
        "SYS.1007: field[vmUuid] is mandatory"
    )


def test_cited_rules_live_in_the_repository() -> None:
    root = Path(__file__).resolve().parents[1]
    assert (root / "docs" / "interop-rules.md").is_file()
    outside = [
        str(p.relative_to(root))
        for p in (root / "ovfkit").rglob("*.py")
        if "../shared/" in p.read_text(encoding="utf-8")
    ]
    assert outside == []
