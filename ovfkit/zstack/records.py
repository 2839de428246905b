"""Image-package records (QueryImagePackage's table) in SQLite, plus crash bookkeeping.

- One connection per thread (sqlite3 objects must not be shared mid-transaction), WAL journal so
  readers never block the writer, ``busy_timeout`` so concurrent writers wait instead of failing.
- ``vm_uuid`` is UNIQUE: ZStack allows one package per VM, and the database — not a Python lock —
  decides which of two concurrent requests for the same VM wins (the loser gets
  :class:`DuplicateVmError`). Failed exports leave no record, so every row is a live package.
- Every running export holds ``locks/<uuid>.lock`` with flock(2). The kernel drops the lock when
  the process dies, even by SIGKILL, so an ``Exporting`` row whose lock can be taken belongs to
  a dead process: :meth:`PackageRecords.stale_exports` finds them at start-up.
- ``pending_cleanup`` is a durable to-do list of files to remove from a backup storage. A record
  is deleted and its files queued in one transaction; the queue entry goes once the files are
  gone. A storage that is unreachable at that moment is retried at the next start-up.

Timestamps are stored as Unix milliseconds (INTEGER, Java's precision, exact in round trips) and
given back as aware datetimes in local time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, OperationFailedError, OvfkitIOError
from .inventory import (
    QUERY_FIELDS,
    Condition,
    ImagePackageInventory,
    ImagePackageState,
    parse_zstack_time,
)
from .private import private_database, private_folder

__all__ = [
    "DB_NAME",
    "DuplicateUuidError",
    "DuplicateVmError",
    "ExportLock",
    "PackageRecord",
    "PackageRecords",
    "already_exported_message",
]

DB_NAME = "packages.db"
LOCK_DIR = "locks"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS image_packages (
    uuid                TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    description         TEXT,
    vm_uuid             TEXT NOT NULL UNIQUE,
    backup_storage_uuid TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('Exporting', 'Exported')),
    export_url          TEXT,
    md5_sum             TEXT,
    format              TEXT NOT NULL DEFAULT 'OVA',
    size                INTEGER,
    create_date         INTEGER NOT NULL,
    last_op_date        INTEGER NOT NULL,
    install_path        TEXT NOT NULL,
    owner_pid           INTEGER
);
CREATE TABLE IF NOT EXISTS pending_cleanup (
    backup_storage_uuid TEXT NOT NULL,
    install_path        TEXT NOT NULL,
    queued              REAL NOT NULL,
    PRIMARY KEY (backup_storage_uuid, install_path)
);
"""

_COLUMNS = (
    "uuid, name, description, vm_uuid, backup_storage_uuid, state, export_url, md5_sum, "
    "format, size, create_date, last_op_date, install_path"
)


def already_exported_message(vm_uuid: str, package_uuid: str) -> str:
    return (
        f"Vm[uuid: {vm_uuid}] is already exported as the ova package[uuid: {package_uuid}], "
        "please delete the package and try again."
    )


class DuplicateVmError(InvalidArgumentError):
    """Another record (live package or running export) already holds this VM (SYS.1007)."""


class DuplicateUuidError(InvalidArgumentError):
    """A record with this uuid already exists (SYS.1007)."""


@dataclass(frozen=True)
class PackageRecord:
    """A row: the inventory plus where the package lives on its backup storage."""

    inventory: ImagePackageInventory
    install_path: str


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone()


def _to_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _row_to_record(row: Sequence[Any]) -> PackageRecord:
    inv = ImagePackageInventory(
        uuid=row[0],
        name=row[1],
        description=row[2],
        vm_uuid=row[3],
        backup_storage_uuid=row[4],
        state=ImagePackageState(row[5]),
        export_url=row[6],
        md5_sum=row[7],
        format=row[8],
        size=row[9],
        create_date=_to_datetime(row[10]),
        last_op_date=_to_datetime(row[11]),
    )
    return PackageRecord(inv, row[12])


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


