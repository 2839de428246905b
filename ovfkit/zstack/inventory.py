"""ZStack's wire shapes for ExportVmOvaPackage and the image-package APIs (pure, no I/O).

Sources: the ExportVmOvaPackage reference page and ZStack's SDK (``ImagePackageInventory``,
``ExportVmOvaPackageResult``, ``ErrorCode``). ZStack's JSON leaves null fields out and writes
timestamps with Gson's default US-English pattern ``MMM d, yyyy h:mm:ss a`` ("May 10, 2022
5:24:03 AM": day and hour not zero-padded), in local time.
"""

from __future__ import annotations

import json
import re
import uuid as uuid_module
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..errors import InvalidArgumentError, OvfkitError

__all__ = [
    "API_MESSAGE",
    "UUID_PATTERN",
    "Condition",
    "ExportVmOvaPackageRequest",
    "ImagePackageInventory",
    "ImagePackageState",
    "Reply",
    "format_zstack_time",
    "is_zstack_uuid",
    "new_zstack_uuid",
    "parse_condition",
    "parse_zstack_time",
]

# The message name ZStack quotes in its argument errors for this API.
API_MESSAGE = "APIExportVmOvaPackageMsg"

# ZStack's UUID rule (header/.../ApiMessageProcessorImpl): 32 lowercase hex, no dashes,
# RFC 4122 version 1-5 and variant 10xx.
UUID_PATTERN = "[0-9a-f]{8}[0-9a-f]{4}[1-5][0-9a-f]{3}[89ab][0-9a-f]{3}[0-9a-f]{12}"
_UUID_RE = re.compile(UUID_PATTERN)

NAME_MAX = 255
DESCRIPTION_MAX = 2048

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TIME_RE = re.compile(
    r"(?P<mon>[A-Z][a-z]{2}) (?P<day>\d{1,2}), (?P<year>\d{4}) "
    r"(?P<hour>\d{1,2}):(?P<min>\d{2}):(?P<sec>\d{2})\s(?P<ampm>AM|PM)"
)


def is_zstack_uuid(value: object) -> bool:
    return isinstance(value, str) and _UUID_RE.fullmatch(value) is not None


def new_zstack_uuid() -> str:
    """A fresh uuid in ZStack's form (uuid4 without dashes)."""
    return uuid_module.uuid4().hex


def format_zstack_time(moment: datetime) -> str:
    """``May 10, 2022 5:24:03 AM`` in local time; locale-independent (English month names)."""
    local = moment.astimezone() if moment.tzinfo is not None else moment
    hour12 = local.hour % 12 or 12
    ampm = "AM" if local.hour < 12 else "PM"
    return (
        f"{_MONTHS[local.month - 1]} {local.day}, {local.year} "
        f"{hour12}:{local.minute:02d}:{local.second:02d} {ampm}"
    )


def parse_zstack_time(text: str) -> datetime:
    """The inverse of :func:`format_zstack_time`: an aware datetime in local time.

    Newer JDKs put a narrow no-break space before AM/PM; that is accepted too.
    """
    m = _TIME_RE.fullmatch(text.strip())
    if m is None or m["mon"] not in _MONTHS:
        raise InvalidArgumentError(f"invalid ZStack timestamp {text!r}")
    hour = int(m["hour"])
    if not 1 <= hour <= 12:
        raise InvalidArgumentError(f"invalid ZStack timestamp {text!r}")
    hour = hour % 12 + (12 if m["ampm"] == "PM" else 0)
    try:
        naive = datetime(
            int(m["year"]), _MONTHS.index(m["mon"]) + 1, int(m["day"]),
            hour, int(m["min"]), int(m["sec"]),
        )
    except ValueError as exc:
        raise InvalidArgumentError(f"invalid ZStack timestamp {text!r}: {exc}") from None
    return naive.astimezone()


class ImagePackageState(StrEnum):
    EXPORTING = "Exporting"
    EXPORTED = "Exported"


@dataclass(frozen=True)
class ImagePackageInventory:
    """ZStack's ImagePackageInventory (one OVA package record)."""

    uuid: str
    name: str
    description: str | None
    vm_uuid: str
    backup_storage_uuid: str
    state: ImagePackageState
    export_url: str | None = None
    md5_sum: str | None = None
    format: str = "OVA"
    size: int | None = None
    create_date: datetime | None = None
    last_op_date: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """ZStack's JSON object: camelCase keys, nulls left out, integer size."""
        out: dict[str, Any] = {
            "uuid": self.uuid,
            "name": self.name,
            "description": self.description,
            "vmUuid": self.vm_uuid,
            "backupStorageUuid": self.backup_storage_uuid,
            "state": self.state.value,
            "exportUrl": self.export_url,
            "md5Sum": self.md5_sum,
            "format": self.format,
            "size": self.size,
            "createDate": _fmt_opt(self.create_date),
            "lastOpDate": _fmt_opt(self.last_op_date),
        }
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImagePackageInventory:
        size = data.get("size")
        return cls(
            uuid=str(data["uuid"]),
            name=str(data["name"]),
            description=data.get("description"),
            vm_uuid=str(data["vmUuid"]),
            backup_storage_uuid=str(data["backupStorageUuid"]),
            state=ImagePackageState(data["state"]),
            export_url=data.get("exportUrl"),
            md5_sum=data.get("md5Sum"),
            format=str(data.get("format", "OVA")),
            size=None if size is None else int(size),
            create_date=_parse_opt(data.get("createDate")),
            last_op_date=_parse_opt(data.get("lastOpDate")),
        )


