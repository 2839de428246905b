"""Image-package records (QueryImagePackage's table) and the pending-removal list, on a
:class:`~ovfkit.db.Database` (SQLite or PostgreSQL).

``vm_uuid`` is UNIQUE: the database decides which of two concurrent requests for one VM wins,
whichever process or host they run in (the loser gets :class:`DuplicateVmError`). Failed
exports leave no record, so every row is a live package or a running export.

``pending_cleanup`` is a durable to-do list of files to remove from a backup storage: a record is
deleted and its files queued in one transaction; the entry goes once the files are gone.
"""

from __future__ import annotations

import operator
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    RowMapping,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from ..errors import InvalidArgumentError, OperationFailedError
from ..zstack.inventory import (
    QUERY_FIELDS,
    Condition,
    ImagePackageInventory,
    ImagePackageState,
    parse_zstack_time,
)
from . import Database
from .schema import image_packages as T
from .schema import pending_cleanup as P

__all__ = [
    "DuplicateUuidError",
    "DuplicateVmError",
    "PackageRecord",
    "PackageStore",
    "already_exported_message",
    "now_ms",
]

_COLUMNS = (
    T.c.uuid, T.c.name, T.c.description, T.c.vm_uuid, T.c.backup_storage_uuid, T.c.state,
    T.c.export_url, T.c.md5_sum, T.c.format, T.c.size, T.c.create_date, T.c.last_op_date,
    T.c.install_path,
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


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone()


def _to_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _record(row: Any) -> PackageRecord:
    m: RowMapping = row._mapping
    inv = ImagePackageInventory(
        uuid=m["uuid"],
        name=m["name"],
        description=m["description"],
        vm_uuid=m["vm_uuid"],
        backup_storage_uuid=m["backup_storage_uuid"],
        state=ImagePackageState(m["state"]),
        export_url=m["export_url"],
        md5_sum=m["md5_sum"],
        format=m["format"],
        size=m["size"],
        create_date=_to_datetime(m["create_date"]),
        last_op_date=_to_datetime(m["last_op_date"]),
    )
    return PackageRecord(inv, m["install_path"])


class PackageStore:
    """The package records of one database; safe to use from many threads and processes."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- export life cycle ---------------------------------------------------------------------

    def insert_exporting(
        self,
        conn: Connection,
        inventory: ImagePackageInventory,
        install_path: str,
        *,
        owner_pid: int | None = None,
    ) -> None:
        """Insert the ``Exporting`` row inside the caller's transaction (the cluster adds its job
        in the same one). DuplicateVmError / DuplicateUuidError when the constraint refuses."""
        now = now_ms()
        # A new package replaces any queued removal of the same file name.
        conn.execute(
            delete(P).where(
                P.c.backup_storage_uuid == inventory.backup_storage_uuid,
                P.c.install_path == install_path,
            )
        )
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(T).values(
                        uuid=inventory.uuid, name=inventory.name,
                        description=inventory.description, vm_uuid=inventory.vm_uuid,
                        backup_storage_uuid=inventory.backup_storage_uuid,
                        state=ImagePackageState.EXPORTING.value, format=inventory.format,
                        create_date=now, last_op_date=now, install_path=install_path,
                        owner_pid=owner_pid,
                    )
                )
        except IntegrityError:
            holder = conn.execute(
                select(T.c.uuid).where(T.c.vm_uuid == inventory.vm_uuid)
            ).first()
            if holder is not None:
                raise DuplicateVmError(
                    already_exported_message(inventory.vm_uuid, holder[0])
                ) from None
            raise DuplicateUuidError(
                f"resourceUuid[{inventory.uuid}] is already used by another image package"
            ) from None

    def create_exporting(self, inventory: ImagePackageInventory, install_path: str) -> None:
        """Insert the ``Exporting`` row, owned by this process."""
        with self.db.begin() as conn:
            self.insert_exporting(conn, inventory, install_path, owner_pid=os.getpid())

    def mark_exported(
        self,
        uuid: str,
        *,
        export_url: str,
        md5_sum: str,
        size: int,
        conn: Connection | None = None,
    ) -> None:
        stmt = (
            update(T)
            .where(T.c.uuid == uuid, T.c.state == ImagePackageState.EXPORTING.value)
            .values(
                state=ImagePackageState.EXPORTED.value, export_url=export_url, md5_sum=md5_sum,
                size=size, last_op_date=now_ms(), owner_pid=None,
            )
        )
        if conn is None:
            with self.db.begin() as own:
                count = own.execute(stmt).rowcount
        else:
            count = conn.execute(stmt).rowcount
        if count != 1:
            raise OperationFailedError(f"image package[uuid: {uuid}] vanished while exporting")

    def delete(
        self, uuid: str, *, only_exporting: bool = False, conn: Connection | None = None
    ) -> PackageRecord | None:
        """Delete a row and queue its files for removal, in one transaction; the deleted
        record, or None if there was none (or it was not Exporting, with ``only_exporting``)."""
        if conn is None:
            with self.db.begin() as own:
                return self.delete(uuid, only_exporting=only_exporting, conn=own)
        row = conn.execute(select(*_COLUMNS).where(T.c.uuid == uuid)).first()
        if row is None:
            return None
        record = _record(row)
        if only_exporting and record.inventory.state is not ImagePackageState.EXPORTING:
            return None
        conn.execute(delete(T).where(T.c.uuid == uuid))
        self._queue_cleanup(conn, record.inventory.backup_storage_uuid, record.install_path)
        return record

    @staticmethod
    def _queue_cleanup(conn: Connection, bs_uuid: str, install_path: str) -> None:
        key = (P.c.backup_storage_uuid == bs_uuid, P.c.install_path == install_path)
        conn.execute(delete(P).where(*key))
        conn.execute(
            insert(P).values(
                backup_storage_uuid=bs_uuid, install_path=install_path, queued=time.time()
            )
        )

    def cleanup_done(self, backup_storage_uuid: str, install_path: str) -> None:
        with self.db.begin() as conn:
            conn.execute(
                delete(P).where(
                    P.c.backup_storage_uuid == backup_storage_uuid,
                    P.c.install_path == install_path,
                )
            )

    def pending_cleanup(self, storages: Sequence[str] | None = None) -> list[tuple[str, str]]:
        """Queued removals, oldest first; only those on ``storages`` when given."""
        stmt = select(P.c.backup_storage_uuid, P.c.install_path).order_by(P.c.queued)
        if storages is not None:
            stmt = stmt.where(P.c.backup_storage_uuid.in_(list(storages)))
        with self.db.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(stmt)]

    def exporting(self) -> list[PackageRecord]:
        """Every ``Exporting`` row."""
        stmt = select(*_COLUMNS).where(T.c.state == ImagePackageState.EXPORTING.value)
        with self.db.connect() as conn:
            return [_record(r) for r in conn.execute(stmt)]

    def update(
        self, uuid: str, *, name: str | None = None, description: str | None = None
    ) -> PackageRecord | None:
        values: dict[str, Any] = {"last_op_date": now_ms()}
        if name is not None:
            values["name"] = name
        if description is not None:
            values["description"] = description
        with self.db.begin() as conn:
            conn.execute(update(T).where(T.c.uuid == uuid).values(**values))
        return self.get(uuid)

    # --- reads -----------------------------------------------------------------------------------

    def get(self, uuid: str) -> PackageRecord | None:
        with self.db.connect() as conn:
            return self.get_in(conn, uuid)

    @staticmethod
    def get_in(conn: Connection, uuid: str) -> PackageRecord | None:
        row = conn.execute(select(*_COLUMNS).where(T.c.uuid == uuid)).first()
        return None if row is None else _record(row)

    def find_by_vm(self, vm_uuid: str) -> PackageRecord | None:
        with self.db.connect() as conn:
            row = conn.execute(select(*_COLUMNS).where(T.c.vm_uuid == vm_uuid)).first()
        return None if row is None else _record(row)

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
        stmt = select(*_COLUMNS).where(*[_condition(c) for c in conditions])
        if sort_by is not None:
            column = QUERY_FIELDS.get(sort_by)
            if column is None:
                raise InvalidArgumentError(f"invalid sortBy[{sort_by}]: no such field")
            if sort_direction.lower() not in ("asc", "desc"):
                raise InvalidArgumentError(
                    f"invalid sortDirection[{sort_direction}]: must be asc or desc"
                )
            col = T.c[column]
            stmt = stmt.order_by(col.desc() if sort_direction.lower() == "desc" else col.asc(),
                                 T.c.uuid)
        else:
            stmt = stmt.order_by(T.c.create_date, T.c.uuid)
        if limit is not None or start:
            if (limit is not None and limit < 0) or start < 0:
                raise InvalidArgumentError("limit and start must not be negative")
            stmt = stmt.limit(limit).offset(start)
        with self.db.connect() as conn:
            return [_record(r) for r in conn.execute(stmt)]

    def count(self, conditions: Sequence[Condition] = ()) -> int:
        stmt = select(func.count()).select_from(T).where(*[_condition(c) for c in conditions])
        with self.db.connect() as conn:
            return int(conn.execute(stmt).scalar_one())


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


def _condition(cond: Condition) -> ColumnElement[bool]:
    if cond.field not in QUERY_FIELDS:
        # __userTag__ / __systemTag__: the tags table is only in the embedded records so far.
        raise InvalidArgumentError(
            f"condition name[{cond.field}] is not supported by the database records"
        )
    col = T.c[QUERY_FIELDS[cond.field]]
    op = cond.op
    if op in ("is null", "not null"):
        return col.is_not(None) if op == "not null" else col.is_(None)
    if op in ("=", "!=") and cond.value == "null":
        return col.is_not(None) if op == "!=" else col.is_(None)
    if op in ("?=", "!?="):
        values = [_query_value(cond.field, v) for v in cond.value.split(",")]
        return col.not_in(values) if op == "!?=" else col.in_(values)
    if op in ("~=", "!~="):
        # ZStack's ~= is SQL LIKE (case-sensitive on PostgreSQL, ASCII-insensitive on SQLite,
        # as MySQL's default collation is for ZStack itself).
        return col.not_like(cond.value) if op == "!~=" else col.like(cond.value)
    value = _query_value(cond.field, cond.value)
    compare = {
        "=": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt,
        ">=": operator.ge, "<=": operator.le,
    }[op]
    result: ColumnElement[bool] = compare(col, value)
    return result
