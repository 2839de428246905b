"""A worker process of the native VMDK writer: it reads batches of grains straight from the
source and makes their grain markers in memory shared with the parent (ovfkit.vmdk.workers).

The parent starts it as ``python -I -S`` with ovfkit's packages entered as bare stubs, so it
imports only this module, ovfkit.vmdk.grains and a few standard modules (~10 MiB RSS; the NBD
client and ovfkit.errors too, once a batch needs NBD). It serves one or more *lanes*, a thread
each, each lane its own job on its own SOCK_SEQPACKET socket (the lanes share nothing but the
interpreter), one message per send, descriptors passed with SCM_RIGHTS:

    parent -> worker  JOB    isal level, slots and their sizes, NBD state;
                             descriptors: the shared memory, an NBD connection, the files
                      BATCH  seq, slot, grains [first, first + count), the pieces to read them
                             from (ovfkit.disk.source.Piece, offsets relative to the batch):
                             bytes no piece covers are zeros, a grain without data is skipped;
                             at most ``in_size / 64 KiB`` grains have data
                      END    the job is over: close its descriptors and wait for the next
    worker -> parent  READY  the job is taken (the parent waits for it from a pooled worker)
                      DONE   seq, bytes made, grains made, then each grain's sector offset in
                             the slot and a 1 where a grain was made (u32 arrays)
                      FAIL   seq, the ovfkit error class name and details

A slot is ``out_size`` bytes of grain markers followed by ``in_size`` bytes the parent fills
for pieces only it can read (PIECE_INPUT: ``at`` is where in that part). The worker ends when
its sockets end: the parent closed them, or died. The source is read with pread, never mapped: a
file truncated under the export gives a short read, reported as a FAIL, where a mapping would
raise SIGBUS.
"""

from __future__ import annotations

import _socket
import mmap
import os
import struct

from .grains import GRAIN_SECTORS, GRAIN_SIZE, SECTOR, GrainMaker, grain_marker_frame

TYPE_CHECKING = False  # not typing's: importing typing costs every worker 1.4 MiB of RSS
if TYPE_CHECKING:  # pragma: no cover - imported lazily: only batches with NBD pieces need it
    import _thread

    from ..disk.nbd_client import NbdClient

__all__ = [
    "BATCH",
    "DONE",
    "FAIL",
    "JOB",
    "MAX_MESSAGE",
    "MAX_PIECES",
    "PIECE",
    "PIECE_INPUT",
    "READY",
    "main",
]

# tag, isal level, has NBD, slots, out_size, in_size, stride, NBD export size, NBD max block
JOB = struct.Struct("<cBBHIIIQI")
# tag, seq, slot, grains spanned (<= 512), first grain, pieces
BATCH = struct.Struct("<cIHHQH")
PIECE = struct.Struct("<IIBBQ")  # offset in the batch, length, kind, file, at
END = b"E"
READY = b"R"
DONE = struct.Struct("<cIIH")  # tag, seq, bytes made, grains made; u32 offsets, u32 flags
FAIL = struct.Struct("<cI")  # tag, seq; "ClassName\0details" in UTF-8
MAX_MESSAGE = 64 * 1024
MAX_PIECES = 2048  # a batch with more is read by the parent (BATCH.size + 2048 * 18 < 64 KiB)
MAX_FDS = 64
# ovfkit.disk.source's piece kinds, and the writer's own: bytes the parent put in the slot
PIECE_ZERO, PIECE_FILE, PIECE_FILE_SHORT, PIECE_NBD, PIECE_INPUT = 0, 1, 2, 3, 4

_CHUNK_GRAINS = 4  # grains read at a time: 256 KiB stays in the core's cache while deflated
_CHUNK = _CHUNK_GRAINS * GRAIN_SIZE
_ZEROS = memoryview(bytes(_CHUNK))
_U32 = struct.Struct("<I")


class Failure(Exception):
    """A batch failed; ``kind`` names the ovfkit.errors class the parent raises."""

    def __init__(self, kind: str, details: str) -> None:
        super().__init__(details)
        self.kind = kind
        self.details = details


def describe(exc: BaseException) -> bytes:
    """FAIL's text for ``exc``: an ovfkit error keeps its class, an OSError an OvfkitIOError."""
    if isinstance(exc, Failure):
        kind, details = exc.kind, exc.details
    elif hasattr(exc, "code") and hasattr(exc, "details"):  # an ovfkit error (NBD client)
        kind, details = type(exc).__name__, str(exc.details)
    elif isinstance(exc, OSError):
        kind, details = "OvfkitIOError", f"the disk worker failed: {exc}"
    else:
        kind, details = "OperationFailedError", f"the disk worker failed: {exc!r}"
    return f"{kind}\0{details[:4000]}".encode("utf-8", "replace")