class PackageRecords:
    """The record store of one data folder; safe to use from many threads and processes."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.lock_dir = self.data_dir / LOCK_DIR
        private_folder(self.data_dir)
        try:
            self.lock_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OvfkitIOError(f"cannot create {self.lock_dir}: {exc.strerror}") from None
        private_database(self.path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        try:
            self._conn().executescript(_SCHEMA)  # idempotent (IF NOT EXISTS), commits itself
        except sqlite3.Error as exc:
            raise OvfkitIOError(f"cannot set up {self.path}: {exc}") from None

    # --- connections ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, timeout=30.0, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA busy_timeout=30000")
            except sqlite3.Error as exc:
                raise OvfkitIOError(f"cannot open {self.path}: {exc}") from None
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE: take the write lock up front, no upgrades)."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise OvfkitIOError(f"{self.path}: {exc}") from None
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close every connection this object opened (call when no thread uses it any more)."""
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    # --- export life cycle ---------------------------------------------------------------------

    def lock_path(self, package_uuid: str) -> Path:
        return self.lock_dir / f"{package_uuid}.lock"

    def create_exporting(
        self,
        inventory: ImagePackageInventory,
        install_path: str,
    ) -> None:
        """Insert the ``Exporting`` row. The caller holds the package's ExportLock already."""
        now = _now_ms()
        try:
            with self._tx() as db:
                # A new package replaces any queued removal of the same file name.
                db.execute(
                    "DELETE FROM pending_cleanup WHERE backup_storage_uuid=? AND install_path=?",
                    (inventory.backup_storage_uuid, install_path),
                )
                db.execute(
                    f"INSERT INTO image_packages ({_COLUMNS}, owner_pid) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        inventory.uuid, inventory.name, inventory.description, inventory.vm_uuid,
                        inventory.backup_storage_uuid, ImagePackageState.EXPORTING.value,
                        None, None, inventory.format, None, now, now, install_path, os.getpid(),
                    ),
                )
        except sqlite3.IntegrityError as exc:
            text = str(exc)
            if "vm_uuid" in text:
                holder = self.find_by_vm(inventory.vm_uuid)
                raise DuplicateVmError(
                    already_exported_message(
                        inventory.vm_uuid, holder.inventory.uuid if holder else "(being removed)"
                    )
                ) from None
            if "uuid" in text:
                raise DuplicateUuidError(
                    f"resourceUuid[{inventory.uuid}] is already used by another image package"
                ) from None
            raise

    def mark_exported(self, uuid: str, *, export_url: str, md5_sum: str, size: int) -> None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE image_packages SET state=?, export_url=?, md5_sum=?, size=?, "
                "last_op_date=?, owner_pid=NULL WHERE uuid=? AND state=?",
                (
                    ImagePackageState.EXPORTED.value, export_url, md5_sum, size, _now_ms(),
                    uuid, ImagePackageState.EXPORTING.value,
                ),
            )
            if cur.rowcount != 1:
                raise OperationFailedError(f"image package[uuid: {uuid}] vanished while exporting")

    def delete(self, uuid: str, *, only_exporting: bool = False) -> PackageRecord | None:
        """Delete a row and queue its files for removal, in one transaction; the deleted
        record, or None if there was none (or it was not Exporting, with ``only_exporting``)."""
        with self._tx() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM image_packages WHERE uuid=?", (uuid,)
            ).fetchone()
            if row is None:
                return None
            record = _row_to_record(row)
            if only_exporting and record.inventory.state is not ImagePackageState.EXPORTING:
                return None
            db.execute("DELETE FROM image_packages WHERE uuid=?", (uuid,))
            db.execute(
                "INSERT OR REPLACE INTO pending_cleanup VALUES (?,?,?)",
                (record.inventory.backup_storage_uuid, record.install_path, time.time()),
            )
        return record

    def cleanup_done(self, backup_storage_uuid: str, install_path: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM pending_cleanup WHERE backup_storage_uuid=? AND install_path=?",
                (backup_storage_uuid, install_path),
            )

    def pending_cleanup(self) -> list[tuple[str, str]]:
        rows = self._conn().execute(
            "SELECT backup_storage_uuid, install_path FROM pending_cleanup ORDER BY queued"
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def stale_exports(self) -> list[tuple[PackageRecord, ExportLock]]:
        """``Exporting`` rows whose owner is gone, each with its lock now held by the caller."""
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM image_packages WHERE state=?",
            (ImagePackageState.EXPORTING.value,),
        ).fetchall()
        out: list[tuple[PackageRecord, ExportLock]] = []
        for row in rows:
            record = _row_to_record(row)
            lock = ExportLock.try_acquire(self.lock_path(record.inventory.uuid))
            if lock is not None:
                out.append((record, lock))
        return out

    def update(
        self, uuid: str, *, name: str | None = None, description: str | None = None
    ) -> PackageRecord | None:
        with self._tx() as db:
            sets: list[str] = ["last_op_date=?"]
            args: list[object] = [_now_ms()]
            if name is not None:
                sets.append("name=?")
                args.append(name)
            if description is not None:
                sets.append("description=?")
                args.append(description)
            db.execute(
                f"UPDATE image_packages SET {', '.join(sets)} WHERE uuid=?", (*args, uuid)
            )
        return self.get(uuid)

    # --- reads -----------------------------------------------------------------------------------

    def get(self, uuid: str) -> PackageRecord | None:
        row = self._conn().execute(
            f"SELECT {_COLUMNS} FROM image_packages WHERE uuid=?", (uuid,)
        ).fetchone()
        return None if row is None else _row_to_record(row)

    def find_by_vm(self, vm_uuid: str) -> PackageRecord | None:
        row = self._conn().execute(
            f"SELECT {_COLUMNS} FROM image_packages WHERE vm_uuid=?", (vm_uuid,)
        ).fetchone()
        return None if row is None else _row_to_record(row)

    def query(
        self,
        conditions: Sequence[Condition] = (),
        *,
        limit: int | None = None,
        start: int = 0,
        sort_by: str | None = None,
        sort_direction: str = "asc",
    ) -> list[PackageRecord]:
        """Rows matching every condition (ANDed, as several ``q=`` are in ZStack)."""
        where, args = [], []
        for cond in conditions:
            sql, values = _condition_sql(cond)
            where.append(sql)
            args.extend(values)
        sql = f"SELECT {_COLUMNS} FROM image_packages"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if sort_by is not None:
            column = QUERY_FIELDS.get(sort_by)
            if column is None:
                raise InvalidArgumentError(f"invalid sortBy[{sort_by}]: no such field")
            if sort_direction.lower() not in ("asc", "desc"):
                raise InvalidArgumentError(
                    f"invalid sortDirection[{sort_direction}]: must be asc or desc"
                )
            sql += f" ORDER BY {column} {sort_direction.upper()}, uuid"
        else:
            sql += " ORDER BY create_date, uuid"
        if limit is not None or start:
            if (limit is not None and limit < 0) or start < 0:
                raise InvalidArgumentError("limit and start must not be negative")
            sql += " LIMIT ? OFFSET ?"
            args.extend([-1 if limit is None else limit, start])
        rows = self._conn().execute(sql, args).fetchall()
        return [_row_to_record(r) for r in rows]

    def count(self, conditions: Sequence[Condition] = ()) -> int:
        where, args = [], []
        for cond in conditions:
            sql, values = _condition_sql(cond)
            where.append(sql)
            args.extend(values)
        sql = "SELECT COUNT(*) FROM image_packages"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return int(self._conn().execute(sql, args).fetchone()[0])


