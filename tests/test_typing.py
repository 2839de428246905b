"""The top-level API as a consumer's type checker sees it: ``mypy --strict`` on a snippet that
uses ``import ovfkit`` must reveal the real types (not Any) and must reject a wrong call.

Lines of the snippet end in ``# T: <revealed type>`` (mypy must reveal exactly that) or
``# E: <error code>`` (mypy must report that error there); any other error fails the test.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import ovfkit

ROOT = Path(__file__).resolve().parents[1]

CONSUMER = '''
import io
import threading

import ovfkit

disk = ovfkit.Disk("d1", None, "scsi0", 0, source=ovfkit.DiskSource("web.qcow2"))
vm = ovfkit.VirtualMachine(
    name="web",
    controllers=(ovfkit.Controller("scsi0", ovfkit.ControllerType.SCSI),),
    disks=(disk,),
)
reveal_type(vm)  # T: ovfkit.model.VirtualMachine
reveal_type(vm.disks[0].capacity)  # T: builtins.int | None
options = ovfkit.OvaOptions(manifest="sha256")
result = ovfkit.write_ova(vm, "web.ova", options, cancel=threading.Event())
reveal_type(result)  # T: ovfkit.ova.plan.PackageResult
reveal_type(result.md5)  # T: builtins.str
reveal_type(result.files[0].digests)  # T: typing.Mapping[builtins.str, builtins.str]
streamed = ovfkit.write_ova_stream(vm, io.BytesIO())
reveal_type(streamed)  # T: ovfkit.ova.plan.PackageResult
report = ovfkit.verify_package("web.ova")
reveal_type(report)  # T: ovfkit.ova.reader.Report
reveal_type(report.ok)  # T: builtins.bool
package = ovfkit.open_package("web.ova")
reveal_type(package)  # T: ovfkit.ova.reader.Package
reveal_type(ovfkit.parse_descriptor(b""))  # T: ovfkit.model.VirtualMachine
reveal_type(ovfkit.build_descriptor(vm))  # T: builtins.bytes
reveal_type(ovfkit.inspect_vmdk("d.vmdk"))  # T: ovfkit.vmdk.reader.VmdkInfo
reveal_type(ovfkit.vm_from_zstack("{}"))  # T: ovfkit.model.VirtualMachine


def on_progress(p: ovfkit.Progress) -> None:
    reveal_type(p.done)  # T: builtins.int


callback: ovfkit.ProgressCallback = on_progress
token: ovfkit.CancelToken = threading.Event()
try:
    ovfkit.write_ova(vm, "web.ova", progress=callback, cancel=token)
except ovfkit.OvfkitIOError as exc:
    reveal_type(exc.code)  # T: builtins.str
except ovfkit.OvfkitError as exc:
    reveal_type(exc.to_error_code())  # T: builtins.dict[builtins.str, Any]
reveal_type(ovfkit.IoError("old name"))  # T: ovfkit.errors.OvfkitIOError
reveal_type(ovfkit.__version__)  # T: builtins.str

# Wrong calls: each must be an error.
ovfkit.write_ova(vm, "web.ova", {"manifest": "sha1"})  # E: arg-type
ovfkit.OvaOptions(manifest="md4")  # E: arg-type
ovfkit.verify_package(42)  # E: arg-type
wrong: int = ovfkit.write_ova  # E: assignment
ovfkit.no_such_name  # E: attr-defined
'''

_MARK = re.compile(r"#\s*([TE]):\s*(.+?)\s*$")
_OUT = re.compile(r"^[^:]+:(\d+): (note|error): (.*?)(?:  \[([a-z-]+)\])?$")


def _expectations() -> tuple[dict[int, str], dict[int, str]]:
    types: dict[int, str] = {}
    errors: dict[int, str] = {}
    for n, line in enumerate(CONSUMER.splitlines(), start=1):
        m = _MARK.search(line)
        if m is not None:
            expected = m.group(2).replace("builtins.", "")  # mypy >= 1.16 leaves it out
            (types if m.group(1) == "T" else errors)[n] = expected
    return types, errors


def run_mypy(
    snippet: Path, cache: Path, *, mypy_path: Path | None, extra: Sequence[str] = ()
) -> str:
    """mypy --strict on ``snippet``, resolving ``ovfkit`` from ``mypy_path`` (a checkout) or from
    the interpreter's site-packages (an installed wheel)."""
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    if mypy_path is not None:
        env["MYPYPATH"] = str(mypy_path)
    proc = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
            "--no-pretty",
            "--cache-dir", str(cache), "--config-file", os.devnull, *extra, str(snippet),
        ],
        capture_output=True, text=True, env=env, cwd=snippet.parent, check=False, timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout


def check_consumer(output: str) -> None:
    types, errors = _expectations()
    revealed: dict[int, str] = {}
    reported: dict[int, list[str]] = {}
    for line in output.splitlines():
        m = _OUT.match(line)
        assert m is not None, line
        n, kind, text, code = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if kind == "note" and text.startswith("Revealed type is "):
            revealed[n] = text.removeprefix("Revealed type is ").strip('"').replace("builtins.", "")
        elif kind == "error":
            reported.setdefault(n, []).append(code or text)
    assert revealed == types
    assert {n: codes[0] for n, codes in reported.items()} == errors, output


def test_consumer_sees_real_types(tmp_path: Path) -> None:
    snippet = tmp_path / "consumer.py"
    snippet.write_text(CONSUMER, encoding="utf-8")
    check_consumer(run_mypy(snippet, tmp_path / "cache", mypy_path=ROOT))


def test_type_imports_match_the_lazy_map() -> None:
    """The TYPE_CHECKING imports of ovfkit/__init__.py name the same objects, from the same
    modules, as the lazy map that serves them at run time."""
    tree = ast.parse((ROOT / "ovfkit" / "__init__.py").read_text(encoding="utf-8"))
    guarded = next(
        node for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )
    typed: dict[str, str] = {}
    for node in guarded.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names:
            typed[alias.asname or alias.name] = f"ovfkit.{node.module}"
    assert typed == ovfkit._EXPORTS
    assert sorted(ovfkit.__all__) == sorted([*ovfkit._EXPORTS, "__version__"])
