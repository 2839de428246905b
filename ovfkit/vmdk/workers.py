"""The native VMDK writer's worker processes, from the parent's side (the worker's side and the
messages: ovfkit.vmdk.worker).

Started with subprocess (fork + exec of ``sys.executable -I -S``), never as a bare fork of the
parent: ovfkit runs inside threaded servers, where a forked copy of the parent could inherit a
lock another thread held. ``-I`` keeps the environment and the user's site out, ``-S`` the
site-packages: the worker's sys.path is exactly the directories of ovfkit and isal, and ovfkit's
packages are entered as bare stubs so their ``__init__`` (the whole public API) is not run.
Workers stay in the parent's process group (a SIGKILL of the group ends them too) but ignore
SIGINT and SIGTERM: a Ctrl-C or a graceful stop is the parent's to handle (it may let the
exports finish, or cancel them and end the workers). A worker ends when its sockets do, so
none outlives the parent, even one killed outright.

A worker process serves ``LANES_PER_WORKER`` lanes: a thread and a socket each, each lane a
worker of its own to the writer. All lanes of a process serve the same write, so a failure that
kills the process ends only that write.

Workers are started when a write first has a batch for them (an empty disk starts none) and
kept in a process-wide pool between writes for ``IDLE_SECONDS``; a worker whose write failed
is killed, not kept. Each write's lanes are a ``Crew``: per lane, a few slots of shared
memory (memfd_create, sealed against resizing: no name in /dev/shm, nothing left if all die)
that it fills with grain markers and the parent writes and hashes from.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable
from queue import Empty, SimpleQueue

from ..errors import OperationFailedError
from ._boot import boot_code
from .grains import GRAIN_SIZE, MAX_GRAIN_BYTES
from .worker import BATCH, END, JOB, PIECE, READY

__all__ = [
    "IDLE_SECONDS",
    "LANES_PER_WORKER",
    "Crew",
    "Member",
    "Worker",
    "idle_workers",
    "shutdown",
]

IDLE_SECONDS = 10.0
# Lanes (threads, one socket each) per worker process. A lane holds the GIL for ~11% of a
# grain's time (probes, framing; isal's deflate and pread release it), so two lanes of one
# process keep two cores busy, for the RSS of one interpreter (~13 MiB) instead of two:
# 16 lanes sum to ~170 MiB of RSS over every process, not ~255 (ARCHITECTURE.md).
LANES_PER_WORKER = 2
POLL = 0.05  # seconds a wait for a worker lasts before cancellation is looked at
_MAX_IDLE = 64
_GRACE = 5.0  # seconds a worker whose socket was closed gets to exit before it is killed
_TIMEVAL = struct.Struct("@ll")  # struct timeval


def _boot_code() -> str:
    return boot_code("worker:main(*map(int, sys.argv[1:]))", ("disk",))


class Worker:
    """One worker process and the parent's ends of its lanes' sockets (one each)."""

    def __init__(self, lanes: int = 1) -> None:
        pairs: list[tuple[socket.socket, socket.socket]] = []
        try:
            for _ in range(lanes):
                pairs.append(socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
            fds = [child.fileno() for _, child in pairs]
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _boot_code(), *map(str, fds)],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except OSError as e:
            for parent, _ in pairs:
                parent.close()
            raise OperationFailedError(
                f"cannot start a disk worker process ({sys.executable}): {e}"
            ) from e
        finally:
            for _, child in pairs:
                child.close()
        for parent, _ in pairs:
            # A wait for an answer ends after POLL seconds (to look at cancellation): the
            # kernel's receive timeout, one recv call, rather than Python's (a poll, a recv).
            parent.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(0, int(POLL * 1e6))
            )
        self.socks = [parent for parent, _ in pairs]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def end(self, *, kill: bool = False) -> None:
        """Close the sockets (the worker then exits) and reap the process; ``kill`` first."""
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.close()
        if kill:
            with contextlib.suppress(OSError):
                self.proc.kill()
        try:
            self.proc.wait(_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def how_it_ended(self) -> str:
        """How the process ended, once it has (waits for it briefly)."""
        try:
            code = self.proc.wait(_GRACE)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"was killed by {name}"
        return f"exited with status {code}"


MESSAGE_BYTES = 8192  # DONE is at most 11 + 8 x 512 bytes, FAIL 4 KB of details


class _Pool:
    """Idle workers of this process, most recently used last; a reaper thread ends those idle
    for ``IDLE_SECONDS``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._idle: list[tuple[float, Worker]] = []
        self._reaper: threading.Thread | None = None

    def take(self, lanes: int) -> tuple[Worker, bool]:
        """A worker, and whether it comes from the pool (it may have died since); a new one
        has ``lanes`` lanes, a pooled one those it was started with."""
        while True:
            with self._lock:
                if not self._idle:
                    break
                _, worker = self._idle.pop()
            if worker.alive():
                return worker, True
            worker.end()
        return Worker(lanes), False

    def give_back(self, worker: Worker) -> None:
        with self._lock:
            self._idle.append((time.monotonic(), worker))
            excess = self._idle[:-_MAX_IDLE]
            del self._idle[:-_MAX_IDLE]
            if self._reaper is None:
                self._reaper = threading.Thread(
                    target=self._reap, name="ovfkit-worker-reaper", daemon=True
                )
                self._reaper.start()
            self._wake.notify()
        for _, w in excess:
            w.end()

    def _reap(self) -> None:
        while True:
            with self._lock:
                if not self._idle:
                    self._reaper = None
                    return
                delay = self._idle[0][0] + IDLE_SECONDS - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
                _, worker = self._idle.pop(0)
            worker.end()

    def idle(self) -> list[int]:
        with self._lock:
            return [w.pid for _, w in self._idle]

    def shutdown(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._wake.notify()
        for _, worker in idle:
            worker.end()

    def after_fork_in_child(self) -> None:
        # The parent's workers are the parent's: forget them without ending them.
        for _, worker in self._idle:
            for sock in worker.socks:
                with contextlib.suppress(OSError):
                    sock.close()
        self.__init__()  # type: ignore[misc]  # fresh lock: another thread may have held it


_POOL = _Pool()
os.register_at_fork(after_in_child=_POOL.after_fork_in_child)


def idle_workers() -> list[int]:
    """Process ids of the idle workers kept for the next write."""
    return _POOL.idle()


def shutdown() -> None:
    """End the idle workers now (they end by themselves after ``IDLE_SECONDS``)."""
    _POOL.shutdown()


_PAGE = mmap.PAGESIZE


class Member:
    """A lane of a worker in a crew: its process and socket, its slots of shared memory and
    which are free."""

    def __init__(self, worker: Worker, lane: int, mem: mmap.mmap, slots: int, nbd: bool) -> None:
        self.worker = worker
        self.sock = worker.socks[lane]
        self.mem = mem
        self.view = memoryview(mem)
        self.free = list(range(slots - 1, -1, -1))
        self.outstanding = 0
        self.nbd = nbd
        self.release: list[Callable[[], None]] = []  # per slot, set by the crew
        self.ready = False  # its READY was read (a new worker's comes before its first DONE)

    def send(self, data: bytes, fds: list[int] | None = None) -> None:
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))])
        else:
            self.sock.send(data)

    def recv(self) -> bytes | None:
        """The next message; None if none came within ``POLL`` seconds (the caller looks at
        cancellation, then waits again); b"" once the worker is gone."""
        try:
            return self.sock.recv(MESSAGE_BYTES)
        except (BlockingIOError, TimeoutError):
            return None
        except ConnectionResetError:
            return b""


