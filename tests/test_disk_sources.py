"""Disk sources against real images: what a source reports and reads must be what qemu reads."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import KiB, MakeImage, MiB, random_bytes, text_like

from ovfkit.disk import (
    ImageSource,
    MappedSource,
    MemorySource,
    NbdSource,
    RawSource,
    mapped,
    open_source,
)
from ovfkit.disk.nbd import QemuNbd
from ovfkit.disk.source import Extent
from ovfkit.errors import (
    InvalidArgumentError,
    NotFoundError,
    OperationFailedError,
    ToolMissingError,
)
from ovfkit.model import DiskSource
from ovfkit.qemu import img

KINDS = ["raw", "qcow2", "qcow2-compressed", "qcow2-backing", "vmdk", "vmdk-stream"]
LAYOUTS = {
    "default-4M": (4 * MiB, None),
    "not-64k-multiple": (3 * MiB + 512, None),
    "empty": (2 * MiB, []),
    "last-sector-only": (MiB + 5 * 512, [(MiB + 4 * 512, b"\x01" * 512)]),
    "all-data": (MiB, [(0, text_like(MiB))]),
}


def _check_extents(extents: list[Extent], capacity: int) -> None:
    assert extents, "no extents"
    assert extents[0].start == 0
    for a, b in itertools.pairwise(extents):
        assert a.start + a.length == b.start, (a, b)
        assert a.length > 0 and b.length > 0
    assert extents[-1].start + extents[-1].length == capacity


def _read_like_a_writer(source: ImageSource) -> tuple[bytes, list[Extent]]:
    """Read only the data extents, as a writer does, leaving zero extents untouched."""
    out = bytearray(source.capacity)
    extents = list(source.extents())
    for e in extents:
        if not e.zero:
            n = source.readinto(e.start, memoryview(out)[e.start : e.start + e.length])
            assert n == e.length
    return bytes(out), extents


def _server(source: ImageSource) -> QemuNbd:
    nbd = source.nbd if isinstance(source, MappedSource) else source
    assert isinstance(nbd, NbdSource) and nbd.server is not None
    return nbd.server


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes only once reaped; Popen.wait reaps it.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", KINDS)
def test_source_reads_what_qemu_reads(make_image: MakeImage, kind: str, layout: str) -> None:
    size, data = LAYOUTS[layout]
    image = make_image(kind, size=size, data=data)
    expected = image.read_raw()
    with open_source(DiskSource(str(image.path), image.format)) as source:
        expected_type = {"raw": RawSource, "vmdk": NbdSource, "vmdk-stream": NbdSource}.get(
            kind, MappedSource
        )
        assert isinstance(source, expected_type)
        assert source.capacity == size
        got, extents = _read_like_a_writer(source)
        _check_extents(extents, size)
        assert got == expected
        # Zero extents really are zeros (nothing was read there).
        for e in extents:
            if e.zero:
                assert not any(expected[e.start : e.start + e.length])
        if kind != "raw":
            # Extents agree with qemu-img map of the whole chain.
            qemu_data = [
                (m.start, m.start + m.length)
                for m in img.map(image.path, image.format)
                if m.data and not m.zero
            ]
            ours = [(e.start, e.start + e.length) for e in extents if not e.zero]
            assert _merge(qemu_data) == _merge(ours)
        if layout == "empty":
            assert all(e.zero for e in extents)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def test_format_probed_when_not_given(make_image: MakeImage) -> None:
    image = make_image("qcow2-backing")
    with open_source(DiskSource(str(image.path))) as source:
        assert isinstance(source, MappedSource)
        assert _read_like_a_writer(source)[0] == image.read_raw()


@pytest.mark.parametrize("kind", ["qcow2", "raw"])
def test_unaligned_and_large_reads(make_image: MakeImage, kind: str) -> None:
    size = 10 * MiB + 512  # larger than one 8 MiB NBD read request
    image = make_image(kind, size=size, data=[(0, random_bytes(size))])
    expected = image.read_raw()
    with open_source(DiskSource(str(image.path), image.format)) as source:
        whole = bytearray(size)
        assert source.readinto(0, memoryview(whole)) == size
        assert whole == expected
        buf = bytearray(12345)
        assert source.readinto(777_777, memoryview(buf)) == len(buf)
        assert buf == expected[777_777 : 777_777 + len(buf)]
        tail = bytearray(4096)
        assert source.readinto(size - 100, memoryview(tail)) == 100
        assert tail[:100] == expected[-100:]


def test_raw_source_odd_size_and_trailing_hole(tmp_path: Path) -> None:
    path = tmp_path / "odd.raw"
    with open(path, "wb") as f:
        f.write(b"abc")
        f.truncate(5 * MiB + 3)
    source = RawSource(path)
    try:
        extents = list(source.extents())
        _check_extents(extents, 5 * MiB + 3)
        assert not extents[0].zero and extents[-1].zero
        buf = bytearray(5)
        assert source.readinto(0, memoryview(buf)) == 5
        assert buf == b"abc\0\0"
    finally:
        source.close()
    empty = tmp_path / "empty.raw"
    empty.touch()
    source = RawSource(empty)
    assert source.capacity == 0 and list(source.extents()) == []
    source.close()


def test_memory_source() -> None:
    data = bytes(64 * KiB) + b"x" * 100 + bytes(1000)
    source = MemorySource(data, [(0, 64 * KiB), (64 * KiB + 100, 1000)])
    assert list(source.extents()) == [
        Extent(0, 64 * KiB, True),
        Extent(64 * KiB, 100, False),
        Extent(64 * KiB + 100, 1000, True),
    ]
    assert list(MemorySource(b"ab").extents()) == [Extent(0, 2, False)]
    assert list(MemorySource(b"").extents()) == []
    buf = bytearray(10)
    assert source.readinto(len(data) - 4, memoryview(buf)) == 4
    with pytest.raises(InvalidArgumentError):
        MemorySource(data, [(64 * KiB, 10)])  # not zeros
    with pytest.raises(InvalidArgumentError):
        MemorySource(data, [(0, 10), (5, 10)])  # overlapping
    with pytest.raises(InvalidArgumentError):
        MemorySource(data, [(len(data) - 10, 20)])  # past the end


# --- errors and cleanup ----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    for fmt in (None, "raw", "qcow2"):
        with pytest.raises(NotFoundError), open_source(DiskSource(str(tmp_path / "x"), fmt)):
            pass


def test_missing_backing_file(make_image: MakeImage) -> None:
    image = make_image("qcow2-backing")
    assert image.backing is not None
    image.backing.unlink()
    with pytest.raises(NotFoundError), open_source(DiskSource(str(image.path), "qcow2")):
        pass


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(OperationFailedError), open_source(DiskSource(str(path), "qcow2")):
        pass



@pytest.mark.parametrize("kind", ["raw", "qcow2"])
def test_zero_size_image_is_refused(make_image: MakeImage, kind: str) -> None:
    # A 0-sector VMDK is refused by qemu ("Unsupported image type") and libvmdk alike, so
    # exporting it would make a package no importer opens.
    image = make_image(kind, size=0, data=[])
    with (
        pytest.raises(InvalidArgumentError, match="0 bytes"),
        open_source(DiskSource(str(image.path), kind)),
    ):
        pass

@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory of this test's own, so other runs' sockets do not count."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def _nbd_dirs(where: Path) -> set[str]:
    return {p.name for p in where.iterdir()}


def test_qemu_nbd_ends_and_leaves_nothing(make_image: MakeImage, private_tmp: Path) -> None:
    """qemu-nbd listens on an abstract unix address: no socket file, no directory, ever."""
    image = make_image("qcow2")
    with open_source(DiskSource(str(image.path), "qcow2")) as source:
        server = _server(source)
        pid = server.pid
        assert pid is not None and _alive(pid)
        assert _nbd_dirs(private_tmp) == set()
    assert not _alive(pid)
    assert _nbd_dirs(private_tmp) == set()


def test_qemu_nbd_ends_on_exception(make_image: MakeImage) -> None:
    image = make_image("qcow2")
    pid = None
    with pytest.raises(RuntimeError), open_source(DiskSource(str(image.path))) as source:
        pid = _server(source).pid
        raise RuntimeError("writer failed")
    assert pid is not None and not _alive(pid)


def test_qemu_nbd_start_failure_is_mapped_and_cleaned(tmp_path: Path, private_tmp: Path) -> None:
    with pytest.raises(NotFoundError) as err:
        NbdSource.open(str(tmp_path / "gone.qcow2"), "qcow2")
    assert "No such file or directory" in err.value.details
    assert _nbd_dirs(private_tmp) == set()


def test_qemu_nbd_not_installed(
    make_image: MakeImage, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    image = make_image("qcow2")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissingError) as err:
        NbdSource.open(str(image.path), "qcow2")
    assert "qemu-utils" in err.value.details


@pytest.mark.parametrize("kind", ["qcow2-backing", "raw"])
def test_image_in_use_is_refused_unless_forced(
    make_image: MakeImage, tmp_path: Path, kind: str
) -> None:
    image = make_image(kind)
    sock = tmp_path / "vm.sock"
    # A writable qemu-nbd takes the image's write lock, as the qemu of a running VM does.
    vm = subprocess.Popen(
        ["qemu-nbd", "--persistent", f"--socket={sock}", f"--format={image.format}", image.path],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        disk = DiskSource(str(image.path), image.format)
        with pytest.raises(img.ImageInUseError) as err, open_source(disk):
            pass
        assert err.value.code == "SYS.1006"
        assert "lock" in err.value.details and "force_shared" in err.value.details
        with open_source(disk, force_shared=True) as source:
            assert _read_like_a_writer(source)[0] == image.read_raw()
    finally:
        vm.terminate()
        vm.wait()


def test_qemu_nbd_never_connected_is_stopped(make_image: MakeImage) -> None:
    image = make_image("qcow2")
    server = QemuNbd(str(image.path), "qcow2", clients=3)
    pid = server.pid
    server.stop()
    assert pid is not None and not _alive(pid)


def test_direct_reads_only_where_map_places_data(make_image: MakeImage, tmp_path: Path) -> None:
    """A compressed qcow2 mixes clusters stored as they are (random data does not compress) and
    compressed ones: both kinds come back right, and the chooser keeps other formats on NBD."""
    size = 2 * MiB
    data = [(0, random_bytes(256 * KiB)), (MiB, text_like(512 * KiB))]
    image = make_image("qcow2-compressed", size=size, data=data)
    placed = [m for m in img.map(image.path, "qcow2") if m.data]
    assert any(m.offset is None for m in placed) and any(m.offset is not None for m in placed)
    with open_source(DiskSource(str(image.path), "qcow2")) as source:
        assert isinstance(source, MappedSource)
        assert _read_like_a_writer(source)[0] == image.read_raw()
    external = tmp_path / "external.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'd.raw'}",
         str(external), "1M"],
        check=True,
    )  # fmt: skip
    with open_source(DiskSource(str(external), "qcow2")) as source:
        assert type(source) is NbdSource
        assert _read_like_a_writer(source)[0] == bytes(MiB)


@pytest.mark.parametrize("kind", ["qcow2", "qcow2-compressed", "qcow2-backing", "raw"])
def test_nbd_alone_reads_what_qemu_reads(make_image: MakeImage, kind: str) -> None:
    """The NBD client on its own (the fallback of MappedSource, the reader of every other
    format), block status and reads, against qemu's raw conversion."""
    image = make_image(kind, size=3 * MiB + 512)
    source = NbdSource.open(str(image.path), image.format)
    try:
        got, extents = _read_like_a_writer(source)
        _check_extents(extents, image.size)
        assert got == image.read_raw()
    finally:
        source.close()