def _fmt_opt(moment: datetime | None) -> str | None:
    return None if moment is None else format_zstack_time(moment)


def _parse_opt(text: object) -> datetime | None:
    return None if text is None else parse_zstack_time(str(text))


@dataclass(frozen=True)
class Reply:
    """The SDK result of ExportVmOvaPackage: ``success``, ``error`` (ZStack ErrorCode), inventory.

    ``to_json()`` gives the REST body: ``{"inventory": {...}}`` on success,
    ``{"error": {...}}`` on failure (null fields left out, as ZStack does); ``to_sdk_json()``
    adds ``success`` as the SDK result object carries it.
    """

    success: bool
    error: Mapping[str, Any] | None = None
    inventory: ImagePackageInventory | None = None

    @classmethod
    def ok(cls, inventory: ImagePackageInventory) -> Reply:
        return cls(success=True, inventory=inventory)

    @classmethod
    def failure(cls, error: OvfkitError) -> Reply:
        return cls(success=False, error=error.to_error_code())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.error is not None:
            out["error"] = dict(self.error)
        if self.inventory is not None:
            out["inventory"] = self.inventory.to_json()
        return out

    def to_sdk_json(self) -> dict[str, Any]:
        return {"success": self.success, **self.to_json()}


_REQUEST_STR_FIELDS = ("name", "description", "vmUuid", "backupStorageUuid", "resourceUuid")
_REQUEST_LIST_FIELDS = ("tagUuids", "systemTags", "userTags")