class Crew:
    """The workers of one write: up to ``size`` lanes, in processes of ``lanes`` lanes each,
    started (or taken from the pool) as batches need them. Each lane has ``slots`` slots of
    ``stride`` bytes: ``out_size`` for the grain markers of a batch of ``batch_grains`` grains,
    then ``in_size`` for bytes the parent reads for it (pieces it cannot hand over). ``files``
    and a spare connection of ``nbd`` each (an NbdSource, if any) are handed to every lane."""

    def __init__(
        self,
        size: int,
        *,
        lanes: int = 1,
        level: int,
        batch_grains: int,
        slots: int,
        files: list[int],
        nbd: object | None,
    ) -> None:
        self.size = size
        self.lanes = lanes
        self.level = level
        self.slots = slots
        self.out_size = batch_grains * MAX_GRAIN_BYTES
        self.in_size = batch_grains * GRAIN_SIZE
        self.stride = -(-(self.out_size + self.in_size) // _PAGE) * _PAGE
        self.files = files
        self.nbd = nbd
        self.members: list[Member] = []
        self._released: SimpleQueue[tuple[Member, int]] = SimpleQueue()

    def pick(self) -> tuple[Member, int] | None:
        """A worker with a free slot, the least busy first; a new worker rather than one that
        is busy; None when every slot is in use."""
        self.take_released()
        best: Member | None = None
        for m in self.members:
            if m.free and (best is None or m.outstanding < best.outstanding):
                best = m
        if (best is None or best.outstanding) and len(self.members) < self.size:
            best = self._start()
        if best is None:
            return None
        return best, best.free.pop()

    def _start(self) -> Member:
        """A process's lanes join the crew (at most those the crew still lacks); the first."""
        want = min(self.lanes, self.size - len(self.members))
        for _ in range(3):
            worker, pooled = _POOL.take(want)
            joined: list[Member] = []
            try:
                for lane in range(min(want, len(worker.socks))):
                    joined.append(self._join(worker, lane))
                if pooled:  # it may have been killed since it was pooled: it must answer
                    for member in joined:
                        self._ready(member)
            except OSError:
                worker.end(kill=True)
                for member in joined:
                    _unmap(member)
                continue
            self.members += joined
            return joined[0]
        raise OperationFailedError("disk worker processes die as soon as they are started")

    def _ready(self, member: Member) -> None:
        deadline = time.monotonic() + _GRACE
        while True:
            msg = member.recv()
            if msg == READY:
                member.ready = True
                return
            if msg is not None or time.monotonic() > deadline:
                raise ConnectionResetError("the pooled worker is gone")

    def _join(self, worker: Worker, lane: int) -> Member:
        size = self.slots * self.stride
        fd = os.memfd_create("ovfkit-vmdk-slots", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        spare = None
        try:
            os.ftruncate(fd, size)
            # Sealed: nobody can shrink it under a mapping (which would raise SIGBUS).
            fcntl.fcntl(
                fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            )
            mem = mmap.mmap(fd, size)
            take = getattr(self.nbd, "take_spare", None)
            spare = take() if take is not None else None
            nbd_state = spare.negotiated if spare is not None else (0, 0)
            fds = [fd, *([spare.fileno()] if spare is not None else []), *self.files]
            msg = JOB.pack(
                b"J",
                self.level,
                spare is not None,
                self.slots,
                self.out_size,
                self.in_size,
                self.stride,
                *nbd_state,
            )
            member = Member(worker, lane, mem, self.slots, spare is not None)
            try:
                member.send(msg, fds)
            except OSError:
                _unmap(member)
                raise
        finally:
            os.close(fd)
            if spare is not None:
                spare.forget()  # the worker's now (or gone with it)
        member.release = [functools.partial(self.release, member, k) for k in range(self.slots)]
        return member

    def send(
        self,
        member: Member,
        slot: int,
        seq: int,
        first: int,
        count: int,
        pieces: bytes,
    ) -> None:
        """Ask ``member`` for a batch; ``pieces``: PIECE records, packed."""
        npieces = len(pieces) // PIECE.size
        member.send(BATCH.pack(b"B", seq, slot, count, first, npieces) + pieces)
        member.outstanding += 1

    def input_view(self, member: Member, slot: int) -> memoryview:
        base = slot * self.stride + self.out_size
        return member.view[base : base + self.in_size]

    def output_view(self, member: Member, slot: int, nbytes: int) -> memoryview:
        base = slot * self.stride
        return member.view[base : base + nbytes]

    def release(self, member: Member, slot: int) -> None:
        """The slot's bytes are written and hashed (any thread): drop this process's pages of
        it (the worker fills it again; RSS counts each page once, in the worker) and free it."""
        with contextlib.suppress(ValueError, OSError):  # the map is closed after a failure
            member.mem.madvise(mmap.MADV_DONTNEED, slot * self.stride, self.out_size)
        self._released.put((member, slot))

    def take_released(self, timeout: float | None = 0) -> bool:
        """Mark released slots free; with a ``timeout``, wait that long for one first."""
        got = False
        if timeout:
            try:
                member, slot = self._released.get(timeout=timeout)
            except Empty:
                return False
            member.free.append(slot)
            got = True
        queue = self._released
        while not queue.empty():
            member, slot = queue.get_nowait()
            member.free.append(slot)
            got = True
        return got

    def close(self, *, ok: bool) -> None:
        """End the write: workers go back to the pool (``ok``) or are killed; shared memory
        is unmapped (a map something still views is left to the garbage collector)."""
        members, self.members = self.members, []
        crews: dict[int, tuple[Worker, list[Member]]] = {}
        for m in members:
            crews.setdefault(id(m.worker), (m.worker, []))[1].append(m)
        for worker, lanes in crews.values():
            if ok and worker.alive():
                try:
                    for m in lanes:
                        if not m.ready:  # a lane that got no batch: its READY is still unread
                            self._ready(m)
                        m.send(END)
                except OSError:
                    worker.end(kill=True)
                else:
                    _POOL.give_back(worker)
            else:
                worker.end(kill=True)
            for m in lanes:
                _unmap(m)


def _unmap(member: Member) -> None:
    """Unmap a lane's slots (a map something still views is left to the garbage collector)."""
    member.view.release()
    with contextlib.suppress(BufferError):
        member.mem.close()
