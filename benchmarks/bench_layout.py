"""``ovfkit export --layout one-pass`` against the default layout, and ``ovfkit verify`` of each.

On the reference disk (benchmarks/refdisk.py), for a one-disk VM (the VM of bench_ova) and a
two-disk VM (the same disk as root and data volume: a package of two equal disks), it times,
each as its own process, alternating the layouts ``--repeat`` times (median reported):

- ``ovfkit export INVENTORY.json -o OUT.ova [--layout one-pass]``, ``os.sync()`` before each;
- ``ovfkit verify OUT.ova`` of the package of each layout (target of issue 11: no longer than
  the export of the same package).

For each: wall seconds, CPU seconds (user + system of the process and the children it waited
for, ``os.wait4``), the 1-minute load average at its start. Then, to show where the time goes,
``write_ova`` in a forked child per layout (alternating, ``--repeat`` times): the seconds of each
file (compression while the one-pass layout's hashing thread runs beside) and of the tail after
the last file (the digests left to take, beside fsync), medians. The one-pass layout hashes each
member while the next is written; the last disk is hashed after it ends in both layouts
(ovfkit/ova/seekable.py says why), so the gain should show with two disks and stay small with
one. Every verify must find the package valid, and each export's md5 must be the file's.

    .venv/bin/python -m benchmarks.bench_layout [--disk PATH] [--scale 1] [--repeat 3]

Figures and the load of each run: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_ova import inventory
from benchmarks.bench_verify import Run, _median, _note, _run
from benchmarks.harness import Report, run_forked
from benchmarks.source import data_bytes, reference_disk, warm
from ovfkit.ova.plan import LayoutName

LAYOUTS: tuple[LayoutName, ...] = ("default", "one-pass")


def two_disk_inventory(disk: str) -> dict[str, object]:
    """bench_ova's VM with the reference disk attached a second time, as a data volume."""
    doc = copy.deepcopy(inventory(disk))
    volumes = doc["allVolumes"]
    assert isinstance(volumes, list)
    data = dict(volumes[0], uuid="0c5a2f6c1bb84bcd9f0b5d3d3c0e7a11", type="Data", deviceId=1)
    volumes.append(data)
    return doc


def _md5_of(path: Path) -> str:
    import hashlib

    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            md5.update(chunk)
    return md5.hexdigest()


def _timings(inv: Path, layout: LayoutName, out: Path) -> dict[str, float]:
    """``write_ova`` of the inventory's VM in a forked child: its stage timings."""
    from ovfkit import OvaOptions, vm_from_zstack, write_ova

    vm = vm_from_zstack(inv.read_text())

    def export() -> dict[str, float]:
        return dict(write_ova(vm, str(out), OvaOptions(layout=layout)).timings)

    out.unlink(missing_ok=True)
    os.sync()
    timings, _, _ = run_forked(export)
    out.unlink()
    return timings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--disk", help="reference raw disk (made with benchmarks.refdisk if missing)")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3, help="exports of each layout (median)")
    p.add_argument("--vms", default="1,2", help="disks per VM to run: 1, 2 or both (1,2)")
    p.add_argument("--workdir", default=None, help="where outputs go (default: a temp dir)")
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ovfkit-bench-layout-"))
    if not args.workdir:  # ours: gone with the run, whatever it leaves in it
        atexit.register(shutil.rmtree, work, True)
    work.mkdir(parents=True, exist_ok=True)
    disk = reference_disk(args.disk, args.scale)
    data = data_bytes(disk)
    report = Report("layout")
    report.info.update({"disk": os.path.basename(disk), "data_bytes": data,
                        "cores": len(os.sched_getaffinity(0))})
    warm(disk)
    ovfkit = [sys.executable, "-m", "ovfkit"]
    for disks in (int(n) for n in args.vms.split(",")):
        inv = work / f"inventory-{disks}.json"
        inv.write_text(json.dumps(inventory(disk) if disks == 1 else two_disk_inventory(disk)))
        runs: dict[str, list[Run]] = {layout: [] for layout in LAYOUTS}
        sizes: dict[str, int] = {}
        for _ in range(args.repeat):
            for layout in LAYOUTS:
                out = work / f"{layout}-{disks}.ova"
                out.unlink(missing_ok=True)
                os.sync()
                run = _run([*ovfkit, "export", str(inv), "-o", str(out), "--layout", layout])
                if run.returncode != 0:
                    raise RuntimeError(f"export failed: {run.stdout[-2000:]}")
                doc = json.loads(run.stdout)
                if doc["md5Sum"] != _md5_of(out):
                    raise RuntimeError(f"{layout}: md5Sum is not the package's MD5")
                sizes[layout] = int(doc["size"])
                runs[layout].append(run)
        tag = f"{disks} disk{'s' if disks > 1 else ''}"
        report.info[f"package_bytes {tag}"] = sizes
        medians = {layout: _median(runs[layout]) for layout in LAYOUTS}
        for layout in LAYOUTS:
            report.add(f"{tag}: export {layout} seconds", medians[layout].seconds, "s",
                       _note(runs[layout]))
            report.add(f"{tag}: export {layout} CPU seconds",
                       statistics.median(r.cpu_seconds for r in runs[layout]), "s")
        report.ratio(f"{tag}: one-pass time vs default", medians["one-pass"].seconds,
                     medians["default"].seconds, "target < 1")
        stages: dict[str, list[dict[str, float]]] = {layout: [] for layout in LAYOUTS}
        for _ in range(args.repeat):
            for layout in LAYOUTS:
                stages[layout].append(_timings(inv, layout, work / "inproc.ova"))
        for layout in LAYOUTS:
            runs_ = stages[layout]
            files = sorted(k for k in runs_[0] if k.startswith("file "))
            each = ", ".join(
                f"{statistics.median(t[k] for t in runs_):.2f}" for k in files
            )
            report.add(f"{tag}: {layout} files (in-process)",
                       statistics.median(sum(t[k] for k in files) for t in runs_), "s",
                       f"each file: {each}")
            report.add(f"{tag}: {layout} tail after the last file (in-process)",
                       statistics.median(t["checksum+sync"] for t in runs_), "s",
                       "digests left + fsync")
            report.add(f"{tag}: {layout} total (in-process)",
                       statistics.median(t["total"] for t in runs_), "s")
        for layout in LAYOUTS:
            out = work / f"{layout}-{disks}.ova"
            checks = []
            for _ in range(args.repeat):
                run = _run([*ovfkit, "verify", str(out)])
                if run.returncode != 0 or not run.stdout.strip().endswith("valid"):
                    raise RuntimeError(f"verify found problems: {run.stdout[-2000:]}")
                checks.append(run)
            verify = _median(checks)
            report.add(f"{tag}: verify {layout} seconds", verify.seconds, "s", _note(checks))
            report.ratio(f"{tag}: verify {layout} time vs its export", verify.seconds,
                         medians[layout].seconds, "target <= 1")
            out.unlink()
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
