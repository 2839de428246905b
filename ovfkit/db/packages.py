"""Image-package records (QueryImagePackage's table) and the pending-removal list, on a
:class:`~ovfkit.db.Database` (SQLite or PostgreSQL).

``vm_uuid`` is UNIQUE: the database decides which of two concurrent requests for one VM wins,
whichever process or host they run in (the loser gets :class:`DuplicateVmError`). Failed
exports leave no record, so every row is a live package or a running export.

A package's ZStack tags (``tags``: SystemTagVO and UserTagVO in one table) are written with its
``Exporting`` row and deleted with it, in the same transactions.

``pending_cleanup`` is a durable to-do list of files to remove from a backup storage: a record is
deleted and its files queued in one transaction; the entry goes once the files are gone.
"""

from __future__ import annotations

import operator
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    RowMapping,
    Select,
    delete,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError

from ..errors import InvalidArgumentError, NotFoundError, OperationFailedError
from ..zstack.inventory import (
    QUERY_FIELDS,
    TAG_FIELDS,
    USER_TAG_FIELD,
    Condition,
    ImagePackageInventory,
    ImagePackageState,
    parse_zstack_time,
)
from ..zstack.tags import RESOURCE_TYPE, SYSTEM, TAG_QUERY_FIELDS, USER, TagRecord, tag_rows
from . import Database
from .schema import image_packages as T
from .schema import pending_cleanup as P
from .schema import tags as G

__all__ = [
    "DuplicateUuidError",
    "DuplicateVmError",
    "PackageRecord",
    "PackageStore",
    "already_exported_message",
    "new_download_token",
    "now_ms",
]

_COLUMNS = (
    T.c.uuid, T.c.name, T.c.description, T.c.vm_uuid, T.c.backup_storage_uuid, T.c.state,
    T.c.export_url, T.c.md5_sum, T.c.format, T.c.size, T.c.create_date, T.c.last_op_date,
    T.c.install_path, T.c.account_uuid, T.c.download_token,
)


def already_exported_message(
    vm_uuid: str,
    package_uuid: str,
    holder_account: str | None = None,
    caller_account: str | None = None,
) -> str:
    """SYS.1007's details when the VM is taken. Another account's package is not named: its
    uuid is that account's (the caller learns only that the VM is taken). ``caller_account``
    None (a library caller without accounts) sees every package, as in queries."""
    if caller_account is not None and holder_account != caller_account:
        return (
            f"Vm[uuid: {vm_uuid}] is already exported as an ova package of another account;"
            " it can be exported again once that package is deleted."
        )
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
    """A row: the inventory plus where the package lives on its backup storage, the account
    that owns it (None: made before packages had owners; the admin's) and the secret of its
    download URL (None until Exported, and for packages on remote storages)."""

    inventory: ImagePackageInventory
    install_path: str
    account_uuid: str | None = None
    download_token: str | None = None


