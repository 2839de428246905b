"""Scaling of the native VMDK writer with its lanes, on the raw and the qcow2 reference disk.

For each source (the reference disk of benchmarks/refdisk.py, raw, and the same disk converted to
qcow2, read through ovfkit.disk.MappedSource: the layers' files where ``qemu-img map`` places the
clusters, qemu-nbd for the rest) and each lane count (``--threads``: compressing threads, two to
a worker process; default 1, 2, 4, ... up to the cores present, plus 16 for memory),
``write_vmdk`` runs in a fresh child process writing to a file with ``pwritev`` (as the OVA
writer's sink does). Figures per run:

- seconds and MB/s of data (the source's data extents, 1 MB = 10^6 bytes);
- CPU seconds of every process of the export (the child, its workers, qemu-nbd), and of the
  coordinating thread alone (``time.thread_time`` around the call): the serial part, in CPU
  seconds per GB of data, which bounds the speedup by Amdahl's law (target <= 0.1 s/GB);
- peak RSS summed over every process of the export, sampled every 20 ms (and the sum of each
  process's own peak, VmHWM, an upper bound), and the same for PSS (shared pages divided among
  the processes that map them: what the export really costs in memory).

The baseline is the 1-lane run of the same source in the same invocation (the speedup column);
``--tree DIR`` runs the same cases a second time with the ovfkit package of another checkout
(e.g. a worktree of the commit before the worker processes) for a before/after table. On a
machine with fewer cores than lanes the times say nothing about scaling (the lanes share the
cores); the memory and the coordinating thread's CPU still do.

    python -m benchmarks.bench_scaling [--disk REF.raw] [--qcow2 REF.qcow2] [--threads 1,2,16]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import Report

GB = 1e9


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(d))
    return out


def _cpu(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) of a live process, or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class _Sampler:
    """Summed RSS and PSS of this process and its children, every ``period`` seconds, on a
    thread whose own CPU time is kept apart (``cpu``)."""

    def __init__(self, period: float = 0.02) -> None:
        self.period = period
        self.peak_rss = self.peak_pss = 0
        self.peak_procs = 0
        self.cpu = 0.0
        self.threads: dict[int, tuple[str, float]] = {}  # native id -> (name, CPU seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.period):
            pids = [me, *_children(me)]
            self.peak_rss = max(self.peak_rss, sum(_status_kib(p, "VmRSS:") for p in pids))
            self.peak_pss = max(self.peak_pss, sum(_pss_kib(p) for p in pids))
            self.peak_procs = max(self.peak_procs, len(pids))
            for t in threading.enumerate():
                if t.native_id is not None and t is not threading.current_thread():
                    cpu = _cpu(me, t.native_id)
                    if cpu:
                        self.threads[t.native_id] = (t.name, cpu)
            self.cpu = time.thread_time()

    def by_name(self) -> dict[str, float]:
        """CPU seconds of the threads seen, by name without its number (``ovfkit-sha256``)."""
        out: dict[str, float] = {}
        for name, cpu in self.threads.values():
            key = name.rsplit("_", 1)[0] if name.startswith("ovfkit-") else name
            out[key] = out.get(key, 0.0) + cpu
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class _FileSink:
    """Writes at the file's current end with ``pwritev``, like the OVA writer's sink."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.count = 0

    def write(self, data: bytes | memoryview) -> int:
        self.writev([data])
        return len(data)

    def writev(self, pieces: list[bytes | memoryview]) -> None:
        want = sum(map(len, pieces))
        done = os.pwritev(self.fd, pieces, self.count)
        if done != want:
            raise OSError(f"short pwritev: {done} of {want}")
        self.count += want


def _one(path: str, fmt: str, threads: int, out: str) -> dict[str, Any]:
    """One export in this (fresh) process: the figures as a dict."""
    import resource

    from ovfkit.disk import open_source
    from ovfkit.model import DiskSource
    from ovfkit.vmdk import VmdkOptions, write_vmdk

    disk = DiskSource(path, fmt)
    with open_source(disk) as src:
        data = sum(e.length for e in src.extents() if not e.zero)
    sampler = _Sampler()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        c0 = time.thread_time()
        result = write_vmdk(disk, _FileSink(fd), VmdkOptions(threads=threads, filename="b.vmdk"))
        coord = time.thread_time() - c0
        seconds = time.perf_counter() - t0
    finally:
        os.close(fd)
    me = os.getpid()
    pids = [me, *_children(me)]
    hwm = sum(_status_kib(p, "VmHWM:") for p in pids)
    sampler.stop()
    parent_cpu = _cpu(me) - sampler.cpu
    workers_cpu = sum(_cpu(p) for p in pids[1:])  # the pooled workers (qemu-nbd has ended)
    try:  # end the pooled workers, so their CPU time is counted with the children's
        from ovfkit.vmdk.workers import shutdown

        shutdown()
    except ImportError:  # an older tree: threads, no workers
        pass
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime - sampler.cpu + kids.ru_utime + kids.ru_stime
    return {
        "seconds": seconds,
        "data_bytes": data,
        "output_bytes": result.size,
        "cpu_seconds": cpu,
        "coordinating_cpu_seconds": coord,
        "parent_cpu_seconds": parent_cpu,
        "thread_cpu_seconds": sampler.by_name(),
        "workers_cpu_seconds": workers_cpu,
        "peak_rss_sum_mib": sampler.peak_rss / 1024,
        "hwm_sum_mib": hwm / 1024,
        "peak_pss_sum_mib": sampler.peak_pss / 1024,
        "processes": max(sampler.peak_procs, len(pids)),
    }


