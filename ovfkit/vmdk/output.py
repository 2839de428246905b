"""The streamOptimized layout both engines write, and the output it goes to.

Layout (VMware "Virtual Disk Format 5.0", "Stream-Optimized Compressed Sparse Extents", and the
importer rules in docs/interop-rules.md):

    header (gdOffset = GD_AT_END) | descriptor (sectors 1..20) | zero pad to sector 128
    grain markers, ascending LBA; after the last grain of each 512-grain group: GT marker + GT
    GD marker + GD | footer marker + footer (header copy, real gdOffset) | EOS marker

so the last three sectors are footer marker, footer, end-of-stream (qemu reads the footer at
end - 1536), and a grain table is written as soon as its group is complete: memory does not grow
with the disk. The engines differ only in how grains are made: the native writer hands over
batches of grain markers its workers made (``put_batch``), the qemu-img engine one grain at a
time as qemu-img wrote it (``put_grain``).

The output keeps the offset (sectors, for the tables), the 2 TiB limit of u32 sector offsets,
and digests of every byte written (``VmdkOptions.digests``, plus the caller's ``extra_hashes``).
With ``threaded`` a writer thread calls the sink and one thread per digest hashes, so the
caller's thread (the native writer's coordinating thread) neither copies nor hashes: the sink
is called from that one writer thread, in order, never from two threads at once. Pieces handed
to ``sink.writev`` may be views of shared memory that is reused: they are valid until
``writev`` returns (write them or copy them before returning); ``release`` callbacks run once
the sink and every digest are done with a batch.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Sequence
from queue import SimpleQueue
from typing import BinaryIO

from ..errors import OperationFailedError, OvfkitIOError
from . import format as fmt
from .hashing import DigestTee, Updatable
from .options import VmdkOptions
from .sink import Sink, write_all

__all__ = ["VmdkOutput"]

_MAX_SECTOR = 2**32 - 1  # grain table and directory entries are u32 sector offsets
_GATHER = 4 * 1024 * 1024  # small pieces (one grain each) are joined until this many bytes

Piece = bytes | memoryview
Release = Callable[[], None]


class VmdkOutput:
    """A streamOptimized VMDK of ``capacity_sectors`` going to ``sink``: the header, descriptor
    and padding are queued at once, then grains, then ``finish``. Call ``close`` in any case
    (after ``finish`` or on failure): it stops the threads."""

    def __init__(
        self,
        sink: Sink | BinaryIO,
        options: VmdkOptions,
        capacity_sectors: int,
        *,
        extra_hashes: Sequence[Updatable] = (),
        threaded: bool = True,
    ) -> None:
        self.sink = sink
        self.tables = fmt.TableBuilder(capacity_sectors)
        self.size = 0  # bytes handed over (written, or queued for the writer thread)
        self.grains = 0
        self._small: list[Piece] = []
        self._small_bytes = 0
        self._tee = DigestTee(options.digests, extra=extra_hashes, threaded=threaded)
        self._writer = _Writer(sink, self._tee, threaded)
        descriptor = fmt.encode_descriptor(
            capacity_sectors,
            options.filename,
            adapter_type=options.adapter_type,
            hw_version=options.hw_version,
            long_content_id=options.long_content_id or secrets.token_hex(16),
            uuid=options.uuid if options.uuid is not None else secrets.token_bytes(16),
        )
        self._add(fmt.encode_header(fmt.stream_optimized_header(capacity_sectors)))
        self._add(descriptor)
        self._add(bytes((fmt.OVERHEAD_SECTORS - self.sector) * fmt.SECTOR))

    @property
    def sector(self) -> int:
        return self.size // fmt.SECTOR

    @property
    def error(self) -> BaseException | None:
        """The writer thread's failure, if any (raised again by the next call)."""
        return self._writer.error

    def put_batch(
        self,
        first: int,
        count: int,
        data: memoryview,
        offsets: bytes,
        made: bytes,
        grains: int,
        release: Release | None = None,
    ) -> None:
        """Grain markers of grains [first, first + count), all inside one grain table, as
        one buffer ``data``; ``offsets`` holds each grain's sector in it and ``made`` a 1 where
        a grain was made (u32 little endian each). ``release`` runs once ``data`` is written
        and hashed."""
        self._add(self.tables.enter(first, self.sector))
        self._room(len(data))
        base = self.sector
        # Every table entry at once: base * made adds base to each stored grain's offset;
        # no entry carries into the next, as the output stays below 2^32 sectors (_room).
        entries = int.from_bytes(offsets, "little") + base * int.from_bytes(made, "little")
        self.tables.place_many(first, entries.to_bytes(4 * count, "little"))
        self.grains += grains
        pieces, self._small, self._small_bytes = [*self._small, data], [], 0
        self.size += len(data)
        self._writer.put(pieces, release)

    def put_grain(self, index: int, pieces: Sequence[Piece], nbytes: int) -> None:
        """One grain marker, in ``pieces`` (``nbytes`` in all), gathered with its neighbours."""
        self._add(self.tables.enter(index, self.sector))
        self._room(nbytes)
        self.tables.place(index, self.sector)
        for piece in pieces:
            self._add(piece)
        self.grains += 1

    def finish(self) -> dict[str, str]:
        """Write the last table, directory, footer and end-of-stream marker, wait until every
        byte is written and hashed, flush the sink; the digests."""
        self._add(self.tables.finish(self.sector))
        self._flush_small()
        self._writer.close()
        digests = self._tee.hexdigests()
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            try:
                flush()
            except OSError as e:
                raise OvfkitIOError(f"writing the VMDK failed: {e}") from e
        return digests

    def close(self) -> None:
        """Stop the writer and digest threads (after a failure: what is queued is dropped)."""
        try:
            self._writer.stop()
        finally:
            self._tee.close()

    def _room(self, nbytes: int) -> None:
        if (self.size + nbytes) // fmt.SECTOR > _MAX_SECTOR:
            raise OperationFailedError(
                "streamOptimized VMDK output would exceed 2 TiB (u32 sector offsets)"
            )

    def _add(self, data: Piece) -> None:
        if not data:
            return
        self._small.append(data)
        self._small_bytes += len(data)
        self.size += len(data)
        if self._small_bytes >= _GATHER:
            self._flush_small()

    def _flush_small(self) -> None:
        if self._small:
            joined = self._small[0] if len(self._small) == 1 else b"".join(self._small)
            self._small, self._small_bytes = [], 0
            self._writer.put([joined], None)


