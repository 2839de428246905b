"""The qemu-img engine: ``qemu-img convert`` to streamOptimized, brought to the native rules.

qemu-img cannot write a VMDK to a pipe, so it writes a temporary file, which is copied to the sink
*while qemu-img writes it*: the grains are taken as they land (``walk_grains`` says when one is
final), so what is left once qemu-img ends is the last grain and the tables, not a second pass
over the whole file. The copy is rewritten on the way so both engines hand out the same layout
(the rules: docs/interop-rules.md, VMware "Virtual Disk Format 5.0"). What qemu-img
7.2 writes and what the copy changes:

- grain directory, redundant directory and all grain tables *before* the grains (header gdOffset
  and rgdOffset point there, flag bit 1 set) -> header with gdOffset = GD_AT_END, no redundant
  directory; grain tables with GT markers after each 512-grain group, then GD marker + directory,
  footer marker + footer + EOS as the last three sectors (qemu #1357: ESXi rejects files without
  them; siderolabs/image-factory#232);
- no footer, no end-of-stream marker, and zero padding after the last grain (it reads as a run of
  EOS markers) -> dropped, the proper tail is written;
- the descriptor lacks ddb.toolsInstallType, ddb.longContentID, ddb.uuid and encoding, and names
  the temporary file in its extent line -> replaced by the native writer's descriptor
  (``format.encode_descriptor``, same adapter type, hardware version and geometry rule).

Grains are copied byte for byte (qemu's zlib streams are valid RFC 1950 grains), only their sector
offsets move, so nothing is re-compressed. Everything around them (header, descriptor, grain
tables, footer, the output with its offsets and digests) is the native writer's own
(``ovfkit.vmdk.output``): the engines differ only in how grains are made. Digests are computed
on the bytes as they go to the sink, in the caller's thread (qemu-img has the cores). qemu-img
runs on a thread of its own; progress callbacks and cancellation stay on the caller's thread.

qemu-img deflates on one thread, so a disk with enough data is cut into windows
(``ovfkit.vmdk.parts``), each converted by a qemu-img of its own (qemu's raw driver with offset and
size over the image, ``img.ImageWindow``), one per core at a time; the copy takes the windows in
disk order and writes each grain marker with the whole disk's LBA (VMware "Virtual Disk Format
5.0": a grain marker's ``val`` is the grain's LBA), so the result is one VMDK as if one qemu-img
had written it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO, Protocol

import xxhash

from ..disk import check_image
from ..disk.mapped import MappedSource
from ..disk.nbd import NbdSource
from ..disk.raw import RawSource
from ..disk.source import ImageSource
from ..errors import OperationCancelledError, OvfkitIOError, VmdkFormatError
from ..model import DiskSource
from ..progress import CancelToken, Progress, ProgressCallback, check_cancel
from ..qemu import img
from . import format as fmt
from .hashing import Updatable
from .options import VmdkOptions, VmdkResult
from .output import VmdkOutput
from .parts import plan_parts
from .sink import Sink

__all__ = [
    "FinishedFile",
    "GrainFile",
    "QemuGrain",
    "early_digest",
    "qemu_convert_options",
    "verify_early_grains",
    "walk_grains",
    "write_vmdk_qemu",
]

G = fmt.GRAIN_SIZE
# Allocated bytes a window needs before it gets a qemu-img of its own (~5 s of qemu-img's
# deflate here, against ~30 ms to start one): small disks stay one convert.
MIN_PART = 128 * 1024 * 1024
_COPY_CHUNK = 4 * 1024 * 1024
# qemu-img's -o toolsversion: the value VMware writes for "tools unmanaged" (open-vm-tools#151).
TOOLS_VERSION = 2147483647


def qemu_convert_options(options: VmdkOptions) -> dict[str, object]:
    """``-o`` options of ``qemu-img convert -O vmdk`` for these VmdkOptions."""
    return {
        "subformat": "streamOptimized",
        "adapter_type": options.adapter_type,
        "hwversion": options.hw_version,
        "toolsversion": TOOLS_VERSION,
    }


class QemuGrain:
    """A grain marker as found in the file: ``lba`` in sectors, ``data`` its 12-byte head and
    compressed bytes, ``pad`` the zeros that fill its last sector."""

    __slots__ = ("data", "early", "lba", "pad")

    def __init__(self, lba: int, data: bytes | memoryview, pad: bytes, early: bool = False) -> None:
        self.lba = lba
        self.data = data
        self.pad = pad
        self.early = early  # taken while the file was still being written


class GrainFile(Protocol):
    """The file being walked: finished, or still being written by qemu-img (``_Tail``)."""

    def finished(self) -> bool:
        """True once nothing writes the file any more: every byte read after that is final."""
        ...

    def read(self, pos: int, n: int) -> bytes | memoryview:
        """The ``n`` bytes at ``pos`` as they are now; fewer only past the end of a finished
        file (while it is written, waits for the file to grow)."""
        ...

    def pause(self) -> None:
        """Wait a little for the writer (progress and cancellation are looked at meanwhile)."""
        ...


class FinishedFile:
    """A GrainFile over a file nobody writes any more."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def finished(self) -> bool:
        return True

    def read(self, pos: int, n: int) -> bytes:
        return os.pread(self.fd, n, pos)

    def pause(self) -> None:  # pragma: no cover - never called for a finished file
        pass


