"""The wheel as another export tool would use it: built from this tree, installed with no extra
into a fresh venv (offline: pip --no-index, the core dependencies' wheels that scripts/bootstrap
test downloaded into .venv/wheelhouse), it exports and verifies a VM built by hand, its typed
surface reaches mypy, and each missing extra is a one-line error naming it.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_typing import CONSUMER, check_consumer, run_mypy

import ovfkit
from ovfkit._extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = Path(sys.prefix) / "wheelhouse"
CORE = {"lxml", "xxhash", "isal", "pycdlib"}

# Run inside the fresh venv: a VM built by hand, exported to a file and to a pipe-like stream,
# verified; then every extra-only feature must fail with MissingExtraError naming its extra.
SCRIPT = r'''
import io, json, os, sys
import ovfkit

image = sys.argv[1]
with open(image, "wb") as f:
    f.truncate(4 << 20)
    f.write(b"hand-built boot sector" * 20)
    f.seek(3 << 20)
    f.write(os.urandom(64 << 10))
vm = ovfkit.VirtualMachine(
    name="hand-built",
    vcpus=2,
    memory_mib=1024,
    guest_os=ovfkit.GuestOs(cim_id=101, vmware_id="otherLinux64Guest", description="Linux"),
    controllers=(ovfkit.Controller("scsi0", ovfkit.ControllerType.SCSI),),
    disks=(ovfkit.Disk("root", None, "scsi0", 0, ovfkit.DiskSource(image, "raw"),
                       boot_order=1),),
    networks=(ovfkit.Network("lan"),),
    nics=(ovfkit.Nic("nic0", ovfkit.NicType.VMXNET3, "lan"),),
)
out = os.path.join(os.path.dirname(image), "hand-built.ova")
result = ovfkit.write_ova(vm, out)
report = ovfkit.verify_package(out)
stream = io.BytesIO()
ovfkit.write_ova_stream(vm, stream)
missing = {}
def expect(extra, call):
    try:
        call()
    except ovfkit.MissingExtraError as exc:
        missing[extra] = str(exc)
    except ImportError as exc:
        missing[extra] = "plain ImportError: " + str(exc)
expect("sign", lambda: ovfkit.load_signer(b"", b""))
expect("server", lambda: __import__("ovfkit.server"))
def sftp():
    from ovfkit.zstack.config import SftpStorageConfig
    from ovfkit.zstack.storage import open_backup_storage
    open_backup_storage(SftpStorageConfig(uuid="0" * 32, name="s", hostname="127.0.0.1",
                                          username="u", path="/p", password="x"))
expect("sftp", sftp)
expect("cluster", lambda: __import__("ovfkit.cluster.celery_app"))
expect("zstack-records", lambda: __import__("ovfkit.db"))
print(json.dumps({
    "ok": report.ok, "problems": report.problems, "size": result.size,
    "capacity": ovfkit.open_package(out).vm.disks[0].capacity,
    "streamed": len(stream.getvalue()), "missing": missing,
    "file": ovfkit.__file__,
}))
'''


def _run(*args: str | os.PathLike[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, timeout=240,
        **kwargs,  # type: ignore[call-overload]
    )


def _build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of this tree (so the build leaves nothing in the checkout)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "ovfkit", src / "ovfkit",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--no-index", "-q", "-w", tmp / "dist", src)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp / "dist").glob("ovfkit-*.whl")
    return wheel


def _check_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(info).decode())
    assert "ovfkit/py.typed" in names
    assert "ovfkit/demo.py" not in names and not any(n.startswith("scripts/") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert meta["Version"] == ovfkit.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert "Typing :: Typed" in meta.get_all("Classifier", [])
    requires = meta.get_all("Requires-Dist", [])
    core = {r.split(">")[0].split("[")[0].strip() for r in requires if "extra ==" not in r}
    assert core == CORE
    extras = set(meta.get_all("Provides-Extra", []))
    assert {"sign", "sftp", "server", "cluster", "all"} <= extras


def test_extras_map_matches_pyproject() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        names = {r.split(">")[0].split("[")[0].split("<")[0].strip().lower()
                 for r in optional[extra]}
        # distribution names, and the modules they install (psycopg[binary] -> psycopg, ...)
        # psycopg[binary] installs psycopg; ovfkit[server] is an extra of the same project
        assert names - {"ovfkit"} <= {*modules, "psycopg"}, (extra, names)
    assert {r.split(">")[0] for r in project["dependencies"]} == CORE


def test_wheel_without_extras_exports_and_verifies(tmp_path: Path) -> None:
    if not any(WHEELHOUSE.glob("lxml-*.whl")):
        pytest.fail(f"no core wheels in {WHEELHOUSE}: run `bash scripts/bootstrap test`")
    wheel = _build_wheel(tmp_path)
    _check_wheel_contents(wheel)
    venv = tmp_path / "venv"
    proc = _run(sys.executable, "-m", "venv", "--without-pip", venv)
    assert proc.returncode == 0, proc.stderr
    python = venv / "bin" / "python"
    proc = _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index",
                "--find-links", WHEELHOUSE, wheel)
    assert proc.returncode == 0, proc.stderr
    proc = _run(sys.executable, "-m", "pip", "--python", python, "list", "--format", "json")
    installed = {d["name"].lower() for d in json.loads(proc.stdout)}
    assert installed == {"ovfkit", *CORE}
    work = tmp_path / "work"
    work.mkdir()
    proc = _run(python, "-c", SCRIPT, work / "root.raw", cwd=work)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["file"].startswith(str(venv))  # the installed wheel, not this checkout
    assert out["ok"], out["problems"]
    assert out["capacity"] == 4 << 20 and out["streamed"] > 0
    for extra in ("sign", "server", "sftp", "cluster"):
        line = out["missing"].get(extra, "")
        assert f"pip install 'ovfkit[{extra}]'" in line and "\n" not in line, (extra, line)
    # The ZStack API's records (SQLAlchemy) come with the server extra.
    assert "pip install 'ovfkit[server]'" in out["missing"].get("zstack-records", "")
    # The command line: help works, a feature of a missing extra is one ERROR line naming it.
    ovfkit_cmd = venv / "bin" / "ovfkit"
    assert _run(ovfkit_cmd, "--help").returncode == 0
    proc = _run(ovfkit_cmd, "serve", "--data-dir", work / "data", "--port", "1")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "ovfkit[server]" in proc.stderr, proc.stderr
    # The typed surface, read by mypy from the installed wheel (py.typed), not from the tree.
    snippet = work / "consumer.py"
    snippet.write_text(CONSUMER, encoding="utf-8")
    env_python = ["--python-executable", str(python)]
    check_consumer(run_mypy(snippet, tmp_path / "cache", mypy_path=None, extra=env_python))
