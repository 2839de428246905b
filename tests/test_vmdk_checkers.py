"""inspect_vmdk on worker processes (ovfkit.vmdk.checkers): the same findings as one process for
good and broken files, segments that do not fit the file, a worker that dies, cancellation, and
no worker left running afterwards."""

from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path

import pytest
from conftest import random_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_vmdk_reader import build

from ovfkit.errors import OperationCancelledError, OperationFailedError
from ovfkit.vmdk import checkers, inspect_vmdk, reader
from ovfkit.vmdk import format as fmt
from ovfkit.vmdk.reader import VmdkInfo

G = fmt.GRAIN_SIZE
S = fmt.SECTOR
PER_TABLE = fmt.GTES_PER_GT
TABLES = 4
CAP = TABLES * PER_TABLE * fmt.GRAIN_SECTORS  # 128 MiB: four grain tables
STORED = zlib.compress(random_bytes(G), 0)  # a grain that does not shrink: 129 sectors


@pytest.fixture(autouse=True)
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers for any file, segments as small as one grain table."""
    monkeypatch.setattr(reader, "_MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(reader, "_MIN_SEGMENT_SECTORS", 1)


def _children() -> set[int]:
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            pids |= {int(p) for p in f.read().split()}
    return pids


def findings(info: VmdkInfo) -> tuple[object, ...]:
    return (
        tuple((f.fault, f.details) for f in info.faults),
        info.grains,
        info.populated_size,
        info.capacity,
        info.has_eos,
    )


def compare(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[VmdkInfo, bool]:
    """inspect_vmdk with 1 and 3 workers agree; also says whether the workers did the walk."""
    used: list[bool] = []
    real = reader._walk_in_parallel

    def spy(*args: object, **kwargs: object) -> bool:
        done = False
        try:
            done = real(*args, **kwargs)  # type: ignore[arg-type]
        except reader._Stop:  # a fatal fault, found by the workers
            done = True
            raise
        finally:
            used.append(done)
        return done

    serial = inspect_vmdk(path, workers=1)
    before = _children()
    with monkeypatch.context() as m:
        m.setattr(reader, "_walk_in_parallel", spy)
        parallel = inspect_vmdk(path, workers=3)
    assert findings(parallel) == findings(serial)
    assert _children() <= before  # every worker has ended
    return serial, bool(used and used[0])


def good_file() -> bytes:
    """Grains in every table, some stored (129 sectors), some that deflate to one sector."""
    grains = []
    for t in range(TABLES):
        for k in (0, 1, 7, 300, 511):
            idx = t * PER_TABLE + k
            payload = STORED if k % 2 else zlib.compress(bytes([idx % 251 + 1]) * G)
            grains.append((idx * fmt.GRAIN_SECTORS, payload))
    return build(grains, CAP)


def test_workers_find_what_one_process_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "good.vmdk"
    path.write_bytes(good_file())
    info, used = compare(path, monkeypatch)
    assert used and info.ok and info.grains == 20


def test_workers_read_a_member_inside_a_larger_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = good_file()
    path = tmp_path / "pkg"
    path.write_bytes(b"x" * 1536 + data + b"y" * 1000)
    with open(path, "rb") as f:
        serial = inspect_vmdk((f, 1536, len(data)), workers=1)
        parallel = inspect_vmdk((f, 1536, len(data)), workers=2)
    assert findings(parallel) == findings(serial) and serial.ok


@st.composite
def broken_files(draw: st.DrawFn) -> bytes:
    data = bytearray(good_file())
    kind = draw(st.sampled_from(["flip", "junk", "zeros", "cut", "swap", "none"]))
    at = draw(st.integers(fmt.OVERHEAD_SECTORS * S, len(data) - 1))
    if kind == "flip":
        data[at] ^= draw(st.integers(1, 255))
    elif kind == "junk":
        sector = at // S * S
        data[sector : sector + S] = draw(st.binary(min_size=S, max_size=S))
    elif kind == "zeros":
        sector = at // S * S
        data[sector:sector] = bytes(S * draw(st.integers(1, 3)))
    elif kind == "cut":
        del data[at:]
    elif kind == "swap":  # two grains' markers exchanged: out of order, tables wrong
        a, b = sorted(draw(st.lists(st.integers(0, 19), min_size=2, max_size=2, unique=True)))
        walk_pos = []
        pos = fmt.OVERHEAD_SECTORS
        while len(walk_pos) < 20:
            m = fmt.decode_marker(bytes(data[pos * S : pos * S + S]))
            if m.is_grain:
                walk_pos.append(pos)
                pos += fmt.grain_marker_sectors(m.size)
            else:
                pos += 1 + m.val
        pa, pb = walk_pos[a] * S, walk_pos[b] * S
        data[pa : pa + 8], data[pb : pb + 8] = data[pb : pb + 8], data[pa : pa + 8]
    return bytes(data)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=broken_files())
def test_broken_files_give_the_same_faults(
    data: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "broken.vmdk"
    path.write_bytes(data)
    compare(path, monkeypatch)


def test_a_fatal_fault_in_a_middle_segment_stops_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytearray(good_file())
    # The first grain of the third table gets an unknown marker type: the walk stops there.
    gt_first = _first_grain_sector(bytes(data), 2)
    data[gt_first * S : gt_first * S + 16] = fmt.encode_metadata_marker(9, 0)[:16]
    info, used = compare(_write(tmp_path, data), monkeypatch)
    assert used and info.fault_names[0] == "bad-marker" and info.grains == 10


def _write(tmp_path: Path, data: bytes | bytearray) -> Path:
    path = tmp_path / "f.vmdk"
    path.write_bytes(bytes(data))
    return path


def _first_grain_sector(data: bytes, table: int) -> int:
    pos = fmt.OVERHEAD_SECTORS
    while True:
        m = fmt.decode_marker(data[pos * S : pos * S + S])
        if m.is_grain:
            if m.val // fmt.GRAIN_SECTORS >= table * PER_TABLE:
                return pos
            pos += fmt.grain_marker_sectors(m.size)
        else:
            pos += 1 + m.val


def test_a_worker_that_dies_is_an_error_and_nothing_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, good_file())
    real = checkers._boot_code()
    # The worker takes its first task and is killed (as the OOM killer would).
    monkeypatch.setattr(
        checkers, "_boot_code",
        lambda: real.replace("main(int", "import os, signal\nos.read(int(sys.argv[1]), 1)\n"
                             "os.kill(os.getpid(), signal.SIGKILL)\nmain(int"),
    )  # fmt: skip
    before = _children()
    with pytest.raises(OperationFailedError, match="grain checker process ended"):
        inspect_vmdk(path, workers=2)
    assert _children() <= before


def test_cancel_stops_the_workers(tmp_path: Path) -> None:
    path = _write(tmp_path, good_file())
    cancel = threading.Event()
    cancel.set()
    before = _children()
    with pytest.raises(OperationCancelledError):
        inspect_vmdk(path, workers=2, cancel=cancel)
    assert _children() <= before


def test_worker_count() -> None:
    assert checkers.worker_count(3) == 3 and checkers.worker_count(0) == 1
    assert checkers.worker_count(None) == len(os.sched_getaffinity(0))
