"""The native writer's worker processes: the same bytes whatever the workers and batches, workers
that die or sources that fail mid-disk end the write cleanly and leave nothing behind, and the
workers read the source themselves (raw files, qcow2 layers, spare NBD connections)."""

from __future__ import annotations

import gc
import hashlib
import io
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import KiB, MakeImage, MiB, random_bytes, text_like
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ova_writer import make_vm
from test_vmdk_writer import LONG_ID, check_with_tools, fixed

from ovfkit.disk import Extent, MappedSource, MemorySource, RawSource, open_source
from ovfkit.errors import (
    OperationCancelledError,
    OperationFailedError,
    OvfkitError,
    OvfkitIOError,
)
from ovfkit.model import DiskSource
from ovfkit.ova import OvaOptions, write_ova
from ovfkit.progress import Progress
from ovfkit.vmdk import VmdkOptions, inspect_vmdk, write_vmdk
from ovfkit.vmdk import workers as workers_mod
from ovfkit.vmdk import writer as writer_mod
from ovfkit.vmdk.workers import idle_workers, shutdown


def worker_children() -> set[int]:
    """This process's worker processes, and any child left a zombie."""
    me = os.getpid()
    found = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != me:
                continue
            if fields[0] == "Z" or b"ovfkit.vmdk.worker" in (d / "cmdline").read_bytes():
                found.add(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def shared_maps() -> list[str]:
    """This process's mappings of worker slots (memfd) or of anything in /dev/shm."""
    gc.collect()
    lines = Path("/proc/self/maps").read_text().splitlines()
    return [line for line in lines if "memfd:ovfkit" in line or "/dev/shm" in line]


@pytest.fixture
def clean_pool() -> Iterator[None]:
    shutdown()
    yield
    shutdown()


def mixed_disk(path: Path, size: int = 40 * MiB) -> Path:
    """Random, text and allocated zeros, across a grain table boundary (32 MiB), ending in
    a partial grain."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset, data in [
            (0, random_bytes(3 * MiB)),
            (3 * MiB + 4 * KiB, text_like(2 * MiB)),
            (6 * MiB, bytes(MiB)),
            (9 * MiB - 100, random_bytes(64 * KiB, seed=9) + text_like(200 * KiB, seed=3)),
            (32 * MiB - 3 * 64 * KiB, text_like(MiB, seed=4) + random_bytes(MiB, seed=5)),
            (size - 700, b"\xff" * 700),
        ]:
            f.seek(offset)
            f.write(data)
    return path


def test_same_bytes_for_any_worker_count_and_batch_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_pool: None
) -> None:
    raw = mixed_disk(tmp_path / "disk.raw", 40 * MiB - 700)
    data = raw.read_bytes()
    probe = RawSource(raw)
    holes = [(e.start, e.length) for e in probe.extents() if e.zero]
    probe.close()
    assert len(holes) > 3
    outputs = []
    # threads are lanes, two to a worker process: (2 lanes, 1 lane per process) is two
    # single-lane processes, (3, 4 per process) one process with three.
    for threads, batch, lanes in [
        (1, None, 2),
        (2, None, 2),
        (3, None, 2),
        (2, 16, 2),
        (3, 32, 2),
        (2, None, 1),
        (3, None, 4),
    ]:
        monkeypatch.setattr(writer_mod, "LANES_PER_WORKER", lanes)
        if batch is not None:
            monkeypatch.setattr(writer_mod, "batch_grains", lambda _w, b=batch: b)
        for source in ("raw", "memory"):
            sink = io.BytesIO()
            # The memory source reports the raw file's holes: several ranges per batch, read
            # by the parent for the workers.
            src = RawSource(raw) if source == "raw" else MemorySource(data, holes)
            try:
                result = write_vmdk(src, sink, fixed(threads=threads))
            finally:
                src.close()
            body = sink.getvalue()
            assert result.size == len(body)
            assert result.digests["md5"] == hashlib.md5(body).hexdigest()
            outputs.append(body)
        monkeypatch.undo()
    assert all(o == outputs[0] for o in outputs)
    out = tmp_path / "disk.vmdk"
    out.write_bytes(outputs[0])
    check_with_tools(out, raw, -(-len(data) // 512) * 512)


@settings(max_examples=200, deadline=None)
@given(
    extents=st.lists(
        st.tuples(st.integers(0, 3 * 512 * 64 * KiB), st.integers(1, 5 * MiB), st.booleans()),
        max_size=12,
    ),
    batch=st.sampled_from([16, 32, 64]),
    tail=st.integers(0, 70_000),
)
def test_batches_cover_the_data_within_grain_tables(
    extents: list[tuple[int, int, bool]], batch: int, tail: int
) -> None:
    """Batches: ascending, each inside one grain table, at most ``batch`` grains touched,
    their ranges exactly the data extents (clipped to capacity)."""
    points = sorted({0, *(s for s, _, _ in extents), *(s + n for s, n, _ in extents)})
    capacity = points[-1] + tail if points[-1] + tail > 0 else 1
    kinds = {s: z for s, _, z in extents}
    exts = [
        Extent(a, b - a, kinds.get(a, True)) for a, b in itertools.pairwise([*points, capacity])
        if b > a
    ]

    class Src(MemorySource):
        def extents(self) -> Iterator[Extent]:
            return iter(exts)

        @property
        def capacity(self) -> int:
            return capacity

    got = list(writer_mod._batches(Src(b""), capacity, batch))
    g = 64 * KiB
    covered: list[tuple[int, int]] = []
    last = -1
    for first, count, ranges in got:
        assert first > last and 0 < count <= 512
        assert first // 512 == (first + count - 1) // 512
        touched = {k for lo, hi in ranges for k in range(lo // g, -(-hi // g))}
        assert len(touched) <= batch and min(touched) == first
        assert max(touched) == first + count - 1
        last = max(touched)
        covered += ranges
    merged: list[tuple[int, int]] = []
    for lo, hi in covered:
        if merged and merged[-1][1] == lo:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    want: list[tuple[int, int]] = []
    for e in exts:
        if not e.zero and e.start < capacity:
            lo, hi = e.start, min(e.start + e.length, capacity)
            if want and want[-1][1] == lo:
                want[-1] = (want[-1][0], hi)
            else:
                want.append((lo, hi))
    assert merged == want


def test_qcow2_through_workers_same_bytes_as_raw(
    make_image: MakeImage, tmp_path: Path, clean_pool: None
) -> None:
    """A qcow2 chain (top over base, a zero cluster hiding base data) read by the workers from
    the layers' files: the very bytes of its raw image read from the raw file."""
    img = make_image("qcow2-backing", size=9 * MiB + 512 * 5)
    outs = []
    for disk in (DiskSource(str(img.path), "qcow2"), DiskSource(str(img.raw), "raw")):
        sink = io.BytesIO()
        write_vmdk(disk, sink, fixed(threads=2))
        outs.append(sink.getvalue())
    assert outs[0] == outs[1]
    out = tmp_path / "out.vmdk"
    out.write_bytes(outs[0])
    check_with_tools(out, img.raw, img.size)


def test_same_package_bytes_for_any_worker_count(
    make_image: MakeImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_pool: None
) -> None:
    """Whole OVA packages (a qcow2 chain and a raw disk) with 1, 2 and 3 workers, and with
    smaller batches: the same bytes, once the disks' random ids (ddb.uuid, longContentID) are
    fixed."""
    import ovfkit.vmdk.output as output_mod

    class FixedIds:
        @staticmethod
        def token_hex(n: int) -> str:
            return "ab" * n

        @staticmethod
        def token_bytes(n: int) -> bytes:
            return bytes(range(n))

    monkeypatch.setattr(output_mod, "secrets", FixedIds)
    chain = make_image("qcow2-backing", size=5 * MiB + 512)
    raw = mixed_disk(tmp_path / "disk.raw", 40 * MiB)
    vm = make_vm([(chain.path, "qcow2"), (raw, "raw")])
    packages = []
    for threads, batch in [(1, None), (2, None), (3, None), (2, 16)]:
        if batch is not None:
            monkeypatch.setattr(writer_mod, "batch_grains", lambda _w, b=batch: b)
        target = tmp_path / f"vm{threads}-{batch}.ova"
        write_ova(vm, target, OvaOptions(threads=threads, mtime=1_700_000_000, fsync=False))
        packages.append(target.read_bytes())
    assert all(p == packages[0] for p in packages)


class CountingReads:
    """Counts the parent's own reads of a source (the workers' do not go through it)."""

    def __init__(self, source: MappedSource) -> None:
        self.reads = 0
        self._readinto = source.readinto

        def readinto(offset: int, buf: memoryview) -> int:
            self.reads += 1
            return self._readinto(offset, buf)

        source.readinto = readinto  # type: ignore[method-assign]


@pytest.mark.parametrize("spares", [2, 0])
def test_compressed_clusters_through_spare_nbd_connections(
    make_image: MakeImage, tmp_path: Path, spares: int, clean_pool: None
) -> None:
    """qemu-img map places no host offset on compressed clusters: the workers read them
    through connections of their own to the source's qemu-nbd; without spare connections
    the parent reads them for the workers. Same bytes either way."""
    img = make_image("qcow2-compressed", size=6 * MiB)
    with open_source(DiskSource(str(img.path), "qcow2"), nbd_spares=spares) as src:
        assert isinstance(src, MappedSource)
        counter = CountingReads(src)
        sink = io.BytesIO()
        write_vmdk(src, sink, fixed(threads=2))
        assert (counter.reads == 0) == (spares == 2)
    out = tmp_path / f"out{spares}.vmdk"
    out.write_bytes(sink.getvalue())
    check_with_tools(out, img.raw, img.size)


def busy_workers() -> set[int]:
    return worker_children() - set(idle_workers())


def fail_mid_disk(act: Callable[[], None]) -> Callable[[Progress], None]:
    """A progress callback that runs ``act`` once, at the first progress inside a disk."""
    done = threading.Event()

    def on_progress(p: Progress) -> None:
        if p.stage.startswith("disk") and 0 < p.done < p.total and not done.is_set():
            done.set()
            act()

    return on_progress


def assert_nothing_left(out: Path, tmp: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == []  # no package, no .part file
    assert sorted(p.name for p in tmp.iterdir()) == []  # no temporary file, no qemu-nbd socket
    assert worker_children() == set()  # the write's workers were killed and reaped
    assert shared_maps() == []


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def big_raw(path: Path) -> Path:
    """64 MiB of data: 16 batches, more than two workers hold at once."""
    with path.open("wb") as f:
        for k in range(32):
            f.write(random_bytes(MiB, seed=k) if k % 2 else text_like(MiB, seed=k))
            f.write(random_bytes(MiB, seed=100 + k))
    return path


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGBUS])
def test_worker_dying_mid_disk_leaves_nothing(
    tmp_path: Path, private_tmp: Path, sig: signal.Signals, clean_pool: None
) -> None:
    raw = big_raw(tmp_path / "disk.raw")
    out = tmp_path / "out"
    out.mkdir()
    shm_before = set(os.listdir("/dev/shm"))

    def kill_one() -> None:
        victims = busy_workers()
        assert victims
        for pid in victims:
            os.kill(pid, sig)

    with pytest.raises(OvfkitError) as e:
        write_ova(
            make_vm([(raw, "raw")]),
            out / "vm.ova",
            OvaOptions(threads=2),
            progress=fail_mid_disk(kill_one),
        )
    assert sig.name in e.value.details and "bytes" in e.value.details
    # SIGBUS is how a mapping of a failing source ends a process: an I/O error.
    assert e.value.code == ("SYS.1016" if sig == signal.SIGBUS else "SYS.1006")
    assert_nothing_left(out, private_tmp)
    assert set(os.listdir("/dev/shm")) <= shm_before