@dataclass(frozen=True)
class ExportVmOvaPackageRequest:
    """ExportVmOvaPackage's arguments, as typed values (checks of content happen in the API).

    ``vm_uuid`` and ``backup_storage_uuid`` may be None here so that a missing field gets
    ZStack's own "is mandatory" error from :func:`ovfkit.zstack.api.export_vm_ova_package`.
    """

    vm_uuid: str | None = None
    backup_storage_uuid: str | None = None
    name: str | None = None
    description: str | None = None
    resource_uuid: str | None = None
    tag_uuids: tuple[str, ...] = ()
    system_tags: tuple[str, ...] = ()
    user_tags: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: Mapping[str, Any] | str | bytes) -> ExportVmOvaPackageRequest:
        """Accept ZStack's ``{"params": {...}, "systemTags": [...], "userTags": [...]}`` body
        and the flat form of the reference page's curl example. Wrong JSON types: SYS.1007.
        Unknown keys are kept in ``extra`` (ZStack ignores them too)."""
        if isinstance(body, str | bytes):
            try:
                body = json.loads(body)
            except ValueError as exc:
                raise InvalidArgumentError(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, Mapping):
            raise InvalidArgumentError("request body must be a JSON object")
        flat: dict[str, Any] = {}
        params = body.get("params")
        if params is not None:
            if not isinstance(params, Mapping):
                raise InvalidArgumentError("field[params] must be a JSON object")
            flat.update({k: v for k, v in body.items() if k != "params"})
            flat.update(params)
            # Tags sent both at the top level (ZStack's place) and in params: keep both.
            for key in ("systemTags", "userTags"):
                if key in body and key in params:
                    flat[key] = _list_field(body, key) + _list_field(params, key)
        else:
            flat.update(body)
        values: dict[str, Any] = {}
        for key in _REQUEST_STR_FIELDS:
            value = flat.get(key)
            if value is not None and not isinstance(value, str):
                raise InvalidArgumentError(
                    f"field[{key}] of message[{API_MESSAGE}] must be a string, "
                    f"not {type(value).__name__}"
                )
            values[key] = value
        lists = {key: tuple(_list_field(flat, key)) for key in _REQUEST_LIST_FIELDS}
        known = {*_REQUEST_STR_FIELDS, *_REQUEST_LIST_FIELDS}
        return cls(
            vm_uuid=values["vmUuid"],
            backup_storage_uuid=values["backupStorageUuid"],
            name=values["name"],
            description=values["description"],
            resource_uuid=values["resourceUuid"],
            tag_uuids=lists["tagUuids"],
            system_tags=lists["systemTags"],
            user_tags=lists["userTags"],
            extra={k: v for k, v in flat.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        """ZStack's body form; None fields and empty tag lists left out."""
        params = {
            "name": self.name,
            "description": self.description,
            "vmUuid": self.vm_uuid,
            "backupStorageUuid": self.backup_storage_uuid,
            "resourceUuid": self.resource_uuid,
            "tagUuids": list(self.tag_uuids) or None,
        }
        out: dict[str, Any] = {"params": {k: v for k, v in params.items() if v is not None}}
        if self.system_tags:
            out["systemTags"] = list(self.system_tags)
        if self.user_tags:
            out["userTags"] = list(self.user_tags)
        return out


def _list_field(data: Mapping[str, Any], key: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidArgumentError(
            f"field[{key}] of message[{API_MESSAGE}] must be a list of strings"
        )
    return list(value)


# --- QueryImagePackage conditions --------------------------------------------------------------

# ZStack's query API operators (``q=field<op>value``), longest first so ``>=`` wins over ``>``.
_OPERATORS = ("!?=", "!~=", "?=", "~=", "!=", ">=", "<=", "=", ">", "<")
# Value-less operators, tried after the others as ZStack's RestServer does (QUERY_OP_MAPPING:
# "is null" and "not null" come last): ``q=description is null``.
NULL_OPERATORS = ("is null", "not null")

# Queryable fields: JSON name -> record column, and whether they compare as numbers or dates.
QUERY_FIELDS: Mapping[str, str] = {
    "uuid": "uuid",
    "name": "name",
    "description": "description",
    "vmUuid": "vm_uuid",
    "backupStorageUuid": "backup_storage_uuid",
    "state": "state",
    "exportUrl": "export_url",
    "md5Sum": "md5_sum",
    "format": "format",
    "size": "size",
    "createDate": "create_date",
    "lastOpDate": "last_op_date",
}

# ZStack's pseudo-fields for tags (search MysqlQueryBuilderImpl3 / ZQLMetadata: USER_TAG_NAME,
# SYS_TAG_NAME): ``q=__userTag__=blue`` matches resources carrying that user tag.
USER_TAG_FIELD = "__userTag__"
SYSTEM_TAG_FIELD = "__systemTag__"
TAG_FIELDS = (USER_TAG_FIELD, SYSTEM_TAG_FIELD)


@dataclass(frozen=True)
class Condition:
    """One ``q=`` condition: ``field op value``. ``op`` is one of ``=``, ``!=``, ``>``, ``<``,
    ``>=``, ``<=``, ``~=`` (SQL LIKE, ``%`` and ``_`` wildcards), ``!~=``, ``?=`` (in a
    comma-separated list), ``!?=`` (not in), ``is null`` and ``not null`` (``value`` empty).
    ``field=null`` / ``field!=null`` are ovfkit's older spelling of the last two."""

    field: str
    op: str
    value: str


def parse_condition(
    text: str, fields: Collection[str] = (*QUERY_FIELDS, *TAG_FIELDS), what: str = (
        "ImagePackageInventory"
    ),
) -> Condition:
    """Parse ZStack's ``q`` syntax (e.g. ``name~=web%``, ``size>1024``, ``description is
    null``); SYS.1007 if bad. ``fields`` are the names allowed on the left; ``what`` names the
    inventory in errors."""
    for op in _OPERATORS:
        idx = text.find(op)
        if idx <= 0:
            continue
        # The first operator occurrence wins; a longer one starting at the same place first.
        earlier = [text.find(o) for o in _OPERATORS if 0 < text.find(o) < idx]
        if earlier:
            continue
        return _condition(text, text[:idx], op, text[idx + len(op):], fields, what)
    for op in NULL_OPERATORS:
        idx = text.find(op)
        if idx > 0:
            # RestServer trims the name of a value-less condition (and keeps nothing after).
            return _condition(text, text[:idx].strip(), op, "", fields, what)
    raise InvalidArgumentError(
        f"invalid query condition {text!r}: expected field=value, field!=value, field~=pattern, "
        "field>value, field<value, field>=value, field<=value, field?=a,b, field!?=a,b, "
        "'field is null' or 'field not null'"
    )


def _condition(
    text: str, name: str, op: str, value: str, fields: Collection[str], what: str
) -> Condition:
    if name not in fields:
        raise InvalidArgumentError(
            f"invalid query condition {text!r}: unknown field[{name}] of {what}"
        )
    return Condition(name, op, value)


def conditions_from_query(items: Sequence[str | Condition]) -> list[Condition]:
    """``q=`` strings parsed; Condition objects (already parsed) passed through."""
    return [item if isinstance(item, Condition) else parse_condition(item) for item in items]