def test_map_windows(make_image: MakeImage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads and extents that cross map windows (4 GiB in use, 192 KiB here)."""
    monkeypatch.setattr(mapped, "WINDOW", 192 * KiB)
    image = make_image("qcow2-backing", size=3 * MiB + 512)
    expected = image.read_raw()
    with open_source(DiskSource(str(image.path), "qcow2")) as source:
        assert isinstance(source, MappedSource)
        got, extents = _read_like_a_writer(source)
        _check_extents(extents, image.size)
        assert got == expected
        whole = bytearray(image.size)
        assert source.readinto(0, memoryview(whole)) == image.size
        assert whole == expected
        buf = bytearray(300 * KiB)
        assert source.readinto(100 * KiB + 3, memoryview(buf)) == len(buf)
        assert buf == expected[100 * KiB + 3 : 400 * KiB + 3]


@pytest.mark.parametrize("when", ["serving", "before any client negotiated"])
def test_qemu_nbd_goes_when_its_parent_is_killed(
    make_image: MakeImage, private_tmp: Path, when: str
) -> None:
    """A parent killed outright leaves no qemu-nbd: once a client negotiated, qemu-nbd exits
    with its last client; before that (it would wait for one for ever), the kernel's
    parent-death signal ends it."""
    image = make_image("qcow2")
    opened = (
        "from ovfkit.disk import open_source\n"
        "from ovfkit.model import DiskSource\n"
        "with open_source(DiskSource(sys.argv[1], 'qcow2'), nbd_spares=2) as s:\n"
        "    print(getattr(s, 'nbd', s).server.pid, flush=True)\n"
        if when == "serving"
        else "from ovfkit.disk.nbd import QemuNbd\n"
        "if True:\n"
        "    print(QemuNbd(sys.argv[1], 'qcow2', clients=2).pid, flush=True)\n"
    )
    code = f"import os, signal, sys\n{opened}    os.kill(os.getpid(), signal.SIGKILL)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(image.path)],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(private_tmp)},
    )
    assert proc.returncode == -9, proc.stderr
    assert _nbd_dirs(private_tmp) == set()  # nothing left on disk either
    pid = int(proc.stdout)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not _alive(pid)
    finally:  # a failure must not leave it behind either
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("kind", ["qcow2", "vmdk", "raw"])
def test_odd_relative_names(
    make_image: MakeImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    image = make_image(kind)
    name = f"-odd:{kind}"
    shutil.copy(image.path, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    with open_source(DiskSource(name, image.format)) as source:
        assert _read_like_a_writer(source)[0] == image.read_raw()


def _try_write(image: Path, fmt: str) -> subprocess.CompletedProcess[str]:
    """What a VM starting on the image does first: open it read-write (qemu-io here)."""
    return subprocess.run(
        ["qemu-io", "-f", fmt, "-c", "write -P 0x11 0 512", str(image)],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("kind", ["raw", "qcow2", "vmdk"])
def test_writers_kept_away_while_exporting(make_image: MakeImage, kind: str) -> None:
    image = make_image(kind)
    with open_source(DiskSource(str(image.path), image.format)) as source:
        proc = _try_write(image.path, image.format)
        assert proc.returncode != 0
        assert 'Failed to get "write" lock' in proc.stdout + proc.stderr
        assert _read_like_a_writer(source)[0] == image.read_raw()
    assert _try_write(image.path, image.format).returncode == 0  # released at close


def test_force_shared_raw_takes_no_lock(make_image: MakeImage) -> None:
    image = make_image("raw")
    with open_source(DiskSource(str(image.path), "raw"), force_shared=True):
        assert _try_write(image.path, "raw").returncode == 0


def test_image_marked_corrupt_is_refused(make_image: MakeImage) -> None:
    image = make_image("qcow2-backing")
    assert image.backing is not None
    with open(image.backing, "r+b") as f:  # incompatible_features bit 1: corrupt (qcow2 spec)
        f.seek(72)
        bits = int.from_bytes(f.read(8), "big")
        f.seek(72)
        f.write((bits | 2).to_bytes(8, "big"))
    with pytest.raises(OperationFailedError) as err, open_source(DiskSource(str(image.path))):
        pass
    assert "corrupt" in err.value.details and "qemu-img check -r all" in err.value.details


def test_fifo_directory_and_char_device_are_refused(tmp_path: Path) -> None:
    # qemu-img info on a FIFO blocks until a writer comes: the export hung for ever.
    fifo = tmp_path / "vol.raw"
    os.mkfifo(fifo)
    for path, kind in ((tmp_path, "directory"), (Path("/dev/null"), "device"), (fifo, "FIFO")):
        with (
            pytest.raises(InvalidArgumentError, match=kind),
            open_source(DiskSource(str(path), "raw")),
        ):
            pass