def test_raw_source_truncated_mid_export_is_an_io_error(
    tmp_path: Path, private_tmp: Path, clean_pool: None
) -> None:
    """A raw volume truncated while it is exported (it killed the process with SIGBUS when the
    writer mapped it): SYS.1016 naming the byte, the partial package removed."""
    raw = big_raw(tmp_path / "disk.raw")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OvfkitIOError) as e:
        write_ova(
            make_vm([(raw, "raw")]),
            out / "vm.ova",
            OvaOptions(threads=2),
            progress=fail_mid_disk(lambda: os.truncate(raw, 8 * MiB)),
        )
    assert e.value.code == "SYS.1016" and "truncated" in e.value.details
    # The details say which of the VM's disks: the member, and the volume's name if it has one.
    member = e.value.details.split(":")[0]
    assert member.endswith(".vmdk") or ".vmdk (volume " in member, e.value.details
    assert str(e.value) == f"SYS.1016: {e.value.details}"
    assert_nothing_left(out, private_tmp)
    # The process and its pool are fine: the next export of the (now short) disk works.
    result = write_ova(make_vm([(raw, "raw")]), out / "vm.ova", OvaOptions(threads=2))
    assert result.size > 0


def test_qcow2_layer_truncated_mid_export_is_an_io_error(
    make_image: MakeImage, tmp_path: Path, private_tmp: Path, clean_pool: None
) -> None:
    chunks = [(k * 2 * MiB, random_bytes(2 * MiB, seed=k)) for k in range(32)]
    img = make_image("qcow2", size=64 * MiB, data=chunks)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OvfkitIOError) as e:
        write_ova(
            make_vm([(img.path, "qcow2")]),
            out / "vm.ova",
            OvaOptions(threads=2),
            progress=fail_mid_disk(lambda: os.truncate(img.path, 4 * MiB)),
        )
    assert "truncated" in e.value.details
    assert_nothing_left(out, private_tmp)


