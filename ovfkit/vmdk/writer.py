"""Native streamOptimized VMDK writer: one pass, parallel deflate, digests on the way out.

Layout (VMware "Virtual Disk Format 5.0", "Stream-Optimized Compressed Sparse Extents", and the
importer rules in docs/interop-rules.md):

    header (gdOffset = GD_AT_END) | descriptor (sectors 1..20) | zero pad to sector 128
    grain markers, ascending LBA; after the last grain of each 512-grain group: GT marker + GT
    GD marker + GD | footer marker + footer (header copy, real gdOffset) | EOS marker

so the last three sectors are footer marker, footer, end-of-stream (qemu reads the footer at
end - 1536), and a grain table is written as soon as its group is complete: memory does not grow
with the disk. Only data extents are read; all-zero grains are skipped. Grains are compressed in
batches on a thread pool (isal and zlib release the GIL) and written back in order; the file
offsets of grains are assigned only when a batch is written, so the sink needs only ``write()``;
a sink that also has ``writev(pieces)`` gets each batch's markers and grains unjoined.
"""

from __future__ import annotations

import mmap
import os
import secrets
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import ModuleType
from typing import BinaryIO

from .._args import require, require_hooks
from ..disk.source import ImageSource
from ..errors import InvalidArgumentError, OperationFailedError, OvfkitIOError
from ..model import DiskSource
from ..progress import CancelToken, Progress, ProgressCallback, check_cancel
from . import format as fmt
from .hashing import DigestTee
from .options import VmdkOptions, VmdkResult
from .sink import Sink, write_all

_isal: ModuleType | None
try:  # isal: the same RFC 1950 streams as zlib, several times faster (issue 3 measurements)
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - isal is a dependency; stdlib zlib is the fallback
    _isal = None

__all__ = [
    "BATCH_GRAINS",
    "Sink",
    "VmdkOptions",
    "VmdkResult",
    "compressor",
    "grain_streams",
    "write_vmdk",
]

G = fmt.GRAIN_SIZE
BATCH_GRAINS = 64  # 4 MiB per task; divides GTES_PER_GT so a batch never spans two grain tables
_ZERO_GRAIN = bytes(G)
_MAX_SECTOR = 2**32 - 1  # grain table and directory entries are u32 sector offsets
_ZLIB_LEVEL = {0: 1, 1: 1, 2: 6, 3: 9}  # isal level -> nearest stdlib zlib level (fallback)


Compress = Callable[[memoryview], bytes]


def compressor(level: int) -> Compress:
    """A function compressing one grain into a zlib (RFC 1950) stream: isal at ``level`` (0-3),
    else stdlib zlib at the nearest level. qemu and VMware inflate with zlib's uncompress()."""
    if _isal is not None:
        isal = _isal

        def compress_isal(data: memoryview) -> bytes:
            out: bytes = isal.compress(data, level)
            return out

        return compress_isal

    zlevel = _ZLIB_LEVEL[level]

    def compress_zlib(data: memoryview) -> bytes:
        return zlib.compress(data, zlevel)

    return compress_zlib


