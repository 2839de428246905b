"""Images qemu can read (qcow2 with its backing chain, compressed clusters, vmdk, ...), served by
``qemu-nbd`` on a private unix socket and read with the small NBD client of :mod:`.nbd_client`.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
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


class QemuNbd:
    """A ``qemu-nbd --read-only`` child serving one image on a unix socket in a private temporary
    directory. :meth:`stop` always ends the child and removes the directory."""

    def __init__(
        self, path: str, fmt: str, *, force_share: bool = False, clients: int = 1
    ) -> None:
        self.path = path
        self.format = fmt
        self.force_share = force_share
        self.clients = clients
        self._dir = tempfile.mkdtemp(prefix="ovfkit-nbd-")
        self.socket_path = os.path.join(self._dir, "sock")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            self._proc = self._spawn(force_share)
        except BaseException:
            self.stop()
            raise

    def _command(self, force_share: bool) -> list[str]:
        # No --persistent: qemu-nbd then exits when its last client goes, so even a parent
        # killed with SIGKILL leaves no server behind (stop() ends it in every other case).
        cmd = [QEMU_NBD, "--read-only", f"--socket={self.socket_path}"]
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

    def _spawn(self, force_share: bool) -> subprocess.Popen[bytes]:
        try:
            proc = subprocess.Popen(
                self._command(force_share),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                env={**os.environ, "LC_ALL": "C"},
            )
        except FileNotFoundError as exc:
            raise ToolMissingError(
                f"{QEMU_NBD} is not installed or not on PATH ({exc.strerror}); install the "
                "Debian package qemu-utils"
            ) from None
        return proc

    def connect(self, spares: int = 0) -> tuple[NbdClient, list[NbdClient]]:
        """Wait for the server to listen, then connect; a child that exits early is reported
        with its stderr mapped like qemu-img's (missing file, locked image, ...). ``spares``
        more clients (at most ``clients`` - 1) are connected and negotiated at once, before
        the socket is removed: the writer hands them to its worker processes."""
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        delay = 0.002
        while True:
            if self._proc.poll() is not None:
                raise self._failure()
            if os.path.exists(self.socket_path):
                try:
                    client = NbdClient.connect_unix(self.socket_path)
                except (ConnectionRefusedError, FileNotFoundError):
                    pass
                except (OSError, NbdError):
                    # qemu-nbd listens before it opens the image: a bad image shows up as a
                    # dropped connection; its stderr says why.
                    try:
                        self._proc.wait(_STOP_GRACE)
                    except subprocess.TimeoutExpired:
                        raise
                    raise self._failure() from None
                else:
                    others: list[NbdClient] = []
                    try:
                        for _ in range(spares):
                            others.append(NbdClient.connect_unix(self.socket_path))
                    except BaseException:
                        for c in (client, *others):
                            c.close()
                        raise
                    # Every client is connected: the path is no longer needed, and without it
                    # nothing is left on disk even if this process is killed outright (qemu-nbd
                    # then exits as its last client goes, see _command).
                    shutil.rmtree(self._dir, ignore_errors=True)
                    return client, others
            if time.monotonic() > deadline:
                raise OperationTimeoutError(
                    f"qemu-nbd did not start serving {self.path} within {_START_TIMEOUT:.0f} s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _failure(self) -> OvfkitError:
        assert self._proc is not None
        self._stderr.seek(0)
        stderr = self._stderr.read().decode("utf-8", "replace")
        return classify_failure("qemu-nbd", stderr, self._proc.returncode)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)


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