def test_cancel_mid_disk_leaves_no_worker(
    tmp_path: Path, private_tmp: Path, clean_pool: None
) -> None:
    raw = big_raw(tmp_path / "disk.raw")
    out = tmp_path / "out"
    out.mkdir()
    cancel = threading.Event()
    with pytest.raises(OperationCancelledError):
        write_ova(
            make_vm([(raw, "raw")]),
            out / "vm.ova",
            OvaOptions(threads=2),
            progress=fail_mid_disk(cancel.set),
            cancel=cancel,
        )
    assert_nothing_left(out, private_tmp)


def test_failing_sink_ends_the_write_and_its_workers(tmp_path: Path, clean_pool: None) -> None:
    raw = big_raw(tmp_path / "disk.raw")

    class Full:
        written = 0

        def write(self, b: bytes) -> int:
            if self.written > 20 * MiB:
                raise OSError(28, "No space left on device")
            self.written += len(b)
            return len(b)

    src = RawSource(raw)
    try:
        with pytest.raises(OvfkitIOError, match="No space left"):
            write_vmdk(src, Full(), fixed(threads=2))
    finally:
        src.close()
    assert worker_children() == set()
    assert shared_maps() == []
    assert not any(str(raw) in line for line in Path("/proc/self/maps").read_text().splitlines())