class _Job:
    """One write's state in the worker: shared slots, source descriptors, the grain maker."""

    def __init__(self, msg: memoryview, fds: list[int], makers: dict[int, GrainMaker]) -> None:
        _, level, has_nbd, slots, out_size, in_size, stride, nbd_size, nbd_block = JOB.unpack_from(
            msg
        )
        self.out_size = out_size
        self.in_size = in_size
        self.stride = stride
        self.mem = mmap.mmap(fds[0], slots * stride)
        _close(fds[0])  # the mapping keeps the memory
        self.view = memoryview(self.mem)
        self.nbd_fd = fds[1] if has_nbd else -1
        self.nbd_state = (nbd_size, nbd_block)
        self.nbd: NbdClient | None = None
        self.files = fds[1 + has_nbd :]
        if level not in makers:
            makers[level] = GrainMaker(level)
        self.maker = makers[level]
        self.scratch = memoryview(bytearray(_CHUNK))

    def batch(self, msg: memoryview) -> bytes:
        _, seq, slot, count, first, npieces = BATCH.unpack_from(msg)
        try:
            return self._batch(msg, seq, slot, count, first, npieces)
        except Exception as e:
            return FAIL.pack(b"F", seq) + describe(e)

    def _batch(self, msg: memoryview, seq: int, slot: int, count: int, first: int, n: int) -> bytes:
        pieces = [PIECE.unpack_from(msg, BATCH.size + k * PIECE.size) for k in range(n)]
        data = bytearray(count)  # 1 for a grain that a piece other than zeros touches
        for rel, length, kind, _, _ in pieces:
            if kind != PIECE_ZERO and length > 0:
                g0, g1 = rel // GRAIN_SIZE, (rel + length - 1) // GRAIN_SIZE + 1
                data[g0:g1] = b"\1" * (g1 - g0)
        base = slot * self.stride
        out = self.view[base : base + self.out_size]
        inp = self.view[base + self.out_size : base + self.out_size + self.in_size]
        offsets = bytearray(4 * count)
        made = bytearray(4 * count)
        pos = grains = 0
        stream = self.maker.stream
        for c0 in range(0, count, _CHUNK_GRAINS):
            c1 = min(count, c0 + _CHUNK_GRAINS)
            if data.find(1, c0, c1) < 0:
                continue
            view = self.scratch[: (c1 - c0) * GRAIN_SIZE]
            self._fill(view, c0 * GRAIN_SIZE, pieces, inp, first * GRAIN_SIZE)
            for g in range(c0, c1):
                if not data[g]:
                    continue
                o = (g - c0) * GRAIN_SIZE
                grain = stream(view[o : o + GRAIN_SIZE])
                if grain is None:
                    continue
                parts, size = grain
                head, pad = grain_marker_frame((first + g) * GRAIN_SECTORS, size)
                _U32.pack_into(offsets, 4 * g, pos // SECTOR)
                _U32.pack_into(made, 4 * g, 1)
                for part in (head, *parts, pad):
                    end = pos + len(part)
                    out[pos:end] = part
                    pos = end
                grains += 1
        return DONE.pack(b"D", seq, pos, grains) + offsets + made

    def _fill(
        self,
        view: memoryview,
        start: int,
        pieces: list[tuple[int, int, int, int, int]],
        inp: memoryview,
        disk_start: int,
    ) -> None:
        """Bytes [start, start + len(view)) of the batch: its pieces, zeros between them."""
        end = start + len(view)
        pos = start
        for rel, length, kind, file, at in pieces:
            lo, hi = max(rel, pos), min(rel + length, end)
            if rel >= end:
                break
            if lo >= hi:
                continue
            if lo > pos:
                view[pos - start : lo - start] = _ZEROS[: lo - pos]
            dst = view[lo - start : hi - start]
            at += lo - rel
            if kind == PIECE_ZERO:
                dst[:] = _ZEROS[: hi - lo]
            elif kind in (PIECE_FILE, PIECE_FILE_SHORT):
                _pread(self.files[file], at, dst, kind == PIECE_FILE_SHORT, disk_start + lo)
            elif kind == PIECE_NBD:
                self._nbd_read(at, dst)
            elif kind == PIECE_INPUT:
                dst[:] = inp[at : at + hi - lo]
            else:
                raise Failure("InternalError", f"unknown piece kind {kind}")
            pos = hi
        if pos < end:
            view[pos - start :] = _ZEROS[: end - pos]

    def _nbd_read(self, at: int, dst: memoryview) -> None:
        if self.nbd is None:
            if self.nbd_fd < 0:
                raise Failure("InternalError", "an NBD piece, but no NBD connection")
            import socket  # lazy: only NBD-backed sources need these

            from ..disk.nbd_client import NbdClient

            sock = socket.socket(fileno=self.nbd_fd)
            self.nbd_fd = -1  # the socket object owns it now
            self.nbd = NbdClient.adopt(sock, self.nbd_state)
        step = self.nbd.max_block
        self.nbd.read_many([(at + o, dst[o : o + step]) for o in range(0, len(dst), step)])

    def close(self) -> None:
        self.scratch.release()
        self.view.release()
        self.mem.close()
        if self.nbd is not None:
            self.nbd.close()
        elif self.nbd_fd >= 0:
            _close(self.nbd_fd)
        for fd in self.files:
            _close(fd)


def _close(fd: int) -> None:
    try:  # noqa: SIM105 - contextlib would be one more import in every worker
        os.close(fd)
    except OSError:
        pass


def _pread(fd: int, at: int, dst: memoryview, zeros_past_end: bool, disk_offset: int) -> None:
    got = 0
    while got < len(dst):
        try:
            n = os.preadv(fd, [dst[got:]], at + got)
        except OSError as e:
            raise Failure(
                "OvfkitIOError",
                f"reading the disk source at byte {disk_offset + got} failed: {e.strerror or e}",
            ) from None
        if n == 0:
            if zeros_past_end:
                dst[got:] = _ZEROS[: len(dst) - got]
                return
            raise Failure(
                "OvfkitIOError",
                f"the disk source ended at byte {disk_offset + got}, before its capacity: it was"
                " truncated or shrunk while it was exported",
            )
        got += n


def _recv(sock: _socket.socket, buf: bytearray) -> tuple[int, list[int]]:
    n, ancdata, flags, _ = sock.recvmsg_into([buf], _socket.CMSG_SPACE(4 * MAX_FDS))
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4])
    if flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
        raise Failure("InternalError", "a message to the disk worker was truncated")
    return n, fds


