"""Native streamOptimized VMDK writer: worker processes make the grains, one coordinating thread
puts them in order, a writer thread and digest threads take them out.

- The coordinating thread (the caller's) walks the source's data extents, cuts them into batches
  of grains that stay inside one grain table, and sends each batch to a worker process together
  with where to read it (``ovfkit.disk.source.Piece``: offsets in a raw file, or in the qcow2
  layers ``qemu-img map`` places, and a spare qemu-nbd connection for the rest). Per batch it does
  a fixed amount of Python work, whatever the number of grains: a message out, a message in, the
  batch's grain table entries placed at once (``VmdkOutput.put_batch``). It talks to *lanes*:
  a worker process serves ``LANES_PER_WORKER`` lanes, a thread and a socket each.
- Each lane of a worker (``ovfkit.vmdk.worker``) reads its batch with pread, deflates it
  (``ovfkit.vmdk.grains``: zero grains dropped, incompressible grains stored), frames the grain
  markers into a slot of memory shared with the parent and answers with their offsets in it.
- The coordinating thread takes the answers in disk order and hands each slot to the output
  (``ovfkit.vmdk.output``, the layout both engines share), whose writer thread calls the sink (one
  ``writev`` of the slot) and whose digest threads hash it; the slot goes back to its worker once
  both are done, so memory is bounded by the slots: a few MiB per lane, whatever the disk size.

A worker that dies (a crash, SIGKILL, SIGBUS) or fails to read ends the write with an ovfkit error
(SYS.1016 for the source's I/O); the parent never maps the source, so a source truncated during
the export cannot take the process down. Why processes and not threads: ARCHITECTURE.md.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from .. import errors
from .._args import require, require_hooks
from ..disk.source import PIECE_NBD, ImageSource
from ..errors import InvalidArgumentError, OperationFailedError, OvfkitIOError
from ..model import DiskSource
from ..progress import CancelToken, Progress, ProgressCallback, check_cancel
from . import format as fmt
from .format import GTES_PER_GT
from .grains import GRAIN_SIZE
from .hashing import Updatable
from .options import VmdkOptions, VmdkResult
from .output import VmdkOutput
from .sink import Sink
from .worker import DONE, MAX_PIECES, PIECE, PIECE_INPUT, READY
from .workers import LANES_PER_WORKER, Crew, Member

__all__ = ["Sink", "VmdkOptions", "VmdkResult", "batch_grains", "write_vmdk"]

G = GRAIN_SIZE


def write_vmdk(
    source: DiskSource | ImageSource,
    sink: Sink | BinaryIO,
    options: VmdkOptions = VmdkOptions(),  # noqa: B008 - frozen, safe as a default
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    extra_hashes: Sequence[Updatable] = (),
) -> VmdkResult:
    """Write ``source`` (a model DiskSource, opened with ovfkit.disk.open_source, or an open
    ImageSource) as a streamOptimized VMDK to ``sink``, which needs only ``write()`` (an
    optional ``writev(pieces)`` is used when present; see ovfkit.vmdk.sink for both, called
    from one writer thread). ``extra_hashes``: running hash objects (anything with
    ``update``) fed every byte of the VMDK too, in order, in the digest threads.

    Raises InvalidArgumentError for bad arguments or options, OvfkitIOError when the source or
    sink fails, OperationCancelledError when ``cancel`` is set (the sink then holds a partial
    file: the caller removes it), OperationFailedError if the disk needs more than the format's
    2 TiB of sector offsets or a worker process fails.
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

        return write_vmdk_qemu(
            source, sink, options, progress=progress, cancel=cancel, extra_hashes=extra_hashes
        )
    workers = options.threads or default_lanes()
    if isinstance(source, DiskSource):
        from ..disk import open_source  # lazy: qemu-img and qemu-nbd edges

        with open_source(
            source, force_shared=options.force_shared, nbd_spares=workers
        ) as opened:
            return _write_native(opened, sink, options, workers, progress, cancel, extra_hashes)
    return _write_native(source, sink, options, workers, progress, cancel, extra_hashes)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - Linux has it
        return os.cpu_count() or 1


MAX_DEFAULT_LANES = 32


def default_lanes() -> int:
    """Lanes (compressing threads, LANES_PER_WORKER to a worker process) when the caller names
    none: one per core, and two more, so that a core stays busy while a lane waits for a slot
    that the parent's writer or digest thread has not freed yet (2 cores: 4 lanes made an
    export 5-7% faster than 2, benchmarks/README.md "Lanes"). At most MAX_DEFAULT_LANES: one
    write is bounded well before that by its serial threads (the output's page-cache copy and
    digests, ~0.5-0.7 CPU-s per GB of data against ~1.8 for the lanes' work, ARCHITECTURE.md),
    while every lane costs memory and an NBD connection, per export, on hosts of 64+ cores."""
    return min(_cores() + 2, MAX_DEFAULT_LANES)