def test_workers_are_started_on_demand_and_reused(tmp_path: Path, clean_pool: None) -> None:
    empty = tmp_path / "empty.raw"
    with empty.open("wb") as f:
        f.truncate(10 * 1024 * MiB)
    src = RawSource(empty)
    try:
        write_vmdk(src, io.BytesIO(), VmdkOptions(threads=2))
    finally:
        src.close()
    assert worker_children() == set()  # no data: no worker
    data = random_bytes(16 * MiB)  # 4 batches: more than one process's lanes take at once
    assert VmdkOptions().engine == "native"  # the default: its workers make the grains
    assert workers_mod.LANES_PER_WORKER == 2
    write_vmdk(MemorySource(data), io.BytesIO(), VmdkOptions(threads=4))
    first = set(idle_workers())
    assert len(first) == 2 and worker_children() == first  # 4 lanes: two processes
    assert all(threads_of(pid) == 2 for pid in first)  # a thread per lane
    write_vmdk(MemorySource(data), io.BytesIO(), VmdkOptions(threads=4))
    assert set(idle_workers()) == first  # the same processes
    # An idle worker killed from outside is replaced at the next write.
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    expected = io.BytesIO()
    write_vmdk(MemorySource(data), expected, fixed(threads=4))
    assert victim not in idle_workers() and len(idle_workers()) == 2
    assert inspect_vmdk(io.BytesIO(expected.getvalue()), strict=True).ok
    # A lane that got no batch (one batch, two lanes) is pooled ready for the next write.
    shutdown()
    write_vmdk(MemorySource(random_bytes(MiB)), io.BytesIO(), VmdkOptions(threads=2))
    (two_lanes,) = idle_workers()
    body = io.BytesIO()
    write_vmdk(MemorySource(data), body, fixed(threads=2))
    assert body.getvalue() == expected.getvalue() and idle_workers() == [two_lanes]
    # A pooled process with fewer lanes than a crew wants serves those it has; the crew
    # starts more for the rest (1 + 2 + 1 lanes), the same bytes.
    shutdown()
    write_vmdk(MemorySource(data), io.BytesIO(), VmdkOptions(threads=1))
    (single,) = idle_workers()
    assert threads_of(single) == 1
    body = io.BytesIO()
    write_vmdk(MemorySource(data), body, fixed(threads=4))
    assert body.getvalue() == expected.getvalue()
    assert single in idle_workers() and sorted(map(threads_of, idle_workers())) == [1, 1, 2]
    shutdown()
    assert worker_children() == set()


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def test_idle_workers_end_by_themselves(
    monkeypatch: pytest.MonkeyPatch, clean_pool: None
) -> None:
    monkeypatch.setattr(workers_mod, "IDLE_SECONDS", 0.2)
    write_vmdk(MemorySource(random_bytes(MiB)), io.BytesIO(), VmdkOptions(threads=1))
    assert len(idle_workers()) == 1
    for _ in range(100):
        if not worker_children():
            break
        threading.Event().wait(0.05)
    assert idle_workers() == [] and worker_children() == set()


