"""``ovfkit verify`` against ``ovfkit export`` of the same package, in one run.

On the reference disk (benchmarks/refdisk.py) as the root volume of a one-disk VM (the VM of
bench_ova), it times, each as its own process and ``--repeat`` times (median reported):

- ``ovfkit export INVENTORY.json -o OUT.ova`` (the baseline: verify must take no longer);
- ``ovfkit verify OUT.ova --workers N`` for each N of ``--workers`` (default: 1 and one per
  core): tar layout, schema, the manifest's SHA-256 of every member, and every grain of the
  VMDK inflated and checked.

For each: wall seconds, CPU seconds (user + system of the process and of the workers it
waited for, from ``os.wait4``: other sessions' load disturbs them less than wall time), the
1-minute load average at its start, peak RSS. Every verify must find the package valid.

    .venv/bin/python -m benchmarks.bench_verify [--disk PATH] [--scale 1] [--workers 1,2]

Figures and the load of each run: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_ova import inventory
from benchmarks.harness import Report
from benchmarks.source import data_bytes, reference_disk, warm


@dataclass(frozen=True)
class Run:
    seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    load: float
    stdout: str
    returncode: int


def _run(cmd: list[str]) -> Run:
    """Wall and CPU seconds of ``cmd`` and of the children it waited for (os.wait4)."""
    with open("/proc/loadavg") as f:
        load = float(f.read().split()[0])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{cmd[3:5]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return Run(
        seconds=seconds,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=usage.ru_maxrss / 1024,
        load=load,
        stdout=out.decode(),
        returncode=proc.returncode,
    )


def _median(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def _note(runs: list[Run]) -> str:
    each = (f"{r.seconds:.2f} s ({r.cpu_seconds:.2f} CPU-s, load {r.load:.1f})" for r in runs)
    return f"median of {len(runs)}: " + ", ".join(each)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--disk", help="reference raw disk (made with benchmarks.refdisk if missing)")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3, help="runs of each command (median)")
    p.add_argument("--workers", default=None,
                   help="comma-separated worker counts for verify (default: 1 and the cores)")
    p.add_argument("--workdir", default=None, help="where outputs go (default: a temp dir)")
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ovfkit-bench-verify-"))
    if not args.workdir:  # ours: gone with the run, whatever it leaves in it
        atexit.register(shutil.rmtree, work, True)
    work.mkdir(parents=True, exist_ok=True)
    disk = reference_disk(args.disk, args.scale)
    cores = len(os.sched_getaffinity(0))
    counts = [int(n) for n in args.workers.split(",")] if args.workers else sorted({1, cores})
    data = data_bytes(disk)
    report = Report("verify")
    report.info.update({"disk": os.path.basename(disk), "data_bytes": data, "cores": cores})
    inv = work / "inventory.json"
    inv.write_text(json.dumps(inventory(disk)))
    warm(disk)
    out = work / "bench.ova"
    ovfkit = [sys.executable, "-m", "ovfkit"]

    exports: list[Run] = []
    for i in range(args.repeat):
        if i:
            out.unlink()
        os.sync()
        exports.append(_run([*ovfkit, "export", str(inv), "-o", str(out)]))
    export = _median(exports)
    size = int(json.loads(exports[-1].stdout)["size"])
    report.info["package_bytes"] = size
    report.add("export seconds", export.seconds, "s", _note(exports))
    report.add("export CPU seconds", statistics.median(r.cpu_seconds for r in exports), "s")
    report.add("export peak RSS", max(r.peak_rss_mib for r in exports), "MiB")
    for n in counts:
        runs = []
        for _ in range(args.repeat):
            run = _run([*ovfkit, "verify", str(out), "--workers", str(n)])
            if run.returncode != 0 or not run.stdout.strip().endswith("valid"):
                raise RuntimeError(f"verify found problems: {run.stdout[-2000:]}")
            runs.append(run)
        verify = _median(runs)
        report.add(f"verify --workers {n} seconds", verify.seconds, "s", _note(runs))
        report.add(f"verify --workers {n} CPU seconds",
                   statistics.median(r.cpu_seconds for r in runs), "s")
        report.add(f"verify --workers {n} throughput", data / verify.seconds / 1e6, "MB/s",
                   "MB of disk data checked per second")
        report.add(f"verify --workers {n} peak RSS", max(r.peak_rss_mib for r in runs), "MiB",
                   "the verify process (each worker has its own)")
        report.ratio(f"verify --workers {n} time vs export", verify.seconds, export.seconds,
                     "target <= 1")
    out.unlink()
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
