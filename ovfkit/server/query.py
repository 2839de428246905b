"""Query strings of ZStack's query APIs, read as ZStack's RestServer reads them (pure).

What the SDKs send (zssdk.py ``QueryAction._query_string``, Java ``ZSClient
.fillQueryApiRequestBuilder``): one ``q=<condition>`` per condition, ``limit``, ``start``,
``count``, ``groupBy``, ``replyWithCount``, ``filterName``, ``sort=[+|-]field`` (from
``sortBy``/``sortDirection``) and ``fields=a,b``; the Python SDK adds every other parameter of
the action too (``sessionId=...``, ``systemTags=[...]``), unencoded, and writes booleans as
``True``/``False``.

RestServer.handleQueryApi reads ``limit``/``start`` as integers (400 otherwise), ``count`` and
``replyWithCount`` as booleans, ``sort`` with a leading ``+``/``-`` (a ``+`` left unencoded
arrives as a space; values are trimmed), each ``q`` split at the first operator of its list and
ignores every other parameter. Here, as well: ``sortBy``/``sortDirection`` as separate
parameters, and stricter checks where ZStack would fail later or silently (negative paging, a
boolean that is neither true nor false, an unknown field to sort, group or return by, a
parameter given twice).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from ..errors import InvalidArgumentError
from ..zstack.inventory import parse_condition
from .errors import MalformedRequestError

__all__ = ["QuerySpec", "query_spec"]

_PARAMS = (
    "q", "limit", "start", "count", "groupBy", "replyWithCount", "filterName", "sort", "sortBy",
    "sortDirection", "fields",
)


@dataclass(frozen=True)
class QuerySpec:
    conditions: tuple[str, ...]
    limit: int | None = None
    start: int = 0
    sort_by: str | None = None
    descending: bool = False
    with_count: bool = False
    count_only: bool = False
    fields: tuple[str, ...] = ()
    group_by: str | None = None
    filter_name: str | None = None
    ignored: tuple[str, ...] = ()


def _bool_param(value: str, name: str) -> bool:
    low = value.lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise MalformedRequestError(f"query parameter {name} must be true or false, not {value!r}")


def _int_param(value: str, name: str) -> int:
    if not value.isdigit() or len(value) > 18:
        raise MalformedRequestError(
            f"Invalid query parameter. '{name}' must be a non-negative integer"
        )
    return int(value)


def _field(name: str, fields: Collection[str], what: str) -> str:
    if name not in fields:
        raise MalformedRequestError(
            f"cannot {what} {name!r}; fields: {', '.join(sorted(fields))}"
        )
    return name


def _sort(values: Mapping[str, str], fields: Collection[str]) -> tuple[str | None, bool]:
    """(field, descending) from ``sort=[+|-]field`` or ``sortBy`` + ``sortDirection``."""
    field_name: str | None
    if "sort" in values:
        if "sortBy" in values or "sortDirection" in values:
            raise MalformedRequestError("give either sort or sortBy/sortDirection, not both")
        text = values["sort"]
        descending = text.startswith("-")
        field_name = text[1:] if text[:1] in ("+", "-") else text
    else:
        field_name = values.get("sortBy")
        direction = values.get("sortDirection", "asc")
        if direction not in ("asc", "desc"):
            raise MalformedRequestError("sortDirection must be asc or desc")
        descending = direction == "desc"
    if field_name is not None:
        _field(field_name, fields, "sort by")
    return field_name, descending


def query_spec(
    items: Sequence[tuple[str, str]],
    fields: Collection[str],
    *,
    condition_fields: Collection[str] | None = None,
    what: str = "ImagePackageInventory",
    filters: Collection[str] = (),
) -> QuerySpec:
    """Read a query string's items. ``fields`` are the inventory's fields (sort, group and
    return by), ``condition_fields`` what ``q`` may name (default: ``fields``), ``filters`` the
    known ``filterName`` values (ZStack's named ZQL filters; the image packages have none).
    Unknown parameters are listed in ``ignored``."""
    conditions: list[str] = []
    values: dict[str, str] = {}
    ignored: list[str] = []
    for key, raw in items:
        if key not in _PARAMS:
            ignored.append(key)
            continue
        if key == "q":
            try:
                parse_condition(raw, condition_fields or fields, what)
            except InvalidArgumentError as exc:
                raise MalformedRequestError(exc.details) from None
            conditions.append(raw)
        elif key in values:
            raise MalformedRequestError(f"query parameter {key} given more than once")
        else:
            values[key] = raw.strip()  # RestServer trims every value but q's
    sort_by, descending = _sort(values, fields)
    shown: tuple[str, ...] = ()
    if "fields" in values:
        shown = tuple(f.strip() for f in values["fields"].split(",") if f.strip())
        if not shown:
            raise MalformedRequestError("Invalid query parameter. 'fields' contains zero field")
        for f in shown:
            _field(f, fields, "return the field")
    group_by = values.get("groupBy")
    if group_by is not None:
        _field(group_by, fields, "group by")
    filter_name = values.get("filterName")
    if filter_name is not None and filter_name not in filters:
        raise MalformedRequestError(
            f"no query filter named [{filter_name}] for {what}"
            + (f"; filters: {', '.join(sorted(filters))}" if filters else "")
        )
    return QuerySpec(
        conditions=tuple(conditions),
        limit=_int_param(values["limit"], "limit") if "limit" in values else None,
        start=_int_param(values["start"], "start") if "start" in values else 0,
        sort_by=sort_by,
        descending=descending,
        with_count=_bool_param(values.get("replyWithCount", "false"), "replyWithCount"),
        count_only=_bool_param(values.get("count", "false"), "count"),
        fields=shown,
        group_by=group_by,
        filter_name=filter_name,
        ignored=tuple(dict.fromkeys(ignored)),
    )
