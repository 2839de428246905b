"""Images qemu can read (qcow2 with its backing chain, compressed clusters, vmdk, ...), served by
``qemu-nbd`` on a private (abstract) unix socket and read with the small NBD client of
:mod:`.nbd_client`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import OperationTimeoutError, OvfkitError, ToolMissingError
from ..qemu.img import classify_failure, path_arg
from .nbd_client import (
    MAX_IN_FLIGHT,
    MAX_STATUS,
    READ_REQUEST,
    STATE_HOLE,
    STATE_ZERO,
    NbdClient,
    NbdError,
)
from .source import PIECE_NBD, Extent, Piece

__all__ = ["READ_REQUEST", "NbdClient", "NbdError", "NbdSource", "QemuNbd"]

QEMU_NBD = "qemu-nbd"

_START_TIMEOUT = 30.0
_STOP_GRACE = 5.0
_SETPRIV = shutil.which("setpriv")  # util-linux, essential on Debian; without it, no guard
# sh between setpriv and qemu-nbd: give up if the parent (argument 1) died before the death
# signal was armed; hand the listening socket (stdin) over as systemd's first descriptor, 3.
_ACTIVATE = (
    '[ "$PPID" = "$1" ] || exit 125; shift; '
    'export LISTEN_PID=$$ LISTEN_FDS=1; exec "$@" 3<&0 0</dev/null'
)


class QemuNbd:
    """A ``qemu-nbd --read-only`` child serving one image to ``clients`` connections.

    Nothing of it can outlive this process, whatever ends it:

    - systemd socket activation (qemu-nbd(8), ``LISTEN_FDS``): this process makes the listening
      socket, on an abstract unix address (nothing on disk to remove), and connects every client
      *before* qemu-nbd starts; qemu-nbd gets the socket as descriptor 3.
    - No ``--persistent``: qemu-nbd exits once its last negotiated client goes, so a parent
      killed outright after :meth:`connect` takes it down with its connections.
    - Before any client has negotiated, qemu-nbd would wait for one for ever: ``setpriv
      --pdeathsig KILL`` (util-linux) has the kernel kill it if the thread that started it ends
      (a thread ends before the export it serves), and the shell between them checks that its
      parent is still this process, closing the race before the death signal is armed.

    :meth:`stop` ends the child in every other case."""

    def __init__(
        self, path: str, fmt: str, *, force_share: bool = False, clients: int = 1
    ) -> None:
        self.path = path
        self.format = fmt
        self.force_share = force_share
        self.clients = clients
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
        self._proc: subprocess.Popen[bytes] | None = None
        self._waiting: list[socket.socket] = []
        try:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                address = b"\0ovfkit-nbd-" + secrets.token_hex(12).encode()
                listener.bind(address)
                listener.listen(clients)
                for _ in range(clients):  # queued in the backlog until qemu-nbd accepts
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self._waiting.append(sock)
                    sock.connect(address)
                self._proc = self._spawn(force_share, listener)
            finally:
                listener.close()  # qemu-nbd holds it now
        except BaseException:
            self.stop()
            raise

    def _command(self, force_share: bool) -> list[str]:
        cmd = [QEMU_NBD, "--read-only"]
        if self.clients > 1:  # several clients at once: the writer's worker processes
            cmd.append(f"--shared={self.clients}")
        if not force_share:
            return [*cmd, f"--format={self.format}", path_arg(self.path)]
        # qemu-nbd has no -U: the generic block option force-share=on (read-only only) does it.
        protocol = "host_device" if stat.S_ISBLK(os.stat(self.path).st_mode) else "file"
        opts = (
            f"driver={self.format},read-only=on,force-share=on,"
            f"file.driver={protocol},file.filename={self.path.replace(',', ',,')}"
        )
        return [*cmd, "--image-opts", opts]

    def _spawn(self, force_share: bool, listener: socket.socket) -> subprocess.Popen[bytes]:
        guard = [_SETPRIV, "--pdeathsig", "KILL"] if _SETPRIV else []
        shell = ["/bin/sh", "-c", _ACTIVATE, "sh", str(os.getpid())]
        argv = [*guard, *shell, *self._command(force_share)]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=listener.fileno(),  # descriptor 3 in qemu-nbd (_ACTIVATE)
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                env={**os.environ, "LC_ALL": "C"},
            )
        except FileNotFoundError as exc:
            raise ToolMissingError(f"cannot start {QEMU_NBD}: {exc}") from None
        return proc

    def connect(self, spares: int = 0) -> tuple[NbdClient, list[NbdClient]]:
        """Negotiate the connections made before qemu-nbd started: one client and ``spares``
        more (at most ``clients`` - 1; the writer hands them to its worker processes). A child
        that exits early is reported with its stderr mapped like qemu-img's (missing file,
        locked image, ...)."""
        assert self._proc is not None
        clients: list[NbdClient] = []
        try:
            while self._waiting and len(clients) < 1 + spares:
                sock = self._waiting.pop(0)
                try:
                    sock.settimeout(_START_TIMEOUT)
                    clients.append(NbdClient(sock))
                    sock.settimeout(None)
                except TimeoutError:
                    sock.close()
                    raise OperationTimeoutError(
                        f"qemu-nbd did not start serving {self.path} within"
                        f" {_START_TIMEOUT:.0f} s"
                    ) from None
                except (OSError, NbdError):
                    # qemu-nbd opens the image before it serves: a bad image shows up as a
                    # dropped connection, its stderr says why.
                    sock.close()
                    raise self._failure() from None
        except BaseException:
            for c in clients:
                c.close()
            raise
        if not clients:
            raise NbdError("no connection to qemu-nbd is left")
        return clients[0], clients[1:]

    def _failure(self) -> OvfkitError:
        assert self._proc is not None
        try:
            self._proc.wait(_STOP_GRACE)
        except subprocess.TimeoutExpired:
            return NbdError(f"qemu-nbd dropped the connection to {self.path} but did not exit")
        self._stderr.seek(0)
        stderr = self._stderr.read().decode("utf-8", "replace")
        if self._proc.returncode == 127 and not shutil.which(QEMU_NBD):
            return ToolMissingError(
                f"{QEMU_NBD} is not installed or not on PATH; install the Debian package"
                " qemu-utils"
            )
        return classify_failure("qemu-nbd", stderr, self._proc.returncode)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stop(self) -> None:
        for sock in self._waiting:
            sock.close()
        self._waiting = []
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._stderr.close()


@dataclass
class NbdSource:
    """An ImageSource over qemu-nbd: extents from block status (a hole or a zero-flagged range
    reads as zeros and is never read), data read in 1 MiB requests, several in flight.

    ``spares``: further connections to the same server, negotiated when it was opened, for
    the VMDK writer's worker processes to read through (``take_spare``); closed with the
    source if nobody took them."""

    client: NbdClient
    server: QemuNbd | None = None
    spares: list[NbdClient] = field(default_factory=list)

    @classmethod
    def open(
        cls, path: str, fmt: str, *, force_share: bool = False, spares: int = 0
    ) -> NbdSource:
        server = QemuNbd(path, fmt, force_share=force_share, clients=1 + spares)
        try:
            client, others = server.connect(spares)
            return cls(client, server, others)
        except BaseException:
            server.stop()
            raise

    def take_spare(self) -> NbdClient | None:
        """A spare connection, now the caller's to close; None when none is left."""
        return self.spares.pop() if self.spares else None

    def direct_files(self) -> list[int]:
        return []

    def direct_pieces(self, start: int, length: int) -> Iterator[Piece]:
        """Every byte through NBD (see ovfkit.disk.source.Piece)."""
        length = min(length, self.capacity - start)
        if length > 0:
            yield (start, length, PIECE_NBD, 0, start)

    @property
    def capacity(self) -> int:
        return self.client.export_size

    def extents(self) -> Iterator[Extent]:
        size = self.capacity
        offset = 0
        run_start, run_zero = 0, None
        while offset < size:
            before = offset
            for length, flags in self.client.block_status(offset, min(size - offset, MAX_STATUS)):
                length = min(length, size - offset)
                if length == 0:
                    continue
                zero = bool(flags & (STATE_ZERO | STATE_HOLE))
                if run_zero is not None and zero != run_zero:
                    yield Extent(run_start, offset - run_start, run_zero)
                    run_start = offset
                run_zero = zero
                offset += length
                if offset >= size:
                    break
            if offset == before:
                raise NbdError(f"NBD block status at {offset} made no progress")
        if run_zero is not None:
            yield Extent(run_start, offset - run_start, run_zero)

    def readinto(self, offset: int, buf: memoryview) -> int:
        end = min(len(buf), max(0, self.capacity - offset))
        step = min(READ_REQUEST, self.client.max_block)
        done = 0
        while done < end:
            batch: list[tuple[int, memoryview]] = []
            while done < end and len(batch) < MAX_IN_FLIGHT:
                n = min(step, end - done)
                batch.append((offset + done, buf[done : done + n]))
                done += n
            self.client.read_many(batch)
        return done

    def close(self) -> None:
        try:
            for spare in self.spares:
                spare.close()
            self.spares.clear()
            self.client.close()
        finally:
            if self.server is not None:
                self.server.stop()
