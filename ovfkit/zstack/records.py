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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, OperationFailedError, OvfkitIOError
from .inventory import (
    QUERY_FIELDS,
    TAG_FIELDS,
    USER_TAG_FIELD,
    Condition,
    ImagePackageInventory,
    ImagePackageState,
    parse_zstack_time,
)
from .private import private_database, private_folder
from .tags import RESOURCE_TYPE, SYSTEM, TAG_QUERY_FIELDS, USER, TagRecord, tag_rows

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
-- ZStack's SystemTagVO and UserTagVO in one table (type System or Simple); a package's tags go
-- with it in the same transactions.
CREATE TABLE IF NOT EXISTS tags (
    uuid          TEXT PRIMARY KEY,
    resource_uuid TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    tag           TEXT NOT NULL,
    type          TEXT NOT NULL CHECK (type IN ('System', 'Simple')),
    create_date   INTEGER NOT NULL,
    last_op_date  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tags_resource ON tags(resource_uuid);
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
        *,
        system_tags: Sequence[str] = (),
        user_tags: Sequence[str] = (),
    ) -> None:
        """Insert the ``Exporting`` row and the package's tags (checked already, see
        :mod:`.tags`). The caller holds the package's ExportLock already."""
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
                db.executemany(
                    "INSERT INTO tags VALUES (?,?,?,?,?,?,?)",
                    [(*row, now, now) for row in tag_rows(inventory.uuid, system_tags, user_tags)],
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
            # TagManagerImpl.postDelete: a resource's tags go with it.
            db.execute("DELETE FROM tags WHERE resource_uuid=? AND resource_type=?",
                       (uuid, RESOURCE_TYPE))
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
        group_by: str | None = None,
    ) -> list[PackageRecord]:
        """Rows matching every condition (ANDed, as several ``q=`` are in ZStack). ``group_by``
        keeps one row per distinct value of that field (the first in the sort order), as the
        ``group by`` ZStack's query builder appends does."""
        where, args = _where(conditions, _PACKAGE_TABLE)
        order = _order_by(sort_by, sort_direction, QUERY_FIELDS, "create_date")
        sql = f"SELECT {_COLUMNS} FROM image_packages{where}"
        if group_by is not None:
            column = _column(group_by, QUERY_FIELDS, "groupBy")
            sql = (
                f"SELECT {_COLUMNS} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {column} "
                f"ORDER BY {order}) AS group_rank FROM image_packages{where}) WHERE group_rank = 1"
            )
        sql += f" ORDER BY {order}" + _paging(limit, start, args)
        rows = self._conn().execute(sql, args).fetchall()
        return [_row_to_record(r) for r in rows]

    def count(self, conditions: Sequence[Condition] = (), *, group_by: str | None = None) -> int:
        """How many rows :meth:`query` would give without paging."""
        where, args = _where(conditions, _PACKAGE_TABLE)
        sql = f"SELECT COUNT(*) FROM image_packages{where}"
        if group_by is not None:
            column = _column(group_by, QUERY_FIELDS, "groupBy")
            sql = f"SELECT COUNT(*) FROM (SELECT 1 FROM image_packages{where} GROUP BY {column})"
        return int(self._conn().execute(sql, args).fetchone()[0])

    # --- tags ------------------------------------------------------------------------------------

    def tags_of(self, resource_uuid: str) -> list[TagRecord]:
        return self.query_tags(None, [Condition("resourceUuid", "=", resource_uuid)])

    def query_tags(
        self,
        kind: str | None,
        conditions: Sequence[Condition] = (),
        *,
        limit: int | None = None,
        start: int = 0,
        sort_by: str | None = None,
        sort_direction: str = "asc",
    ) -> list[TagRecord]:
        """Tags of ``kind`` (tags.SYSTEM / tags.USER, None: both) matching every condition."""
        where, args = _where(_with_kind(kind, conditions), _TAG_TABLE)
        order = _order_by(sort_by, sort_direction, TAG_QUERY_FIELDS, "create_date")
        sql = f"SELECT {_TAG_COLUMNS} FROM tags{where} ORDER BY {order}"
        sql += _paging(limit, start, args)
        return [_row_to_tag(r) for r in self._conn().execute(sql, args).fetchall()]

    def count_tags(self, kind: str | None, conditions: Sequence[Condition] = ()) -> int:
        where, args = _where(_with_kind(kind, conditions), _TAG_TABLE)
        return int(self._conn().execute(f"SELECT COUNT(*) FROM tags{where}", args).fetchone()[0])


@dataclass(frozen=True)
class _Table:
    """What a condition needs to know of the table it filters."""

    fields: Mapping[str, str]
    numeric: frozenset[str]
    dates: frozenset[str]
    tag_owner: bool  # whether __userTag__ / __systemTag__ conditions apply (its rows own tags)