def write_vmdk(
    source: DiskSource | ImageSource,
    sink: Sink | BinaryIO,
    options: VmdkOptions = VmdkOptions(),  # noqa: B008 - frozen, safe as a default
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> VmdkResult:
    """Write ``source`` (a model DiskSource, opened with ovfkit.disk.open_source, or an open
    ImageSource) as a streamOptimized VMDK to ``sink``, which needs only ``write()``.

    Raises InvalidArgumentError for bad options, OvfkitIOError when the source or sink fails,
    OperationCancelledError when ``cancel`` is set (the sink then holds a partial file: the
    caller removes it), OperationFailedError if the disk needs more than the format's 2 TiB of
    sector offsets.
    """
    if not isinstance(source, DiskSource) and not callable(getattr(source, "readinto", None)):
        raise InvalidArgumentError(
            f"source must be a DiskSource or an ImageSource, not {type(source).__name__}"
        )
    if not callable(getattr(sink, "write", None)):
        raise InvalidArgumentError(f"sink must have write(), not {type(sink).__name__}")
    require(options, VmdkOptions, "options")
    require_hooks(progress, cancel)
    if options.engine == "qemu-img":
        from .qemu_engine import write_vmdk_qemu  # lazy: the qemu-img subprocess edge

        return write_vmdk_qemu(source, sink, options, progress=progress, cancel=cancel)
    if isinstance(source, DiskSource):
        from ..disk import open_source  # lazy: qemu-img and qemu-nbd edges

        with open_source(source, force_shared=options.force_shared) as opened:
            return _write_native(opened, sink, options, progress, cancel)
    return _write_native(source, sink, options, progress, cancel)


def _grain_runs(source: ImageSource, capacity: int) -> Iterator[tuple[int, int]]:
    """Ranges [g0, g1) of grains touched by data extents, merged, cut into batches that stay
    inside one grain table (BATCH_GRAINS divides GTES_PER_GT)."""
    run: list[int] | None = None
    prev_end = 0
    for ext in source.extents():
        if ext.start < prev_end:  # grains must go out in ascending LBA order
            raise OperationFailedError(
                f"the disk source's extents are not ascending: {ext.start} after {prev_end}"
            )
        prev_end = ext.start + max(ext.length, 0)
        if ext.zero or ext.length <= 0:
            continue
        end = min(ext.start + ext.length, capacity)
        if end <= ext.start:
            continue
        g0, g1 = ext.start // G, -(-end // G)
        if run is not None and g0 <= run[1]:
            run[1] = max(run[1], g1)
            continue
        if run is not None:
            yield from _cut(run[0], run[1])
        run = [g0, g1]
    if run is not None:
        yield from _cut(run[0], run[1])


def _cut(g0: int, g1: int) -> Iterator[tuple[int, int]]:
    while g0 < g1:
        stop = min(g1, (g0 // BATCH_GRAINS + 1) * BATCH_GRAINS)
        yield g0, stop
        g0 = stop


Pieces = list[bytes | memoryview]


def grain_streams(
    view: memoryview, count: int, compress: Compress, zero: bytes
) -> Iterator[tuple[int, Pieces, int]]:
    """(index, zlib stream in pieces, its length) of each non-zero grain of the first ``count``
    grains of ``view``, in order; ``zero`` is ``compress`` of a zero grain.

    A grain is all zeros exactly when it compresses to ``zero`` (deflate is lossless and
    deterministic). Testing the bytes in Python instead would touch a mapped batch's pages while
    holding the GIL, taking its page faults there (py-spy: the busiest GIL holder); in the
    compressor they are taken without it, on all cores. A zero grain compresses in ~11 us.

    Incompressible data (media, archives, encrypted volumes) comes in runs: after a grain that
    did not shrink, the next is probed (``_looks_incompressible``) and, if it looks the same,
    stored without searching it for matches (``fmt.zlib_stored``): ~20 us instead of ~100 us of
    isal for 64 KiB of random bytes, and the same size (isal stores such data too). A stored
    grain's pieces include views of ``view``."""
    incompressible = False
    for k in range(count):
        o = k * G
        grain = view[o : o + G]
        if incompressible and _looks_incompressible(grain):
            yield k, fmt.zlib_stored(grain, _adler32(grain)), G + _STORED_OVERHEAD
            continue
        compressed = compress(grain)
        if compressed == zero:
            incompressible = False
            continue
        size = len(compressed)
        incompressible = _PROBE_LEVEL is not None and size >= G
        yield k, [compressed], size


def _compress_batch(
    buf: bytearray | memoryview, first: int, count: int, compress: Compress, zero: bytes
) -> tuple[Pieces, list[tuple[int, int]], int]:
    """Grain markers for the non-zero grains of ``buf`` (``grain_streams``) as pieces to be
    written in order; the (grain, sector offset in the batch's output) of each, and the output's
    length. Runs on a pool thread. The pieces are not joined here: a sink with ``writev`` takes
    them as they are (the join was a 1.3 GB copy holding the GIL, 0.7 s of the reference
    export, py-spy --gil); a stored grain's piece is a view of ``buf``."""
    parts: Pieces = []
    where: list[tuple[int, int]] = []
    rel = 0
    with memoryview(buf) as view:  # released before the caller unmaps ``buf``
        for k, data, size in grain_streams(view, count, compress, zero):
            head, pad = fmt.grain_marker_frame((first + k) * fmt.GRAIN_SECTORS, size)
            parts.append(head)
            parts += data
            parts.append(pad)
            where.append((first + k, rel))
            rel += (len(head) + size + len(pad)) // fmt.SECTOR
    return parts, where, rel * fmt.SECTOR


_STORED_OVERHEAD = 16  # zlib head 2 + two stored-block heads 2 x 5 + Adler-32 4, for 64 KiB
_PROBE = 1024
_PROBES = (0, G // 2 - _PROBE // 2, G - _PROBE)
# isal level 0 (static Huffman codes, no table building: ~4 us per KiB) turns 1 KiB of random
# bytes into 1.32-1.36 KiB, and text or code into far less than 1 KiB.
_RANDOM_LIKE = _PROBE * 5 // 4
_PROBE_LEVEL: int | None = 0 if _isal is not None else None


def _looks_incompressible(grain: memoryview) -> bool:
    """Three 1 KiB probes (start, middle, end) all deflate to more than they hold."""
    if _isal is None:  # pragma: no cover - isal is a dependency
        return False
    return all(len(_isal.compress(grain[o : o + _PROBE], 0)) >= _RANDOM_LIKE for o in _PROBES)


def _adler32(data: memoryview) -> int:
    return _isal.adler32(data) if _isal is not None else zlib.adler32(data)


_MAP_WINDOW = 32 << 20  # 8 batches; a multiple of mmap.ALLOCATIONGRANULARITY and of a batch


class _SourceMap:
    """A raw file's bytes, mapped ``_MAP_WINDOW`` bytes at a time: compressing straight from the
    page cache saves copying every byte into a buffer first (preadv's copy was ~14% of the
    writer's CPU time). A window is unmapped once its last batch is written, so RSS does not
    grow with the disk (mapped page-cache pages count in RSS). Windows rather than one map per
    batch: every munmap stops the other cores for a TLB shootdown, and per 4 MiB batch the
    mmap/munmap pair took ~2.3 ms of the feeding thread on the 2-core test VM (py-spy).

    ``view`` returns None (read instead) when the range is not wholly inside the file: touching
    a mapped page past the end of the file raises SIGBUS, so the size is checked just before
    mapping (a raw image truncated during an export, between that check and the read, is the
    one case left; an exported volume is locked against qemu writers, see
    ovfkit.disk.open_source). A block device's st_size is 0: it is always read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._current: mmap.mmap | None = None
        self._current_start = -1
        self._users: dict[int, int] = {}  # id(window) -> batches not yet written
        self._closing: list[mmap.mmap] = []  # unmapped as soon as no view of them is left

    def view(self, start: int, length: int) -> tuple[mmap.mmap, memoryview] | None:
        base = start - start % _MAP_WINDOW
        if self._current is None or self._current_start != base:
            self._retire()
            try:
                size = os.fstat(self.fd).st_size
                if size < start + length:
                    return None
                window = mmap.mmap(
                    self.fd, min(_MAP_WINDOW, size - base), prot=mmap.PROT_READ, offset=base
                )
            except (OSError, ValueError):
                return None
            self._current, self._current_start = window, base
            self._users[id(window)] = 0
        window = self._current
        if start + length > base + len(window):  # pragma: no cover - a batch is inside
            return None
        self._users[id(window)] += 1
        return window, memoryview(window)[start - base : start - base + length]

    def done(self, window: mmap.mmap, view: memoryview) -> None:
        """A batch of ``window`` is written: drop its view, unmap a window nobody uses."""
        view.release()
        self._users[id(window)] -= 1
        if window is not self._current and not self._users[id(window)]:
            del self._users[id(window)]
            self._unmap(window)
        self._reap()

    def _retire(self) -> None:
        window, self._current = self._current, None
        if window is not None and not self._users[id(window)]:
            del self._users[id(window)]
            self._unmap(window)

    def _unmap(self, window: mmap.mmap) -> None:
        self._closing.append(window)
        self._reap()

    def _reap(self) -> None:
        """Unmap the windows nothing holds a view of any more: stored grains written through
        ``writev`` are views that the digest threads may still be reading."""
        still: list[mmap.mmap] = []
        for window in self._closing:
            try:
                window.close()
            except BufferError:
                still.append(window)
        self._closing = still

    def close(self, windows: Iterable[mmap.mmap] = ()) -> None:
        """Unmap the current window and ``windows`` (those of batches not written, their views
        released). A window something still holds a view of (a digest thread, a failed batch's
        traceback) stays listed for the next call, else for the garbage collector."""
        if self._current is not None:
            self._closing.append(self._current)
            self._current = None
        self._closing += [w for w in windows if w not in self._closing]
        self._reap()
        self._users.clear()


class _Out:
    """The sink with its offset, digests and the 2 TiB check."""

    def __init__(self, sink: Sink | BinaryIO, tee: DigestTee) -> None:
        self.sink = sink
        self.tee = tee
        self.size = 0

    @property
    def sector(self) -> int:
        return self.size // fmt.SECTOR

    def write(self, data: bytes) -> None:
        if not data:
            return
        if (self.size + len(data)) // fmt.SECTOR > _MAX_SECTOR:
            raise OperationFailedError(
                "streamOptimized VMDK output would exceed 2 TiB (u32 sector offsets)"
            )
        self.tee.update(data)
        self.size += len(data)
        write_all(self.sink, data)

    def write_pieces(self, pieces: Pieces, nbytes: int) -> None:
        """``pieces`` (``nbytes`` in all) in order: gathered by the sink's ``writev`` where it
        has one (the kernel copies them without the GIL), else joined and written."""
        if (self.size + nbytes) // fmt.SECTOR > _MAX_SECTOR:
            raise OperationFailedError(
                "streamOptimized VMDK output would exceed 2 TiB (u32 sector offsets)"
            )
        writev = getattr(self.sink, "writev", None)
        if writev is None:
            self.write(b"".join(pieces))
            return
        self.tee.update_many(pieces)
        self.size += nbytes
        try:
            writev(pieces)
        except OSError as e:
            raise OvfkitIOError(f"writing the VMDK failed: {e}") from e


def _write_native(
    source: ImageSource,
    sink: Sink | BinaryIO,
    options: VmdkOptions,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> VmdkResult:
    stage = f"disk {options.filename}"
    capacity_sectors = fmt.sectors_for(source.capacity)
    capacity = source.capacity
    long_content_id = options.long_content_id or secrets.token_hex(16)
    disk_uuid = options.uuid if options.uuid is not None else secrets.token_bytes(16)
    descriptor = fmt.encode_descriptor(
        capacity_sectors,
        options.filename,
        adapter_type=options.adapter_type,
        hw_version=options.hw_version,
        long_content_id=long_content_id,
        uuid=disk_uuid,
    )
    threads = options.threads or os.cpu_count() or 1
    compress = compressor(options.compress_level)
    zero = compress(memoryview(_ZERO_GRAIN))
    tables = fmt.TableBuilder(capacity_sectors)
    grains = 0

    with (
        DigestTee(options.digests) as tee,
        ThreadPoolExecutor(threads, thread_name_prefix="ovfkit-deflate") as pool,
    ):
        out = _Out(sink, tee)
        out.write(fmt.encode_header(fmt.stream_optimized_header(capacity_sectors)))
        out.write(descriptor)
        out.write(bytes((fmt.OVERHEAD_SECTORS - out.sector) * fmt.SECTOR))

        def emit(
            first: int, done: int, pieces: Pieces, nbytes: int, where: list[tuple[int, int]]
        ) -> None:
            nonlocal grains
            out.write(tables.enter(first, out.sector))  # batches never cross a grain table
            base = out.sector
            out.write_pieces(pieces, nbytes)
            for g, rel in where:
                tables.place(g, base + rel)
            grains += len(where)
            if progress is not None:
                progress(Progress(stage, min(done, capacity), capacity))

        Batch = bytearray | memoryview
        Job = tuple[
            int, int, Batch, mmap.mmap | None, Future[tuple[Pieces, list[tuple[int, int]], int]]
        ]
        pending: deque[Job] = deque()
        limit = 2 * threads + 1  # batches in flight: bounded memory (about 8 MiB each)
        # Read buffers are recycled: fresh 4 MiB buffers cost a page fault per 4 KiB.
        free: list[bytearray] = []
        # A raw file is mapped rather than read (see _SourceMap).
        raw_fd = _raw_fd(source)
        mapped = _SourceMap(raw_fd) if raw_fd is not None else None

        def finish(job: Job) -> None:
            first, done, buf, window, fut = job
            pieces, where, nbytes = fut.result()
            if isinstance(buf, bytearray):
                # Stored grains are views of ``buf``, which is read into again: copy them out.
                pieces = [b"".join(pieces)]
            emit(first, done, pieces, nbytes, where)
            del pieces  # hold no view of the window it may unmap below
            if isinstance(buf, bytearray):
                free.append(buf)
            elif mapped is not None and window is not None:
                mapped.done(window, buf)

        try:
            for g0, g1 in _grain_runs(source, capacity):
                check_cancel(cancel, stage)
                start = g0 * G
                want = min(g1 * G, capacity) - start
                batch: Batch | None = None
                window: mmap.mmap | None = None
                if mapped is not None and want == (g1 - g0) * G:
                    got = mapped.view(start, want)
                    if got is not None:
                        window, batch = got
                if batch is None:
                    buf = free.pop() if free else bytearray(BATCH_GRAINS * G)
                    view = memoryview(buf)
                    _read(source, start, view[:want])
                    if want < (g1 - g0) * G:  # the disk ends inside the last grain: zero it
                        view[want : (g1 - g0) * G] = bytes((g1 - g0) * G - want)
                    del view
                    batch = buf
                fut = pool.submit(_compress_batch, batch, g0, g1 - g0, compress, zero)
                pending.append((g0, g1 * G, batch, window, fut))
                while len(pending) > limit:
                    finish(pending.popleft())
            while pending:
                check_cancel(cancel, stage)
                finish(pending.popleft())
        except BaseException:
            for job in pending:
                job[4].cancel()
            raise
        finally:
            if mapped is not None:
                # After a failure: let running batches end before their windows are unmapped.
                wait([job[4] for job in pending])
                for job in pending:
                    if isinstance(job[2], memoryview):
                        job[2].release()
                mapped.close(job[3] for job in pending if job[3] is not None)
            if raw_fd is not None:
                os.close(raw_fd)
        out.write(tables.finish(out.sector))
        digests = tee.hexdigests()
        if mapped is not None:
            mapped.close()  # the digests no longer hold views of the last windows
    try:
        flush = getattr(sink, "flush", None)
        if flush is not None:
            flush()
    except OSError as e:
        raise OvfkitIOError(f"writing the VMDK failed: {e}") from e
    if progress is not None:
        progress(Progress(stage, capacity, capacity))
    return VmdkResult(
        size=out.size,
        capacity=capacity_sectors * fmt.SECTOR,
        populated_size=grains * G,
        grains=grains,
        digests=digests,
    )


def _raw_fd(source: ImageSource) -> int | None:
    """A descriptor of the file under a raw source, to map it; None for any other source."""
    from ..disk.raw import RawSource  # lazy: the writer itself needs no disk edge

    if type(source) is not RawSource:
        return None
    try:
        return os.open(source.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # read through the source as usual


def _read(source: ImageSource, offset: int, view: memoryview) -> None:
    """Fill ``view`` from the source; the disk is zero past a short read's end (never past
    capacity, which the caller already clipped)."""
    try:
        while view:
            n = source.readinto(offset, view)
            if n <= 0:
                raise OvfkitIOError(f"the disk source ended at byte {offset}, before its capacity")
            view = view[n:]
            offset += n
    except OSError as e:
        raise OvfkitIOError(f"reading the disk source at byte {offset} failed: {e}") from e
