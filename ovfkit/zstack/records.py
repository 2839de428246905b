"""Image-package records of a data folder, plus the crash bookkeeping of one host.

The rows live in a :class:`~ovfkit.db.Database` (:mod:`ovfkit.db.packages` holds the queries):
by default ``packages.db`` in the data folder (SQLite, WAL, created 0600), or the shared database
of a many-host service. ``vm_uuid`` is UNIQUE: the database decides which of two concurrent
requests for the same VM wins (the loser gets :class:`DuplicateVmError`).

- Every export run by this host holds ``locks/<uuid>.lock`` with flock(2). The kernel drops the
  lock when the process dies, even by SIGKILL, so an ``Exporting`` row of this host (one with an
  owner pid) whose lock can be taken belongs to a dead process: :meth:`PackageRecords.stale_exports`
  finds them at start-up. Rows of cluster jobs carry no owner pid: their workers' leases cover
  them (:mod:`ovfkit.cluster.jobs`), never this host's locks.
- ``pending_cleanup`` is a durable to-do list of files to remove from a backup storage. A record
  is deleted and its files queued in one transaction; the queue entry goes once the files are
  gone. A storage that is unreachable at that moment is retried at the next start-up.

Timestamps are stored as Unix milliseconds and given back as aware datetimes in local time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from ..db import Database, open_database, sqlite_url
from ..db.packages import (
    DuplicateUuidError,
    DuplicateVmError,
    PackageRecord,
    PackageStore,
    already_exported_message,
    new_download_token,
)
from ..errors import OvfkitIOError
from .private import private_database, private_folder

__all__ = [
    "DB_NAME",
    "DuplicateUuidError",
    "DuplicateVmError",
    "ExportLock",
    "PackageRecord",
    "PackageRecords",
    "already_exported_message",
    "new_download_token",
]

DB_NAME = "packages.db"
LOCK_DIR = "locks"


class ExportLock:
    """flock(2) on ``locks/<uuid>.lock``: held by the process running an export."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def try_acquire(cls, path: Path) -> ExportLock | None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        return cls(path, fd)

    def release(self, *, unlink: bool = True) -> None:
        if self._fd is None:
            return
        if unlink:
            # Unlinked while still held: a recoverer that opens the path afterwards gets a new
            # inode and a free lock, and its conditional delete (state = Exporting) then does
            # nothing because the owner has finished its row first.
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None


class PackageRecords(PackageStore):
    """The record store of one data folder; safe to use from many threads and processes.

    ``database``: a shared database to keep the rows in instead of ``<data_dir>/packages.db``
    (the caller closes it)."""

    def __init__(
        self, data_dir: str | os.PathLike[str], *, database: Database | None = None
    ) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.lock_dir = self.data_dir / LOCK_DIR
        private_folder(self.data_dir)
        try:
            self.lock_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OvfkitIOError(f"cannot create {self.lock_dir}: {exc.strerror}") from None
        self._own = database is None
        if database is None:
            private_database(self.path)
            database = open_database(sqlite_url(self.path))
        super().__init__(database)

    def close(self) -> None:
        """Close the connections of the data folder's own database (not a shared one)."""
        if self._own:
            self.db.close()

    def lock_path(self, package_uuid: str) -> Path:
        return self.lock_dir / f"{package_uuid}.lock"

    def stale_exports(self) -> list[tuple[PackageRecord, ExportLock]]:
        """``Exporting`` rows of this host whose owner is gone, each with its lock now held by
        the caller."""
        out: list[tuple[PackageRecord, ExportLock]] = []
        for record in self.exporting(owned=True):
            lock = ExportLock.try_acquire(self.lock_path(record.inventory.uuid))
            if lock is not None:
                out.append((record, lock))
        return out