_NUMERIC = frozenset({"size"})
_DATES = frozenset({"createDate", "lastOpDate"})


def _query_value(field: str, text: str) -> Any:
    if field in _NUMERIC:
        try:
            return int(text)
        except ValueError:
            raise InvalidArgumentError(
                f"invalid query value for field[{field}]: {text!r} is not an integer"
            ) from None
    if field in _DATES:
        try:
            return _to_ms(parse_zstack_time(text))
        except InvalidArgumentError:
            pass
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidArgumentError(
                f"invalid query value for field[{field}]: {text!r} is neither a ZStack "
                "timestamp (May 10, 2022 5:24:03 AM) nor ISO 8601"
            ) from None
        return _to_ms(moment if moment.tzinfo else moment.astimezone())
    return text


def _condition_sql(cond: Condition) -> tuple[str, list[Any]]:
    column = QUERY_FIELDS[cond.field]
    op = cond.op
    if op in ("=", "!=") and cond.value == "null":
        return f"{column} IS {'NOT ' if op == '!=' else ''}NULL", []
    if op in ("?=", "!?="):
        values = [_query_value(cond.field, v) for v in cond.value.split(",")]
        marks = ",".join("?" for _ in values)
        return f"{column} {'NOT ' if op == '!?=' else ''}IN ({marks})", values
    if op in ("~=", "!~="):
        return f"{column} {'NOT ' if op == '!~=' else ''}LIKE ?", [cond.value]
    sql_op = {"=": "=", "!=": "!=", ">": ">", "<": "<", ">=": ">=", "<=": "<="}[op]
    return f"{column} {sql_op} ?", [_query_value(cond.field, cond.value)]