def new_download_token() -> str:
    """The secret part of a local package's exportUrl: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


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
    return PackageRecord(inv, m["install_path"], m["account_uuid"], m["download_token"])


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
        account_uuid: str | None = None,
        system_tags: Sequence[str] = (),
        user_tags: Sequence[str] = (),
    ) -> None:
        """Insert the ``Exporting`` row of ``account_uuid``'s package and its tags (checked
        already, see :mod:`ovfkit.zstack.tags`) inside the caller's transaction (the cluster adds
        its job in the same one). DuplicateVmError / DuplicateUuidError when the constraint
        refuses."""
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
                        owner_pid=owner_pid, account_uuid=account_uuid,
                    )
                )
        except IntegrityError:
            holder = conn.execute(
                select(T.c.uuid, T.c.account_uuid).where(T.c.vm_uuid == inventory.vm_uuid)
            ).first()
            if holder is not None:
                raise DuplicateVmError(
                    already_exported_message(
                        inventory.vm_uuid, holder[0], holder[1], account_uuid
                    )
                ) from None
            raise DuplicateUuidError(
                f"resourceUuid[{inventory.uuid}] is already used by another image package"
            ) from None
        rows = tag_rows(inventory.uuid, system_tags, user_tags)
        if rows:
            conn.execute(
                insert(G),
                [
                    {"uuid": u, "resource_uuid": r, "resource_type": rt, "tag": tag, "type": kind,
                     "create_date": now, "last_op_date": now}
                    for u, r, rt, tag, kind in rows
                ],
            )

    def create_exporting(
        self,
        inventory: ImagePackageInventory,
        install_path: str,
        *,
        account_uuid: str | None = None,
        system_tags: Sequence[str] = (),
        user_tags: Sequence[str] = (),
    ) -> None:
        """Insert the ``Exporting`` row and its tags, run by this process."""
        with self.db.begin() as conn:
            self.insert_exporting(
                conn, inventory, install_path, owner_pid=os.getpid(), account_uuid=account_uuid,
                system_tags=system_tags, user_tags=user_tags,
            )

    def mark_exported(
        self,
        uuid: str,
        *,
        export_url: str,
        md5_sum: str,
        size: int,
        download_token: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        """``download_token``: the secret in ``export_url`` (see :func:`new_download_token`)."""
        stmt = (
            update(T)
            .where(T.c.uuid == uuid, T.c.state == ImagePackageState.EXPORTING.value)
            .values(
                state=ImagePackageState.EXPORTED.value, export_url=export_url, md5_sum=md5_sum,
                size=size, last_op_date=now_ms(), owner_pid=None, download_token=download_token,
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
        # TagManagerImpl.postDelete: a resource's tags go with it.
        conn.execute(
            delete(G).where(G.c.resource_uuid == uuid, G.c.resource_type == RESOURCE_TYPE)
        )
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

    def exporting(self, *, owned: bool = False) -> list[PackageRecord]:
        """Every ``Exporting`` row; ``owned``: only those of exports run by a host's own
        process (an owner pid), not cluster jobs."""
        stmt = select(*_COLUMNS).where(T.c.state == ImagePackageState.EXPORTING.value)
        if owned:
            stmt = stmt.where(T.c.owner_pid.is_not(None))
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

    def give(
        self, account_uuid: str, *, packages: Sequence[str] = (), ownerless: bool = False
    ) -> list[str]:
        """Make ``account_uuid`` the owner of the ``packages`` named (any owner's) and, with
        ``ownerless``, of every package without one (made before packages had owners, the
        admin's since migration 0003); the uuids given, in uuid order. NotFoundError naming
        any uuid that is no package (then nothing changes)."""
        with self.db.begin() as conn:
            named = set(packages)
            found = {
                r[0] for r in conn.execute(select(T.c.uuid).where(T.c.uuid.in_(sorted(named))))
            }
            missing = sorted(named - found)
            if missing:
                raise NotFoundError(f"no image package with uuid {', '.join(missing)}")
            chosen: ColumnElement[bool] = T.c.uuid.in_(sorted(named))
            if ownerless:
                chosen = chosen | T.c.account_uuid.is_(None)
            uuids = sorted(r[0] for r in conn.execute(select(T.c.uuid).where(chosen)))
            if uuids:
                conn.execute(
                    update(T).where(T.c.uuid.in_(uuids)).values(
                        account_uuid=account_uuid, last_op_date=now_ms()
                    )
                )
        return uuids

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
        group_by: str | None = None,
        account_uuid: str | None = None,
    ) -> list[PackageRecord]:
        """Rows matching every condition (ANDed, as several ``q=`` are in ZStack); only those
        of ``account_uuid`` when given. ``group_by`` keeps one row per distinct value of that
        field (the first in the sort order), as the ``group by`` ZStack's query builder
        appends does."""
        where = _owned(account_uuid, [_condition(c) for c in conditions])
        order = _order_by(sort_by, sort_direction, _PACKAGES)
        if group_by is None:
            stmt = select(*_COLUMNS).where(*where).order_by(*order)
        else:
            rank = func.row_number().over(
                partition_by=_column(group_by, _PACKAGES, "groupBy"), order_by=order
            )
            ranked = select(*_COLUMNS, rank.label("group_rank")).where(*where).subquery()
            outer = _Table(ranked, QUERY_FIELDS, _PACKAGES.numeric, _PACKAGES.dates, True)
            stmt = (
                select(*[ranked.c[c.name] for c in _COLUMNS])
                .where(ranked.c.group_rank == 1)
                .order_by(*_order_by(sort_by, sort_direction, outer))
            )
        with self.db.connect() as conn:
            return [_record(r) for r in conn.execute(_paged(stmt, limit, start))]

    def count(
        self,
        conditions: Sequence[Condition] = (),
        *,
        group_by: str | None = None,
        account_uuid: str | None = None,
    ) -> int:
        """How many rows :meth:`query` would give without paging."""
        where = _owned(account_uuid, [_condition(c) for c in conditions])
        if group_by is None:
            stmt = select(func.count()).select_from(T).where(*where)
        else:
            groups = (
                select(_column(group_by, _PACKAGES, "groupBy")).where(*where)
                .group_by(_column(group_by, _PACKAGES, "groupBy")).subquery()
            )
            stmt = select(func.count()).select_from(groups)
        with self.db.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

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
        account_uuid: str | None = None,
    ) -> list[TagRecord]:
        """Tags of ``kind`` (tags.SYSTEM / tags.USER, None: both) matching every condition;
        only tags of ``account_uuid``'s packages when given."""
        stmt = (
            select(G).where(*_tag_where(kind, conditions, account_uuid))
            .order_by(*_order_by(sort_by, sort_direction, _TAGS))
        )
        with self.db.connect() as conn:
            rows = conn.execute(_paged(stmt, limit, start)).all()
        return [
            TagRecord(
                uuid=r.uuid, resource_uuid=r.resource_uuid, resource_type=r.resource_type,
                tag=r.tag, type=r.type, create_date=_to_datetime(r.create_date),
                last_op_date=_to_datetime(r.last_op_date),
            )
            for r in rows
        ]

    def count_tags(
        self,
        kind: str | None,
        conditions: Sequence[Condition] = (),
        *,
        account_uuid: str | None = None,
    ) -> int:
        stmt = select(func.count()).select_from(G).where(
            *_tag_where(kind, conditions, account_uuid)
        )
        with self.db.connect() as conn:
            return int(conn.execute(stmt).scalar_one())


def _owned(
    account_uuid: str | None, where: list[ColumnElement[bool]]
) -> list[ColumnElement[bool]]:
    """``where`` and, for an account, "the package is that account's"."""
    return where if account_uuid is None else [T.c.account_uuid == account_uuid, *where]


def _tag_where(
    kind: str | None, conditions: Sequence[Condition], account_uuid: str | None = None
) -> list[ColumnElement[bool]]:
    where = [_condition(c, _TAGS) for c in conditions]
    if account_uuid is not None:
        owned = select(T.c.uuid).where(T.c.account_uuid == account_uuid)
        where.insert(0, G.c.resource_uuid.in_(owned.scalar_subquery()))
    return [G.c.type == kind, *where] if kind is not None else where


# --- queries (ZStack's q= conditions, sort, paging, groupBy) over Core tables -------------------


@dataclass(frozen=True)
class _Table:
    """What a condition needs to know of the table it filters."""

    table: FromClause
    fields: Mapping[str, str]
    numeric: frozenset[str]
    dates: frozenset[str]
    tag_owner: bool  # whether __userTag__ / __systemTag__ conditions apply (its rows own tags)


_PACKAGES = _Table(T, QUERY_FIELDS, frozenset({"size"}), frozenset({"createDate", "lastOpDate"}),
                   True)
_TAGS = _Table(G, TAG_QUERY_FIELDS, frozenset(), frozenset({"createDate", "lastOpDate"}), False)


def _column(field: str, table: _Table, what: str) -> ColumnElement[Any]:
    name = table.fields.get(field)
    if name is None:
        raise InvalidArgumentError(f"invalid {what}[{field}]: no such field")
    return table.table.c[name]


def _order_by(sort_by: str | None, direction: str, table: _Table) -> list[ColumnElement[Any]]:
    key = table.table.c.uuid
    if sort_by is None:
        return [table.table.c.create_date, key]
    col = _column(sort_by, table, "sortBy")
    if direction.lower() not in ("asc", "desc"):
        raise InvalidArgumentError(f"invalid sortDirection[{direction}]: must be asc or desc")
    # NULL is the smallest value, as in MySQL (ZStack's database) and SQLite; PostgreSQL's
    # default puts it last in ascending order.
    ordered = col.desc().nulls_last() if direction.lower() == "desc" else col.asc().nulls_first()
    return [ordered, key]


def _paged(stmt: Select[Any], limit: int | None, start: int) -> Select[Any]:
    if limit is None and not start:
        return stmt
    if (limit is not None and limit < 0) or start < 0:
        raise InvalidArgumentError("limit and start must not be negative")
    return stmt.limit(limit).offset(start)


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


_COMPARE = {
    "=": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt,
    ">=": operator.ge, "<=": operator.le,
}
# Tag conditions, after ZStack's MysqlQueryBuilderImpl3.TagSqlBuilder: =, >, >=, <, <=, ?=, ~=
# and "not null" select resources having a matching tag; !=, !?=, !~= and "is null" select the
# resources having none (the operator reversed inside the sub-query). ?= values are not trimmed.
_TAG_REVERSED = {"!=": "=", "!?=": "?=", "!~=": "~=", "is null": "not null"}


def _tag_condition(cond: Condition) -> ColumnElement[bool]:
    kind = USER if cond.field == USER_TAG_FIELD else SYSTEM
    op = _TAG_REVERSED.get(cond.op, cond.op)
    match: ColumnElement[bool]
    if op == "not null":
        match = true()
    elif op == "?=":
        match = G.c.tag.in_(cond.value.split(","))
    elif op == "~=":
        match = G.c.tag.like(cond.value)
    else:
        match = _COMPARE[op](G.c.tag, cond.value)
    sub = select(G.c.resource_uuid).where(
        G.c.type == kind, G.c.resource_type == RESOURCE_TYPE, match
    )
    return T.c.uuid.not_in(sub) if op != cond.op else T.c.uuid.in_(sub)


def _condition(cond: Condition, table: _Table = _PACKAGES) -> ColumnElement[bool]:
    if cond.field in TAG_FIELDS:
        if not table.tag_owner:
            raise InvalidArgumentError(f"condition name[{cond.field}] is invalid here")
        return _tag_condition(cond)
    col = _column(cond.field, table, "condition name")
    op = cond.op
    if op in ("is null", "not null"):
        return col.is_not(None) if op == "not null" else col.is_(None)
    if op in ("=", "!=") and cond.value == "null":
        return col.is_not(None) if op == "!=" else col.is_(None)
    if op in ("?=", "!?="):
        # MetaCondition.normalizeValue: the values of an in-list are trimmed.
        values = [_query_value(cond.field, v.strip(), table) for v in cond.value.split(",")]
        return col.not_in(values) if op == "!?=" else col.in_(values)
    if op in ("~=", "!~="):
        # ZStack's ~= is SQL LIKE (case-sensitive on PostgreSQL, ASCII-insensitive on SQLite,
        # as MySQL's default collation is for ZStack itself).
        return col.not_like(cond.value) if op == "!~=" else col.like(cond.value)
    result: ColumnElement[bool] = _COMPARE[op](col, _query_value(cond.field, cond.value, table))
    return result