def main(*fds: int) -> None:
    """Serve jobs on each of the sockets ``fds`` (one lane each, a thread per lane after the
    first) until they all end. Lanes share the interpreter: deflate and pread release the
    GIL, so two lanes keep two cores busy for the RSS of one process (ovfkit.vmdk.workers)."""
    import signal

    # Ctrl-C and a graceful stop reach the whole process group: they are the parent's to
    # handle (it may let its exports finish); a worker ends with its sockets.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:  # a worker that crashes dumps no core: it would hold the slots and nothing of use
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, OSError, ValueError):  # pragma: no cover - Linux has it
        pass
    if len(fds) > 1:
        import _thread  # not threading: a lane needs no more, and every import costs RSS
        import sys

        # A lane back from deflate waits for the GIL at most this long (default 5 ms).
        sys.setswitchinterval(0.0005)
        ends = []
        for fd in fds[1:]:
            done = _thread.allocate_lock()
            done.acquire()
            ends.append(done)
            _thread.start_new_thread(_lane, (fd, done))
        _serve(fds[0])
        for done in ends:
            done.acquire()
    else:
        _serve(fds[0])


def _lane(fd: int, done: _thread.LockType) -> None:
    try:
        _serve(fd)
    finally:
        done.release()


def _serve(fd: int) -> None:
    """One lane: jobs and batches on the socket ``fd`` until it ends."""
    sock = _socket.socket(fileno=fd)
    buf = bytearray(MAX_MESSAGE)
    msg = memoryview(buf)
    makers: dict[int, GrainMaker] = {}
    job: _Job | None = None
    try:
        while True:
            n, fds = _recv(sock, buf)
            if n == 0:
                return  # the parent closed the socket (or died)
            tag = buf[0]
            if tag == ord("B") and job is not None:
                sock.send(job.batch(msg[:n]))
            elif tag == ord("J"):
                if job is not None:
                    job.close()
                job = _Job(msg[:n], fds, makers)
                sock.send(READY)
            elif tag == ord("E"):
                if job is not None:
                    job.close()
                job = None
            else:
                raise Failure("InternalError", f"unexpected message {bytes(msg[:1])!r}")
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent is gone
    finally:
        if job is not None:
            job.close()
        sock.close()