def test_worker_imports_little() -> None:
    """A worker imports its own modules and a few standard ones: nothing of the package's API
    (lxml, dataclasses, typing, ovfkit.errors), which would cost RSS in every worker."""
    code = workers_mod._boot_code().replace(
        "main(*map(int, sys.argv[1:]))", "print(' '.join(sorted(sys.modules)))"
    )
    mods = set(
        subprocess.run(
            [sys.executable, "-I", "-S", "-c", code], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    assert {"ovfkit.vmdk.worker", "ovfkit.vmdk.grains"} <= mods
    assert not mods & {"typing", "dataclasses", "lxml", "ovfkit.errors", "ovfkit.vmdk.format"}
    assert not any(m.startswith(("lxml", "xxhash", "concurrent")) for m in mods)


@pytest.mark.parametrize("engine", ["native", "qemu-img"])
def test_extra_hashes_see_every_byte(tmp_path: Path, engine: str) -> None:
    raw = mixed_disk(tmp_path / "disk.raw", 8 * MiB)
    whole = hashlib.md5()
    sha1 = hashlib.sha1()
    out = tmp_path / "out.vmdk"
    with out.open("wb") as f:
        result = write_vmdk(
            DiskSource(str(raw), "raw"),
            f,
            VmdkOptions(engine=engine, threads=2, long_content_id=LONG_ID),  # type: ignore[arg-type]
            extra_hashes=[whole, sha1],
        )
    body = out.read_bytes()
    assert whole.hexdigest() == hashlib.md5(body).hexdigest()
    assert sha1.hexdigest() == hashlib.sha1(body).hexdigest()
    assert result.digests["sha256"] == hashlib.sha256(body).hexdigest()


def test_forked_child_has_workers_of_its_own(clean_pool: None) -> None:
    """After os.fork the child does not share the parent's idle workers (their sockets): it
    starts its own, and the parent's stay usable."""
    data = random_bytes(2 * MiB)
    write_vmdk(MemorySource(data), io.BytesIO(), VmdkOptions(threads=1))
    before = idle_workers()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            if idle_workers() == []:
                sink = io.BytesIO()
                write_vmdk(MemorySource(data), sink, VmdkOptions(threads=1))
                code = 0 if inspect_vmdk(io.BytesIO(sink.getvalue())).ok else 2
            shutdown()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert idle_workers() == before
    write_vmdk(MemorySource(data), io.BytesIO(), VmdkOptions(threads=1))
    assert idle_workers() == before


def test_unstartable_worker_is_an_operation_failure(
    monkeypatch: pytest.MonkeyPatch, clean_pool: None
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(OperationFailedError, match="cannot start a disk worker"):
        write_vmdk(MemorySource(b"x" * 100), io.BytesIO())
    assert worker_children() == set()


_PEAK = """
import os, sys, time
from ovfkit.disk import RawSource
from ovfkit.vmdk import VmdkOptions, write_vmdk
from ovfkit.vmdk.workers import idle_workers, shutdown

def hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

class SlowSink:  # the writer thread backs up: what is queued must stay bounded by the slots
    def write(self, b):
        time.sleep(0.002)
        return len(b)

src = RawSource(sys.argv[1])
write_vmdk(src, SlowSink(), VmdkOptions(threads=int(sys.argv[2])))
src.close()
print(hwm_kib(os.getpid()) + sum(hwm_kib(p) for p in idle_workers()), len(idle_workers()))
shutdown()
"""


def test_memory_does_not_grow_with_the_disk(tmp_path: Path) -> None:
    """Peak RSS of the export's processes (the writer's and its workers', each one's peak,
    summed) is the same for 16 MiB and 160 MiB of data behind a slow sink: memory is bounded
    by the workers' slots, whatever the disk size or the sink's speed; with 16 lanes (8
    processes) it stays under issue 11's 256 MiB."""
    peaks = []
    text = text_like(MiB)
    for mib, threads in ((16, 2), (160, 2), (160, 16)):
        raw = tmp_path / f"{mib}.raw"
        if not raw.exists():
            with raw.open("wb") as f:
                for k in range(mib // 2):
                    f.write(random_bytes(MiB, seed=k) + text)
        run = subprocess.run(
            [sys.executable, "-c", _PEAK, str(raw), str(threads)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        kib, processes = map(int, run.stdout.split())
        assert processes == -(-threads // workers_mod.LANES_PER_WORKER), run.stdout
        peaks.append(kib / 1024)
    small, big, many = peaks
    print(f"peak RSS summed: {small:.0f} MiB (16 MiB of data), {big:.0f} MiB (160 MiB),"
          f" {many:.0f} MiB (160 MiB, 16 lanes)")  # fmt: skip
    assert big < small + 12, peaks  # MiB; 144 MiB more data
    assert big < 256, peaks
    # Issue 11's bound with 16 lanes (8 worker processes), every lane busy: 160 batches.
    assert many < 256, peaks


def test_default_lanes_are_cores_and_two_more_at_most_32(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, lanes in ((1, 3), (2, 4), (16, 18), (30, 32), (64, 32)):
        monkeypatch.setattr(writer_mod, "_cores", lambda c=cores: c)
        assert writer_mod.default_lanes() == lanes