_PACKAGE_TABLE = _Table(
    QUERY_FIELDS, frozenset({"size"}), frozenset({"createDate", "lastOpDate"}), True
)
_TAG_TABLE = _Table(TAG_QUERY_FIELDS, frozenset(), frozenset({"createDate", "lastOpDate"}), False)
_TAG_COLUMNS = "uuid, resource_uuid, resource_type, tag, type, create_date, last_op_date"


def _row_to_tag(row: Sequence[Any]) -> TagRecord:
    return TagRecord(
        uuid=row[0], resource_uuid=row[1], resource_type=row[2], tag=row[3], type=row[4],
        create_date=_to_datetime(row[5]), last_op_date=_to_datetime(row[6]),
    )


def _with_kind(kind: str | None, conditions: Sequence[Condition]) -> list[Condition]:
    return [*(() if kind is None else (Condition("type", "=", kind),)), *conditions]


def _column(field: str, fields: Mapping[str, str], what: str) -> str:
    column = fields.get(field)
    if column is None:
        raise InvalidArgumentError(f"invalid {what}[{field}]: no such field")
    return column


def _order_by(
    sort_by: str | None, direction: str, fields: Mapping[str, str], default: str
) -> str:
    if sort_by is None:
        return f"{default}, uuid"
    column = _column(sort_by, fields, "sortBy")
    if direction.lower() not in ("asc", "desc"):
        raise InvalidArgumentError(f"invalid sortDirection[{direction}]: must be asc or desc")
    return f"{column} {direction.upper()}, uuid"


def _paging(limit: int | None, start: int, args: list[Any]) -> str:
    if limit is None and not start:
        return ""
    if (limit is not None and limit < 0) or start < 0:
        raise InvalidArgumentError("limit and start must not be negative")
    args.extend([-1 if limit is None else limit, start])
    return " LIMIT ? OFFSET ?"


def _where(conditions: Sequence[Condition], table: _Table) -> tuple[str, list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    for cond in conditions:
        sql, values = _condition_sql(cond, table)
        where.append(sql)
        args.extend(values)
    return (" WHERE " + " AND ".join(where) if where else ""), args


def _query_value(field: str, text: str, table: _Table) -> Any:
    if field in table.numeric:
        try:
            return int(text)
        except ValueError:
            raise InvalidArgumentError(
                f"invalid query value for field[{field}]: {text!r} is not an integer"
            ) from None
    if field in table.dates:
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


# Tag conditions, after ZStack's MysqlQueryBuilderImpl3.TagSqlBuilder: =, >, >=, <, <=, ?=, ~=
# and "not null" select resources having a matching tag; !=, !?=, !~= and "is null" select the
# resources having none (the operator reversed inside the sub-query). ?= values are not trimmed.
_TAG_REVERSED = {"!=": "=", "!?=": "?=", "!~=": "~=", "is null": "not null"}
_SQL_OPS = {"=": "=", "!=": "!=", ">": ">", "<": "<", ">=": ">=", "<=": "<="}


def _tag_condition_sql(cond: Condition) -> tuple[str, list[Any]]:
    kind = USER if cond.field == USER_TAG_FIELD else SYSTEM
    op = _TAG_REVERSED.get(cond.op, cond.op)
    negate = op != cond.op
    args: list[Any] = [kind, RESOURCE_TYPE]
    if op == "not null":
        match = "1"
    elif op == "?=":
        values = cond.value.split(",")
        match = f"tag IN ({','.join('?' for _ in values)})"
        args.extend(values)
    elif op == "~=":
        match = "tag LIKE ?"
        args.append(cond.value)
    else:
        match = f"tag {_SQL_OPS[op]} ?"
        args.append(cond.value)
    sub = f"SELECT resource_uuid FROM tags WHERE type = ? AND resource_type = ? AND {match}"
    return f"uuid {'NOT ' if negate else ''}IN ({sub})", args


def _condition_sql(cond: Condition, table: _Table = _PACKAGE_TABLE) -> tuple[str, list[Any]]:
    if cond.field in TAG_FIELDS:
        if not table.tag_owner:
            raise InvalidArgumentError(f"condition name[{cond.field}] is invalid here")
        return _tag_condition_sql(cond)
    column = table.fields[cond.field]
    op = cond.op
    if op in ("is null", "not null"):
        return f"{column} IS {'NOT ' if op == 'not null' else ''}NULL", []
    if op in ("=", "!=") and cond.value == "null":
        return f"{column} IS {'NOT ' if op == '!=' else ''}NULL", []
    if op in ("?=", "!?="):
        # MetaCondition.normalizeValue: the values of an in-list are trimmed.
        values = [_query_value(cond.field, v.strip(), table) for v in cond.value.split(",")]
        marks = ",".join("?" for _ in values)
        return f"{column} {'NOT ' if op == '!?=' else ''}IN ({marks})", values
    if op in ("~=", "!~="):
        return f"{column} {'NOT ' if op == '!~=' else ''}LIKE ?", [cond.value]
    return f"{column} {_SQL_OPS[op]} ?", [_query_value(cond.field, cond.value, table)]