def walk_grains(f: GrainFile, header: fmt.SparseHeader) -> Iterator[QemuGrain]:
    """The grain markers of a streamOptimized file from ``overHead`` on, in file order, until an
    end-of-stream marker or the end of the file. Metadata (GT, GD, footer) is skipped: the copy
    writes its own. A grain past capacity, out of order or running past the end is an error.

    While qemu-img still writes the file, a grain is taken only when it is provably complete:
    qemu writes one grain at a time (vmdk_co_pwritev holds the image lock over the write) at
    the end of the previous one, into space it has already extended with zeros, so the file's
    size says nothing, but a non-zero head where the next grain goes means this one was
    written in full; its head, read again, must not have changed (one read while being copied
    could otherwise mislead; ``verify_early_grains`` closes the last gap). Anything else (zeros,
    metadata, a changed head) waits until qemu-img has ended and is then read as final. Each
    grain's padding is made here rather than read."""
    pos = header.overhead
    last = -1
    capacity_grains = -(-header.capacity // header.grain_size)
    while True:
        final = f.finished()  # before reading: then what is read is final
        head = f.read(pos * fmt.SECTOR, _MARKER_BYTES)
        if len(head) < _MARKER_BYTES:
            if not final:
                f.pause()
                continue
            if not head:
                return
            raise VmdkFormatError("truncated", f"the file ends inside the marker at sector {pos}")
        m = fmt.decode_marker(head)
        if not m.is_grain:
            if not final:
                f.pause()
                continue
            if m.type == fmt.MARKER_EOS:
                return
            if m.type not in (fmt.MARKER_GT, fmt.MARKER_GD, fmt.MARKER_FOOTER):
                raise VmdkFormatError("bad-marker", f"marker type {m.type} at sector {pos}")
            pos += 1 + m.val
            continue
        bad_lba = m.val % header.grain_size or m.val // header.grain_size >= capacity_grains
        if (bad_lba or m.val <= last) and not final:
            f.pause()
            continue
        if bad_lba:
            raise VmdkFormatError("lba-beyond-capacity", f"grain LBA {m.val} at sector {pos}")
        if m.val <= last:
            raise VmdkFormatError("unsorted-grains", f"grain LBA {m.val} follows {last}")
        after = pos + fmt.grain_marker_sectors(m.size)
        n = fmt.MARKER_HEADER_SIZE + m.size
        if not final:
            if not any(f.read(after * fmt.SECTOR, _MARKER_BYTES)):
                f.pause()
                continue
            data: bytes | memoryview = bytes(f.read(pos * fmt.SECTOR, n))
            if data[:_MARKER_BYTES] != bytes(head):
                f.pause()
                continue
        else:
            data = f.read(pos * fmt.SECTOR, n)
            if len(data) < n:
                raise VmdkFormatError("truncated", f"grain at sector {pos} runs past the end")
        last = m.val
        _, pad = fmt.grain_marker_frame(m.val, m.size)
        yield QemuGrain(m.val, data, pad, early=not final)
        pos = after


_MARKER_BYTES = 16  # u64 val, u32 size, u32 type: enough to tell a grain from metadata


def verify_early_grains(f: GrainFile, header: fmt.SparseHeader, count: int, digest: str) -> None:
    """Check, on the finished file, that its first ``count`` grains are the ones copied while it
    was written: ``digest`` is ``early_digest`` of those. The head re-read in ``walk_grains``
    cannot rule out a head seen half written twice (its writer preempted in mid-copy); this
    can, for ~0.5 s per GB of grains read back from the page cache."""
    grains = itertools.islice(walk_grains(f, header), count)
    if early_digest(grains) != digest:
        raise VmdkFormatError(
            "copy-raced",
            "grains copied while qemu-img wrote them differ from its finished file",
        )


class _EarlyDigest:
    """xxh3-128 of grains' LBAs and bytes, in order, and how many."""

    def __init__(self) -> None:
        self.count = 0
        self._h = xxhash.xxh3_128()

    def add(self, grain: QemuGrain) -> None:
        self.count += 1
        self._h.update(grain.lba.to_bytes(8, "little"))
        self._h.update(grain.data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def early_digest(grains: Iterable[QemuGrain]) -> str:
    d = _EarlyDigest()
    for g in grains:
        d.add(g)
    return d.hexdigest()


class _Convert:
    """``qemu-img convert`` on a thread of its own, so its output can be copied while it grows.
    Progress and cancellation stay with the caller's thread: it polls ``progress`` and sets
    ``stop`` (img.convert then ends the child and removes its output). ``on_done`` runs on the
    thread once qemu-img has ended (the pool starts the next part there)."""

    def __init__(
        self,
        run: Callable[[ProgressCallback, CancelToken], None],
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.done = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.progress: Progress | None = None
        self._run = run
        self._on_done = on_done
        self._thread = threading.Thread(target=self._main, name="ovfkit-qemu-img", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self._run(self._on_progress, self.stop)
        except BaseException as e:  # handed to the caller's thread by join()
            self.error = e
        finally:
            self.done.set()
            if self._on_done is not None:
                try:
                    self._on_done()
                except BaseException as e:  # e.g. no room for the next part's file: the
                    self.error = self.error or e  # caller raises it at its next poll

    def _on_progress(self, p: Progress) -> None:
        self.progress = p

    def join(self) -> None:
        """Wait for qemu-img; re-raise its failure here."""
        self._thread.join()
        if self.error is not None:
            raise self.error

    def end(self) -> None:
        """Stop qemu-img (if still running) and wait for the thread; its error is dropped."""
        self.stop.set()
        self._thread.join()


class _Pool:
    """One ``_Convert`` per part, at most ``jobs`` running, started in disk order (the copy
    takes the parts in that order, so the first ones must end first)."""

    def __init__(self, count: int, jobs: int, start: Callable[[int, Callable[[], None]], _Convert]):
        self.converts: list[_Convert] = []
        self._count = count
        self._jobs = jobs
        self._start = start
        self._lock = threading.Lock()
        self._closed = False

    def fill(self) -> None:
        with self._lock:
            while not self._closed and len(self.converts) < self._count:
                if sum(not c.done.is_set() for c in self.converts) >= self._jobs:
                    return
                if any(c.error is not None for c in self.converts):
                    return  # the caller is about to raise it
                self.converts.append(self._start(len(self.converts), self.fill))

    def get(self, k: int) -> _Convert:
        """Part ``k``'s convert; started by now, since every part before it has ended."""
        self.fill()
        return self.converts[k]

    def error(self) -> BaseException | None:
        """The failure of the first part that failed, if any (qemu-img's own, not a stop)."""
        for c in list(self.converts):
            if c.done.is_set() and c.error is not None:
                return c.error
        return None

    def end(self) -> None:
        with self._lock:
            self._closed = True
        for c in list(self.converts):
            c.end()


class _Tail:
    """The GrainFile qemu-img is still writing. Reads wait until the file is long enough or
    qemu-img has ended; ``pause`` waits ``_POLL`` seconds, or less if qemu-img ends, and runs
    ``poll`` (progress and cancellation on the caller's thread). Once qemu-img has ended, reads
    go through a buffer of ``_COPY_CHUNK`` bytes; before, every read is fresh."""

    def __init__(self, fd: int, convert: _Convert, poll: Callable[[], None]) -> None:
        self.fd = fd
        self.convert = convert
        self.poll = poll
        self._buf = b""
        self._start = 0

    def finished(self) -> bool:
        return self.convert.done.is_set()

    def pause(self) -> None:
        self.poll()
        self.convert.done.wait(_POLL)

    def read(self, pos: int, n: int) -> bytes | memoryview:
        while True:
            finished = self.finished()  # before fstat: then the size is the final one
            if finished:
                rel = pos - self._start
                if rel >= 0 and rel + n <= len(self._buf):
                    return memoryview(self._buf)[rel : rel + n]
            size = os.fstat(self.fd).st_size
            if not finished and size < pos + n:
                self.pause()
                continue
            if not finished:
                return os.pread(self.fd, n, pos)
            self._buf = os.pread(self.fd, max(0, min(size - pos, max(n, _COPY_CHUNK))), pos)
            self._start = pos
            return memoryview(self._buf)[:n]


_POLL = 0.25  # seconds between looks at qemu-img's growing file


def _check_header(header: fmt.SparseHeader) -> None:
    if not header.compressed or not header.has_markers or header.grain_size != fmt.GRAIN_SECTORS:
        raise VmdkFormatError(
            "not-stream-optimized",
            f"qemu-img wrote flags {header.flags:#x}, grainSize {header.grain_size}",
        )
    if header.num_gtes_per_gt != fmt.GTES_PER_GT:
        raise VmdkFormatError("bad-gt-size", f"numGTEsPerGT {header.num_gtes_per_gt}")


def _copy_repaired(
    grains: Iterable[QemuGrain], out: VmdkOutput, on_group: Callable[[int], None]
) -> int:
    """Copy the grains (disk order, LBAs of the whole disk) to ``out``; returns their number.
    ``on_group(lba)`` runs before each 512-grain group (progress, cancellation)."""
    group = -1
    count = 0
    for grain in grains:
        index = grain.lba // fmt.GRAIN_SECTORS
        if index // fmt.GTES_PER_GT != group:
            group = index // fmt.GTES_PER_GT
            on_group(grain.lba)
        # The marker's LBA is the whole disk's (a part's qemu-img wrote its own window's).
        pieces = (grain.lba.to_bytes(8, "little"), memoryview(grain.data)[8:], grain.pad)
        out.put_grain(index, pieces, len(grain.data) + len(grain.pad))
        count += 1
    return count


def _part_grains(
    fd: int, convert: _Convert, poll: Callable[[], None], base: int, sectors: int
) -> Iterator[QemuGrain]:
    """The grains of one part's file, followed while its qemu-img writes it, with LBAs moved
    by ``base`` sectors; once qemu-img has ended, the early ones are checked against the
    finished file and the file is checked to be the one it wrote (``sectors``: the part's
    expected capacity)."""
    tail = _Tail(fd, convert, poll)
    first = bytes(tail.read(0, fmt.SECTOR))
    if len(first) < fmt.SECTOR:
        convert.join()  # qemu-img failed before writing a header: its error
        raise VmdkFormatError("truncated", "qemu-img wrote no VMDK header")
    header = fmt.decode_header(first)
    _check_header(header)
    if header.capacity != sectors:
        raise VmdkFormatError(
            "bad-capacity", f"qemu-img wrote a capacity of {header.capacity} sectors, not {sectors}"
        )
    early = _EarlyDigest()
    for grain in walk_grains(tail, header):
        if grain.early:
            early.add(grain)
        grain.lba += base
        yield grain
    convert.join()
    if early.count:
        verify_early_grains(FinishedFile(fd), header, early.count, early.hexdigest())
    if os.pread(fd, fmt.SECTOR, 0) != first:
        raise VmdkFormatError("replaced", "qemu-img rewrote its header")


def _temp_dir(sink: object, tmpdir: str | None) -> str:
    """Beside the sink when it is a named file (same file system), else the temp directory."""
    if tmpdir is not None:
        return tmpdir
    name = getattr(sink, "name", None)
    if isinstance(name, str) and os.path.isabs(name) and os.path.isdir(os.path.dirname(name)):
        return os.path.dirname(name)
    return tempfile.gettempdir()


def _spill(source: ImageSource, where: str, cancel: CancelToken | None) -> str:
    """A sparse raw copy of an ImageSource qemu cannot open itself (e.g. MemorySource)."""
    fd, path = tempfile.mkstemp(prefix=".ovfkit-src-", suffix=".raw", dir=where)
    try:
        with os.fdopen(fd, "wb") as f:
            f.truncate(source.capacity)
            buf = bytearray(_COPY_CHUNK)
            for e in source.extents():
                if e.zero:
                    continue
                off, end = e.start, e.start + e.length
                while off < end:
                    check_cancel(cancel, "copying the disk for qemu-img")
                    n = source.readinto(off, memoryview(buf)[: min(len(buf), end - off)])
                    if n <= 0:
                        raise OvfkitIOError(f"the disk source ended at byte {off}")
                    f.seek(off)
                    f.write(memoryview(buf)[:n])
                    off += n
    except BaseException:
        os.unlink(path)
        raise
    return path


def write_vmdk_qemu(
    source: DiskSource | ImageSource,
    sink: Sink | BinaryIO,
    options: VmdkOptions = VmdkOptions(engine="qemu-img"),  # noqa: B008 - frozen
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    extra_hashes: Sequence[Updatable] = (),
    tmpdir: str | None = None,
    min_part: int = MIN_PART,
) -> VmdkResult:
    """Write ``source`` as a streamOptimized VMDK with ``qemu-img convert``, then copy it to
    ``sink`` in the native writer's layout (see the module docstring), hashing on the way.

    ``source`` is a model DiskSource (qemu-img opens it and its backing chain directly) or an
    open ImageSource (a raw or qemu-nbd source is opened by path again; any other is first
    copied to a sparse raw file). ``options.threads`` qemu-img processes (None: one per core)
    convert windows of the disk at once when it holds at least two ``min_part`` of allocated
    bytes (``ovfkit.vmdk.parts``). The temporary files go to ``tmpdir``, else beside the sink
    when it is a named file, else the system temp directory, and are always removed.
    Errors: those of ``ovfkit.qemu.img`` (missing file, image in use, no space ...),
    OvfkitIOError when the sink fails, OperationCancelledError when ``cancel`` is set (the sink
    then holds a partial file).
    """
    stage = f"disk {options.filename}"
    where = _temp_dir(sink, tmpdir)
    with contextlib.ExitStack() as stack:
        force_share = options.force_shared
        if isinstance(source, DiskSource):
            info = check_image(source, force_shared=options.force_shared)
            path, src_fmt, size = source.path, info.format, info.virtual_size
        elif isinstance(source, RawSource):
            # open_source already refused a locked raw image unless asked to share it; qemu-img
            # convert (unlike info) would refuse a locked one, so share as the caller decided.
            path, src_fmt, force_share = source.path, "raw", True
            size = source.capacity
        elif (nbd := _nbd_of(source)) is not None and nbd.server is not None:
            path, src_fmt = nbd.server.path, nbd.server.format
            force_share = nbd.server.force_share
            size = source.capacity
        else:
            path, src_fmt, size = _spill(source, where, cancel), "raw", source.capacity
            stack.callback(_unlink, path)
        capacity_sectors = -(-size // fmt.SECTOR)
        capacity = capacity_sectors * fmt.SECTOR
        jobs = options.threads or os.cpu_count() or 1
        data: list[tuple[int, int]] = []
        if jobs > 1 and size >= 2 * min_part:
            extents = img.map(path, src_fmt, force_share=force_share)
            data = [(e.start, e.length) for e in extents if e.data]
        parts = plan_parts(data, size, jobs, min_part)
        check_cancel(cancel, stage)

        temps: list[tuple[int, str]] = []  # every part's file, closed and removed at the end
        temps_lock = threading.Lock()

        def release() -> None:
            with temps_lock:
                for fd, tmp in temps:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                    _unlink(tmp)
                temps.clear()

        stack.callback(release)

        def start(k: int, on_done: Callable[[], None]) -> _Convert:
            part = parts[k]
            src: str | img.ImageWindow = path
            if len(parts) > 1:
                src = img.ImageWindow(path, src_fmt, part.start, part.length)
            try:
                fd, tmp = tempfile.mkstemp(prefix=".ovfkit-qemu-", suffix=".vmdk", dir=where)
            except OSError as e:
                raise OvfkitIOError(
                    f"cannot make a temporary file for qemu-img in {where}: {e}"
                ) from e
            with temps_lock:  # kept open: qemu-img writes the same inode (checked at the end)
                temps.append((fd, tmp))

            def run(on_progress: ProgressCallback, stop: CancelToken) -> None:
                img.convert(
                    src,
                    tmp,
                    src_fmt=src_fmt,
                    dst_fmt="vmdk",
                    options=qemu_convert_options(options),
                    progress=on_progress if progress is not None else None,
                    cancel=stop,
                    force_share=force_share,
                    # The output is a temporary file, read from the page cache and removed:
                    # qemu-img need not fsync it at the end (its default cache mode does, ~3-4 s
                    # for 1.3 GB, and on ext4 that commit also waited for the package being
                    # written beside it).
                    extra_args=("-t", "unsafe"),
                    total=part.size(size),
                )

            return _Convert(run, on_done)

        pool = _Pool(len(parts), jobs, start)
        shown = -1  # the qemu-img progress last reported

        def poll() -> None:
            nonlocal shown
            if cancel is not None and cancel.is_set():
                raise OperationCancelledError(f"{stage} was cancelled")
            if (err := pool.error()) is not None:
                raise err
            if progress is None:
                return
            done = 0
            for part, c in zip(parts, list(pool.converts), strict=False):
                p = c.progress
                done += part.size(size) if c.done.is_set() else p.done if p is not None else 0
            if done != shown:
                shown = done
                progress(Progress(f"{stage} (qemu-img convert)", min(done, size), size))

        def on_group(lba: int) -> None:
            poll()
            if progress is not None:
                progress(Progress(stage, min(lba * fmt.SECTOR, capacity), capacity))

        def grains() -> Iterator[QemuGrain]:
            for k, part in enumerate(parts):
                convert = pool.get(k)
                fd, tmp = temps[k]
                base = part.start // fmt.SECTOR
                sectors = -(-part.size(size) // fmt.SECTOR)
                yield from _part_grains(fd, convert, poll, base, sectors)
                if os.stat(tmp).st_ino != os.fstat(fd).st_ino:
                    raise VmdkFormatError("replaced", "qemu-img replaced its output file")
                os.ftruncate(fd, 0)  # done with it: free the space before the next part ends

        try:
            out = VmdkOutput(
                sink, options, capacity_sectors, extra_hashes=extra_hashes, threaded=False
            )
            try:
                count = _copy_repaired(grains(), out, on_group)
                digests = out.finish()
            finally:
                out.close()
        except BaseException as e:
            err = pool.error()
            pool.end()
            if err is not None and err is not e and not isinstance(err, OperationCancelledError):
                raise err from None  # qemu-img's failure is the cause of the copy's
            raise
    if progress is not None:
        progress(Progress(stage, capacity, capacity))
    return VmdkResult(
        size=out.size,
        capacity=capacity,
        populated_size=count * G,
        grains=count,
        digests=digests,
    )



def _nbd_of(source: object) -> NbdSource | None:
    if isinstance(source, MappedSource):
        return source.nbd
    return source if isinstance(source, NbdSource) else None


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