class _Writer:
    """Calls the sink, then the digests, for each list of pieces in order: on a thread of its
    own (``threaded``), else at once in the caller's."""

    def __init__(self, sink: Sink | BinaryIO, tee: DigestTee, threaded: bool) -> None:
        self.sink = sink
        self.tee = tee
        self.error: BaseException | None = None
        self._writev = getattr(sink, "writev", None)
        self._queue: SimpleQueue[tuple[list[Piece], Release | None] | None] | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._queue = SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="ovfkit-vmdk-out", daemon=True)
            self._thread.start()

    def put(self, pieces: list[Piece], release: Release | None) -> None:
        if self.error is not None:
            if release is not None:
                release()
            raise self.error
        if self._queue is None:
            self._write(pieces, release)
        else:
            self._queue.put((pieces, release))

    def _run(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            pieces, release = item
            del item
            if self.error is not None:
                if release is not None:
                    release()
                continue
            try:
                self._write(pieces, release)
            except BaseException as e:  # handed to the caller's thread by put() / close()
                self.error = e
                if release is not None:
                    release()
            del pieces, release

    def _write(self, pieces: list[Piece], release: Release | None) -> None:
        try:
            if self._writev is not None:
                self._writev(pieces)
            else:
                for piece in pieces:
                    write_all(self.sink, piece)  # type: ignore[arg-type]
        except OSError as e:
            raise OvfkitIOError(f"writing the VMDK failed: {e}") from e
        self.tee.update_many(pieces, release)

    def close(self) -> None:
        """Wait until everything queued is written; raise the writer's failure."""
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self._queue is not None and self._thread is not None:
            self.error = self.error or _Stopped()
            self._queue.put(None)
            self._thread.join()
            self._thread = None


class _Stopped(Exception):
    """The output was closed before it was finished."""