def _run_case(path: str, fmt: str, threads: int, work: Path, tree: str | None) -> dict[str, Any]:
    out = work / "scaling.vmdk"
    repo = str(Path(__file__).resolve().parent.parent)
    # The tree's ovfkit first, then this repository's benchmarks (a tree without them is fine).
    boot = (
        f"import sys; sys.path[:0] = {[os.path.abspath(tree or repo), repo]!r}; "
        "from benchmarks.bench_scaling import main; sys.exit(main(sys.argv[1:]))"
    )
    os.sync()  # the previous run's output is written back before this one starts
    cmd = [sys.executable, "-c", boot, "--one", path, fmt, str(threads), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.exists():
        out.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _default_threads() -> list[int]:
    cores = len(os.sched_getaffinity(0))
    counts = []
    n = 1
    while n <= cores:
        counts.append(n)
        n *= 2
    if counts[-1] != cores:
        counts.append(cores)
    if 16 not in counts:
        counts.append(16)  # the memory target is for 16 lanes
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--disk", help="reference raw disk (made with benchmarks.refdisk if missing)")
    p.add_argument("--qcow2", help="the reference disk as qcow2 (converted if missing)")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--threads", help="worker counts, e.g. 1,2,4,16 (default: powers of 2 up to "
                   "the cores, and 16)")  # fmt: skip
    p.add_argument("--sources", default="raw,qcow2")
    p.add_argument("--tree", help="also run with the ovfkit package of this checkout")
    p.add_argument("--workdir", default=None)
    p.add_argument("--one", nargs=4, metavar=("PATH", "FMT", "THREADS", "OUT"),
                   help=argparse.SUPPRESS)  # fmt: skip
    args = p.parse_args(argv)
    if args.one:
        import ovfkit

        path, fmt, threads, out = args.one
        print(f"ovfkit from {os.path.dirname(ovfkit.__file__)}", file=sys.stderr)
        print(json.dumps(_one(path, fmt, int(threads), out)))
        return 0

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ovfkit-bench-"))
    if not args.workdir:  # ours: gone with the run, whatever it leaves in it
        atexit.register(shutil.rmtree, work, True)
    work.mkdir(parents=True, exist_ok=True)
    disk = args.disk or str(Path(tempfile.gettempdir()) / f"ovfkit-refdisk-s{args.scale}.raw")
    if not os.path.exists(disk):
        from benchmarks.refdisk import make_refdisk

        make_refdisk(disk, scale=args.scale)
    qcow2 = args.qcow2 or os.path.splitext(disk)[0] + ".qcow2"
    sources = args.sources.split(",")
    if "qcow2" in sources and not os.path.exists(qcow2):
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", disk, qcow2],
                       check=True)  # fmt: skip
    counts = [int(x) for x in args.threads.split(",")] if args.threads else _default_threads()
    report = Report("scaling")
    report.info.update(
        {"disk": os.path.basename(disk), "cores": len(os.sched_getaffinity(0)),
         "threads": counts, "load_at_start": os.getloadavg()[0], "rows": []}
    )  # fmt: skip
    trees: list[tuple[str, str | None]] = [("this tree", None)]
    if args.tree:
        trees.append((os.path.basename(os.path.abspath(args.tree)), args.tree))
    lines = []
    for label, tree in trees:
        for source in sources:
            path, fmt = (disk, "raw") if source == "raw" else (qcow2, "qcow2")
            base = None
            for n in counts:
                r = _run_case(path, fmt, n, work, tree)
                base = base or r["seconds"]
                mbs = r["data_bytes"] / r["seconds"] / 1e6
                serial = r["coordinating_cpu_seconds"] / (r["data_bytes"] / GB)
                row = {"tree": label, "source": source, "threads": n, **r,
                       "mb_per_s": mbs, "speedup": base / r["seconds"],
                       "coordinating_cpu_s_per_gb": serial,
                       "load": os.getloadavg()[0]}  # fmt: skip
                report.info["rows"].append(row)
                threads = ", ".join(
                    f"{k.removeprefix('ovfkit-')} {v:.2f}"
                    for k, v in sorted(r.get("thread_cpu_seconds", {}).items())
                    if k.startswith("ovfkit-") and v >= 0.01
                )
                lines.append(
                    f"| {label} | {source} | {n} | {r['seconds']:.2f} | {mbs:.0f} | "
                    f"{base / r['seconds']:.2f}x | {r['cpu_seconds']:.2f} "
                    f"({r['parent_cpu_seconds']:.2f} + {r['workers_cpu_seconds']:.2f}) | "
                    f"{r['coordinating_cpu_seconds']:.3f} ({serial:.3f} s/GB) | "
                    f"{r['peak_rss_sum_mib']:.0f} / {r['hwm_sum_mib']:.0f} | "
                    f"{r['peak_pss_sum_mib']:.0f} | {r['processes']} | {threads} | "
                    f"{row['load']:.1f} |"
                )
                print(lines[-1], flush=True)
                key = f"{label} {source} x{n}"
                report.add(f"{key} seconds", r["seconds"], "s")
                report.add(f"{key} coordinating CPU per GB", serial, "s/GB")
    print("| tree | source | lanes | seconds | MB/s of data | vs 1 lane | "
          "CPU s: all (parent + workers) | "
          "coordinating thread CPU s | peak RSS sum sampled / sum of peaks (MiB) | "
          "peak PSS sum (MiB) | processes | other threads' CPU s | load |")  # fmt: skip
    print("\n".join(lines))
    report.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
