"""streamOptimized VMDK: qemu-img vs the native writer vs a floor, in one run.

On the reference disk (benchmarks/refdisk.py: 4 GiB virtual, ~0.9 GiB random, ~1 GiB text-like,
~0.3 GiB allocated zeros, holes) it times:

- ``qemu-img convert -O vmdk -o subformat=streamOptimized`` (the baseline; zlib level 6, one core);
- the native writer (ovfkit.vmdk.write_vmdk) at each isal level asked (--levels), digest
  sha256 only, as the OVA packer asks for a SHA-256 manifest;
- a floor: the same non-zero 64 KiB grains read the same way from the same source (mapped from
  the page cache, as the native writer does for raw files) and compressed by the same deflate on
  the same thread pool, plus SHA-256 of the output, with no VMDK logic (no markers, tables or
  ordering work) and no output file;
- an empty 10 GiB sparse disk through the native writer.

Each candidate runs in its own process (forked, or qemu-img itself) so peak RSS is its own. The
page cache is warmed first so all read the source at the same speed. Throughput is MB/s of
allocated source bytes (data extents, 1 MB = 10^6 bytes). ``--verify`` checks the native output
with ``qemu-img compare`` against the source.

    python -m benchmarks.bench_vmdk [--disk PATH] [--scale 1] [--levels 1,2] [--verify]
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import mmap
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

from benchmarks.harness import Report, run_forked, run_process
from benchmarks.source import BATCH, GRAIN, ZERO, batch, data_bytes, warm
from ovfkit.disk import RawSource
from ovfkit.vmdk import VmdkOptions, write_vmdk
from ovfkit.vmdk.grains import compressor


def _children_cpu() -> float:
    """CPU seconds (user + system) of the children reaped so far: each candidate runs in a
    child, so the difference around a run is its own CPU time, whatever else loads the box."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime








def _native(path: str, out: str, level: int) -> dict[str, float]:
    src = RawSource(path)
    try:
        with open(out, "wb") as f:
            r = write_vmdk(src, f, VmdkOptions(compress_level=level, filename="bench.vmdk"))
    finally:
        src.close()
    return {"size": r.size, "grains": r.grains}


