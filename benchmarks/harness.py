"""A small benchmark harness: timings (best of N), peak RSS, and a report printed as one JSON line
plus aligned text, also saved to ``benchmarks/out/<name>.json`` (gitignored).

Peak RSS comes from ``getrusage``: ``RUSAGE_SELF`` for this process, and ``os.wait4`` for each
child, so a subprocess (qemu-img) or a forked worker (:func:`run_forked`) is measured on its own
rather than as the maximum of all children.

Benchmarks never run in the test suite and never assert on time; they report figures and the ratio
against a baseline measured in the same run.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

__all__ = [
    "Figure",
    "Report",
    "Timing",
    "peak_rss_mib",
    "run_forked",
    "run_process",
    "time_call",
]

T = TypeVar("T")
OUT_DIR = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``runs`` timed runs (after warm-up)."""

    best: float
    median: float
    mean: float
    runs: int

    def per_second(self) -> float:
        return 1.0 / self.best if self.best > 0 else float("inf")


def time_call(
    fn: Callable[[], object],
    *,
    repeat: int = 5,
    number: int = 1,
    warmup: int = 1,
    min_time: float = 0.0,
) -> Timing:
    """Time ``fn``: ``repeat`` runs of ``number`` calls each, per-call seconds. With ``min_time``
    > 0, ``number`` grows until one run lasts at least that long (timeit's autorange)."""
    for _ in range(warmup):
        fn()
    if min_time > 0:
        while True:
            start = time.perf_counter()
            for _ in range(number):
                fn()
            if time.perf_counter() - start >= min_time:
                break
            number *= 2
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return Timing(min(samples), statistics.median(samples), statistics.fmean(samples), repeat)


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(who).ru_maxrss / 1024


@dataclass(frozen=True)
class ProcessRun:
    returncode: int
    seconds: float
    peak_rss_mib: float
    stdout: bytes
    stderr: bytes


def run_process(cmd: Sequence[str], *, check: bool = True) -> ProcessRun:
    """Run ``cmd`` (no shell) and measure its wall time and its own peak RSS via ``wait4``."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # communicate() would reap the child and lose its rusage: read the pipes, then wait4.
    out, err = _drain(proc)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{cmd[0]} failed ({proc.returncode}): {err.decode(errors='replace').strip()}"
        )
    return ProcessRun(proc.returncode, seconds, usage.ru_maxrss / 1024, out, err)


def _drain(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    import selectors

    chunks: dict[int, list[bytes]] = {}
    sel = selectors.DefaultSelector()
    for stream in (proc.stdout, proc.stderr):
        assert stream is not None
        sel.register(stream, selectors.EVENT_READ)
        chunks[stream.fileno()] = []
    while sel.get_map():
        for key, _ in sel.select():
            data = os.read(key.fd, 65536)
            if data:
                chunks[key.fd].append(data)
            else:
                sel.unregister(key.fileobj)
    assert proc.stdout is not None and proc.stderr is not None
    out = b"".join(chunks[proc.stdout.fileno()])
    err = b"".join(chunks[proc.stderr.fileno()])
    proc.stdout.close()
    proc.stderr.close()
    return out, err


def run_forked(fn: Callable[[], T]) -> tuple[T, float, float]:
    """Run ``fn`` in a forked child; returns (its result, seconds, the child's peak RSS in MiB).

    The child starts with the parent's pages shared, so its peak RSS is the parent's footprint at
    fork time plus what ``fn`` adds; fork early (before big allocations) for a clean figure.
    """
    read_fd, write_fd = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        code = 0
        try:
            payload = pickle.dumps(("ok", fn()))
        except BaseException as exc:  # report any failure to the parent
            payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}"))
            code = 1
        with os.fdopen(write_fd, "wb") as w:
            w.write(payload)
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as r:
        payload = r.read()
    _, _status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    kind, value = pickle.loads(payload) if payload else ("error", "child died without a result")
    if kind != "ok":
        raise RuntimeError(f"forked benchmark failed: {value}")
    return cast(T, value), seconds, usage.ru_maxrss / 1024


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    note: str = ""


@dataclass
class Report:
    """Figures of one benchmark run; :meth:`emit` prints and saves them."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: float, unit: str, note: str = "") -> float:
        self.figures.append(Figure(name, value, unit, note))
        return value

    def ratio(self, name: str, ours: float, baseline: float, note: str = "") -> float:
        """``ours / baseline`` (for throughputs: > 1 means faster than the baseline)."""
        value = ours / baseline if baseline else float("inf")
        return self.add(name, value, "x", note)

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "commit": _commit(),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            **self.info,
            "figures": {f.name: {"value": _round(f.value), "unit": f.unit} for f in self.figures},
        }

    def text(self) -> str:
        width = max((len(f.name) for f in self.figures), default=0)
        lines = [f"== {self.name}"]
        for f in self.figures:
            value = f"{_round(f.value):>14,}"
            lines.append(f"{f.name:<{width}}  {value} {f.unit:<8} {f.note}".rstrip())
        return "\n".join(lines)

    def emit(self, out_dir: Path = OUT_DIR) -> Path:
        data = self.as_dict()
        print(json.dumps(data, sort_keys=True))
        print(self.text())
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path


def _round(value: float) -> float:
    if value == 0 or value != value or value in (float("inf"), float("-inf")):
        return value
    if abs(value) >= 100:
        return round(value, 1)
    return float(f"{value:.4g}")


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


if __name__ == "__main__":  # a self-check: time a trivial call and a trivial process
    report = Report("harness-selfcheck")
    t = time_call(lambda: sum(range(1000)), repeat=5, min_time=0.05)
    report.add("sum(range(1000))", t.per_second(), "calls/s")
    run = run_process([sys.executable, "-c", "b = bytearray(64 << 20)"])
    report.add("child 64 MiB peak RSS", run.peak_rss_mib, "MiB")
    _, seconds, rss = run_forked(lambda: len(bytearray(32 << 20)))
    report.add("forked 32 MiB peak RSS", rss, "MiB")
    report.emit()