def batch_grains(workers: int) -> int:
    """Grains per batch for ``workers`` workers: 64 (4 MiB of disk) up to 8 workers, 32 up to
    12, 16 beyond, so that the slots all workers fill stay within the memory budget (peak RSS
    summed over the processes <= 256 MiB with 16 workers, ARCHITECTURE.md): fewer, larger
    batches cost the coordinating thread less. Each size divides a grain table's 512 grains,
    so no batch spans two tables; the output is the same for any (grains.py)."""
    return 64 if workers <= 8 else 32 if workers <= 12 else 16


def _slots(workers: int) -> int:
    """Slots per worker: one it fills while the others wait to be written in disk order."""
    return 3 if workers <= 4 else 2


Batch = tuple[int, int, list[tuple[int, int]]]


def _batches(source: ImageSource, capacity: int, batch: int) -> Iterator[Batch]:
    """(first grain, grains spanned, data byte ranges) of each batch: a span of grains inside
    one grain table in which the source's data extents touch at most ``batch`` grains. One
    message per batch whatever the number of extents in it; holes between them cost nothing."""
    first = end = touched = 0
    ranges: list[tuple[int, int]] = []
    prev_end = 0
    for ext in source.extents():
        if ext.start < prev_end:  # grains must go out in ascending LBA order
            raise OperationFailedError(
                f"the disk source's extents are not ascending: {ext.start} after {prev_end}"
            )
        prev_end = ext.start + max(ext.length, 0)
        if ext.zero or ext.length <= 0:
            continue
        start, stop = ext.start, min(ext.start + ext.length, capacity)
        while start < stop:
            g = start // G
            if touched and (
                g // GTES_PER_GT != first // GTES_PER_GT or (touched >= batch and g >= end)
            ):
                yield first, end - first, ranges
                touched, ranges = 0, []
            if not touched:
                first = end = g
            new = max(g, end)  # the first grain of this range not touched yet
            limit = min(new + batch - touched, (first // GTES_PER_GT + 1) * GTES_PER_GT)
            cut = min(stop, limit * G)
            grains_end = -(-cut // G)
            touched += max(0, grains_end - new)
            end = max(end, grains_end)
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], cut)
            else:
                ranges.append((start, cut))
            start = cut
    if touched:
        yield first, end - first, ranges


def _write_native(
    source: ImageSource,
    sink: Sink | BinaryIO,
    options: VmdkOptions,
    workers: int,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    extra_hashes: Sequence[Updatable],
) -> VmdkResult:
    stage = f"disk {options.filename}"
    capacity = source.capacity
    capacity_sectors = fmt.sectors_for(capacity)
    grains = batch_grains(workers)
    direct = callable(getattr(source, "direct_pieces", None))
    crew = Crew(
        workers,
        lanes=LANES_PER_WORKER,
        level=options.compress_level,
        batch_grains=grains,
        slots=_slots(workers),
        files=list(source.direct_files()) if direct else [],  # type: ignore[attr-defined]
        nbd=source if hasattr(source, "take_spare") else getattr(source, "nbd", None),
    )
    out = VmdkOutput(sink, options, capacity_sectors, extra_hashes=extra_hashes)
    ok = False
    try:
        pump = _Pump(source, direct, out, crew, stage, progress, cancel)
        pump.run(_batches(source, capacity, grains))
        digests = out.finish()
        ok = True
    finally:
        out.close()  # first: no thread may still read a slot when the crew unmaps them
        crew.close(ok=ok)
    if progress is not None:
        progress(Progress(stage, capacity, capacity))
    return VmdkResult(
        size=out.size,
        capacity=capacity_sectors * fmt.SECTOR,
        populated_size=out.grains * G,
        grains=out.grains,
        digests=digests,
    )


_POLL = 0.05  # seconds between looks at cancel and the writer thread while waiting for a slot
_PROGRESS_EVERY = 0.1


class _Pump:
    """The coordinating thread's loop: batches out to the crew, answers back in disk order."""

    def __init__(
        self,
        source: ImageSource,
        direct: bool,
        out: VmdkOutput,
        crew: Crew,
        stage: str,
        progress: ProgressCallback | None,
        cancel: CancelToken | None,
    ) -> None:
        self.source = source
        self.direct = direct
        self.out = out
        self.crew = crew
        self.stage = stage
        self.progress = progress
        self.cancel = cancel
        self.capacity = source.capacity
        # seq, first grain, count, the worker, its slot
        self.inflight: deque[tuple[int, int, int, Member, int]] = deque()
        self.seq = 0
        self._shown = 0.0

    def run(self, batches: Iterator[Batch]) -> None:
        for first, count, ranges in batches:
            check_cancel(self.cancel, self.stage)
            got = self.crew.pick()
            while got is None:  # every slot in use: take the oldest answer, or wait for a slot
                if self.inflight:
                    self._collect()
                else:
                    self._wait_for_slot()
                got = self.crew.pick()
            member, slot = got
            pieces = self._pieces(member, slot, first * G, ranges)
            self.seq = (self.seq + 1) & 0xFFFFFFFF
            try:
                self.crew.send(member, slot, self.seq, first, count, pieces)
            except OSError:  # its socket is closed: the worker died
                raise _died(member, first, count) from None
            self.inflight.append((self.seq, first, count, member, slot))
        while self.inflight:
            check_cancel(self.cancel, self.stage)
            self._collect()

    def _pieces(
        self, member: Member, slot: int, start: int, ranges: list[tuple[int, int]]
    ) -> bytes:
        """The batch's PIECE records for its data ``ranges``; bytes the worker cannot read
        itself are read here into the slot's input part (a source with no direct reads, NBD
        without a spare connection, a batch in too many pieces)."""
        if self.direct:
            where = self.source.direct_pieces  # type: ignore[attr-defined]
            pieces = [p for lo, hi in ranges for p in where(lo, hi - lo)]
            if len(pieces) <= MAX_PIECES:
                packed = bytearray()
                used = 0
                for offset, length, kind, file, at in pieces:
                    if kind == PIECE_NBD and not member.nbd:
                        self._read_input(member, slot, offset, used, length)
                        kind, file, at = PIECE_INPUT, 0, used
                        used += length
                    packed += PIECE.pack(offset - start, length, kind, file, at)
                return bytes(packed)
        packed = bytearray()
        at = 0  # ranges are packed one after the other in the input part (<= batch grains)
        for lo, hi in ranges:
            self._read_input(member, slot, lo, at, hi - lo)
            packed += PIECE.pack(lo - start, hi - lo, PIECE_INPUT, 0, at)
            at += hi - lo
        return bytes(packed)

    def _read_input(self, member: Member, slot: int, offset: int, at: int, length: int) -> None:
        """Read the disk's bytes [offset, offset + length) to ``at`` in the slot's input."""
        view = self.crew.input_view(member, slot)
        try:
            _read(self.source, offset, view[at : at + length])
        finally:
            view.release()

    def _collect(self) -> None:
        """Wait for the oldest batch's answer and hand its grains to the output."""
        seq, first, count, member, slot = self.inflight[0]
        msg = self._answer(member)
        self.inflight.popleft()
        member.outstanding -= 1
        if not msg:
            raise _died(member, first, count)
        if msg[:1] != b"D":
            raise _failed(msg)
        _, got_seq, nbytes, grains = DONE.unpack_from(msg)
        offsets = msg[DONE.size : DONE.size + 4 * count]
        made = msg[DONE.size + 4 * count : DONE.size + 8 * count]
        if got_seq != seq or nbytes > self.crew.out_size or len(made) != 4 * count:
            raise errors.InternalError(f"disk worker {member.worker.pid} answered out of turn")
        if grains:
            self.out.put_batch(
                first,
                count,
                self.crew.output_view(member, slot, nbytes),
                offsets,
                made,
                grains,
                member.release[slot],
            )
        else:
            member.free.append(slot)
        if self.progress is not None:
            now = time.monotonic()
            if now - self._shown >= _PROGRESS_EVERY:
                self._shown = now
                done = min((first + count) * G, self.capacity)
                self.progress(Progress(self.stage, done, self.capacity))

    def _answer(self, member: Member) -> bytes:
        while True:
            msg = member.recv()
            if msg == READY and not member.ready:
                member.ready = True
                continue
            if msg is not None:
                return msg
            self._check()

    def _wait_for_slot(self) -> None:
        while not self.crew.take_released(_POLL):
            self._check()

    def _check(self) -> None:
        check_cancel(self.cancel, self.stage)
        if self.out.error is not None:
            raise self.out.error


def _died(member: Member, first: int, count: int) -> errors.OvfkitError:
    how = member.worker.how_it_ended()
    where = f"bytes {first * G}..{(first + count) * G} of the disk"
    if "SIGBUS" in how:  # a fault reading a mapping: the source's storage failed or shrank
        return OvfkitIOError(
            f"the disk worker reading {where} {how}: the source failed or was truncated"
            " while it was read"
        )
    return OperationFailedError(f"the disk worker reading {where} {how}")


def _failed(msg: bytes) -> errors.OvfkitError:
    kind, _, details = msg[_FAIL_TEXT:].decode("utf-8", "replace").partition("\0")
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.OvfkitError)):
        cls = OperationFailedError
    return cls(details)


_FAIL_TEXT = 5  # FAIL's tag and seq


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