def _floor(path: str, level: int, threads: int) -> dict[str, float]:
    """Compress the non-zero grains on ``threads`` threads and SHA-256 the output; nothing else."""
    compress = compressor(level)
    sha = hashlib.sha256()
    total = 0

    zero = compress(memoryview(ZERO))  # zero grains found as the writer finds them

    def work(buf: bytearray | mmap.mmap) -> list[bytes]:
        with memoryview(buf) as view:
            out = [
                c for c in (compress(view[o : o + GRAIN]) for o in range(0, len(buf), GRAIN))
                if c != zero
            ]
        if isinstance(buf, mmap.mmap):
            buf.close()
        return out

    src = RawSource(path)
    fd = os.open(path, os.O_RDONLY)
    pending: deque[Future[list[bytes]]] = deque()
    with ThreadPoolExecutor(threads) as pool:
        try:
            for e in src.extents():
                if e.zero:
                    continue
                g0, g1 = e.start // GRAIN * GRAIN, -(-(e.start + e.length) // GRAIN) * GRAIN
                for off in range(g0, g1, BATCH):
                    n = min(BATCH, g1 - off)
                    pending.append(pool.submit(work, batch(src, fd, off, n)))
                    while len(pending) > 2 * threads + 1:
                        for c in pending.popleft().result():
                            sha.update(c)
                            total += len(c)
            while pending:
                for c in pending.popleft().result():
                    sha.update(c)
                    total += len(c)
        finally:
            src.close()
            os.close(fd)
    sha.hexdigest()
    return {"size": total}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--disk", help="reference raw disk (made with benchmarks.refdisk if missing)")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--levels", default="2", help="isal levels for the native writer, e.g. 0,1,2,3")
    p.add_argument("--verify", action="store_true", help="qemu-img compare the native output")
    p.add_argument("--workdir", default=None, help="where outputs go (default: a temp dir)")
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ovfkit-bench-"))
    if not args.workdir:  # ours: gone with the run, whatever it leaves in it
        atexit.register(shutil.rmtree, work, True)
    work.mkdir(parents=True, exist_ok=True)
    disk = args.disk or str(Path(tempfile.gettempdir()) / f"ovfkit-refdisk-s{args.scale}.raw")
    if not os.path.exists(disk):
        from benchmarks.refdisk import make_refdisk

        print(f"making the reference disk {disk} ...", file=sys.stderr)
        make_refdisk(disk, scale=args.scale)
    threads = os.cpu_count() or 1
    data = data_bytes(disk)
    levels = [int(x) for x in args.levels.split(",")]
    report = Report("vmdk")
    report.info.update(
        {"disk": os.path.basename(disk), "virtual_bytes": os.path.getsize(disk),
         "data_bytes": data, "threads": threads, "levels": levels}
    )  # fmt: skip
    warm(disk)

    qout = work / "qemu.vmdk"
    c0 = _children_cpu()
    q = run_process(
        ["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
         disk, str(qout)]
    )  # fmt: skip
    q_cpu = _children_cpu() - c0
    q_size = qout.stat().st_size
    qout.unlink()
    report.add("qemu-img seconds", q.seconds, "s")
    report.add("qemu-img throughput", data / q.seconds / 1e6, "MB/s")
    report.add("qemu-img output", q_size / 1e6, "MB")
    report.add("qemu-img peak RSS", q.peak_rss_mib, "MiB")
    report.add("qemu-img CPU seconds", q_cpu, "s")

    best_level, best_seconds = levels[0], float("inf")
    for level in levels:
        nout = work / f"native-{level}.vmdk"
        c0 = _children_cpu()
        res, n_sec, n_rss = run_forked(partial(_native, disk, str(nout), level))
        c1 = _children_cpu()
        _f, f_sec, f_rss = run_forked(partial(_floor, disk, level, threads))
        n_cpu, f_cpu = c1 - c0, _children_cpu() - c1
        tag = f"L{level}"
        report.add(f"native {tag} seconds", n_sec, "s")
        report.add(f"native {tag} throughput", data / n_sec / 1e6, "MB/s")
        report.add(f"native {tag} output", res["size"] / 1e6, "MB")
        report.add(f"native {tag} peak RSS", n_rss, "MiB", "target <= 256")
        report.ratio(f"native {tag} speed vs qemu-img", q.seconds, n_sec, "target >= 15")
        report.ratio(f"native {tag} size vs qemu-img", res["size"], q_size, "target <= 1.05")
        report.add(f"floor {tag} seconds", f_sec, "s")
        report.add(f"floor {tag} throughput", data / f_sec / 1e6, "MB/s")
        report.add(f"floor {tag} peak RSS", f_rss, "MiB")
        report.ratio(f"native {tag} time vs floor", n_sec, f_sec, "target <= 1.6")
        # On a shared machine wall times carry other people's load; CPU seconds do not. With
        # qemu-img on one core and ours on all, the idle-machine speed-up is about:
        report.add(f"native {tag} CPU seconds", n_cpu, "s")
        report.add(f"floor {tag} CPU seconds", f_cpu, "s")
        report.ratio(f"native {tag} CPU vs floor CPU", n_cpu, f_cpu, "target <= 1.6")
        report.ratio(
            f"native {tag} speed vs qemu-img, CPU-bound on {threads} idle cores",
            q_cpu, n_cpu / threads, "target >= 15",
        )  # fmt: skip
        size_ok = res["size"] <= 1.05 * q_size
        if size_ok and n_sec < best_seconds:
            best_level, best_seconds = level, n_sec
        if args.verify:
            cmp = subprocess.run(
                ["qemu-img", "compare", "-f", "vmdk", str(nout), "-F", "raw", disk],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            report.info[f"native {tag} qemu-img compare"] = cmp.stdout.strip() or cmp.stderr
        nout.unlink()
    report.info["chosen_level"] = best_level

    empty = work / "empty-10g.raw"
    with open(empty, "wb") as fh:
        fh.truncate(10 << 30)
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        _native(str(empty), str(work / "empty.vmdk"), levels[0])
        samples.append(time.perf_counter() - start)
    report.add("empty 10 GiB disk seconds", min(samples), "s", "target < 1")
    report.add("empty 10 GiB disk output", (work / "empty.vmdk").stat().st_size / 1e3, "kB")
    empty.unlink()
    (work / "empty.vmdk").unlink()
    report.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
