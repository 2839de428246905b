"""Run every reader and command over the hostile corpus, in this process, and write one JSON
record per (case, entry point): what came out (an OvfkitError's code, a report, an exit status
and stderr) or, for anything else, the traceback. Run as a child process by
tests/test_hostile_corpus.py, which measures its peak RSS:

    python tests/hostile/runner.py WORKDIR RESULTS.json ADDRESS_SPACE_BYTES
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import resource
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hostile.corpus import Case, descriptors, inventories, packages
from ovfkit.cli import main as cli
from ovfkit.errors import OvfkitError
from ovfkit.model import (
    Controller,
    ControllerType,
    Disk,
    DiskSource,
    VirtualMachine,
)
from ovfkit.ova import OvaOptions, extract_package, open_package, verify_package, write_ova
from ovfkit.ovf import parse_descriptor
from ovfkit.zstack import vm_from_zstack


def _call(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        value = fn()
    except OvfkitError as exc:
        return {"outcome": "error", "code": exc.code, "details": exc.details[:300]}
    except BaseException:
        return {"outcome": "crash", "traceback": traceback.format_exc()[-3000:]}
    if hasattr(value, "problems"):
        return {"outcome": "report", "problems": [p[:300] for p in value.problems],
                "errors": list(getattr(value, "errors", ()))}
    return {"outcome": "ok"}


def _command(argv: list[str]) -> dict[str, Any]:
    raw = io.BytesIO()  # commands write packages and descriptors to sys.stdout.buffer
    out, err = io.TextIOWrapper(raw, encoding="utf-8"), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli(argv)
    except BaseException:
        return {"outcome": "crash", "traceback": traceback.format_exc()[-3000:]}
    out.flush()
    return {"outcome": "exit", "rc": rc, "stderr": err.getvalue()[-2000:],
            "stdout": raw.getvalue()[-2000:].decode(errors="replace")}


def good_package(work: Path) -> bytes:
    """A valid one-disk OVA (1 MiB raw disk, some data), made by ovfkit itself."""
    raw = work / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(1 << 20)
        f.seek(64 << 10)
        f.write(b"hostile corpus " * 1000)
    vm = VirtualMachine(
        name="good",
        controllers=(Controller("scsi0", ControllerType.SCSI),),
        disks=(Disk("d0", 1 << 20, "scsi0", 0, DiskSource(str(raw), "raw")),),
    )
    target = work / "good.ova"
    write_ova(vm, target, OvaOptions(fsync=False, threads=1))
    return target.read_bytes()


def run_case(case: Case, work: Path) -> list[dict[str, Any]]:
    folder = work / case.id
    folder.mkdir()
    records: list[dict[str, Any]] = []

    def record(entry: str, result: dict[str, Any]) -> None:
        records.append({"case": case.id, "entry": entry, "expect": case.expect.get(entry),
                        **result})

    if case.kind in ("descriptor", "package"):
        if case.kind == "descriptor":
            record("parse", _call(lambda: parse_descriptor(case.data)))
        # A descriptor alone is an .ovf package (the descriptor beside no files).
        package = folder / ("vm.ovf" if case.kind == "descriptor" else "x.ova")
        package.write_bytes(case.data)
        record("open", _call(lambda: open_package(package)))
        record("verify", _call(lambda: verify_package(package)))
        record("extract", _call(lambda: extract_package(package, folder / "out")))
        record("inspect", _command(["inspect", str(package)]))
        record("verify-cli", _command(["verify", str(package)]))
    else:
        inv = folder / "inventory.json"
        inv.write_bytes(case.data)
        record("zstack", _call(lambda: vm_from_zstack(case.data)))
        record("vm-add", _command(["vm", "add", str(inv), "--data-dir", str(folder / "data")]))
        record("export", _command(["export", str(inv), "-o", str(folder / "x.ova")]))
        record("descriptor", _command(["descriptor", str(inv)]))
    return records


def peak_rss_kib() -> int:
    """This process's peak RSS since its exec (VmHWM). Not getrusage's ru_maxrss, which keeps
    the high-water mark of the forked parent's pages from before the exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(work: Path, results: Path, address_space: int) -> None:
    # A case that tries to take gigabytes fails here quickly (MemoryError, recorded as a
    # traceback) instead of swapping the machine.
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    work.mkdir(parents=True, exist_ok=True)
    records = []
    for case in itertools.chain(descriptors(), packages(good_package(work)), inventories()):
        records += run_case(case, work)
    results.write_text(json.dumps({"records": records, "peak_rss_kib": peak_rss_kib()}))


if __name__ == "__main__":
    os.environ.setdefault("OVFKIT_DATA_DIR", sys.argv[1])
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
