"""Reading request bodies: size limit, strict JSON, and the checks ZStack's message shapes need.
The parsing and checking functions are pure; only :func:`read_body` touches the request.

Unknown keys are ignored, as ZStack's RestServer ignores them (it rehashes the parameter object
into the API message class with Gson, which drops what the class has no field for): the SDKs
send more than an API reads (``sessionId``, ``requestIp``, the path's ``uuid``, newer fields
of a newer ZStack). The caller logs the names :func:`unknown_keys` gives. Known keys keep their
checks: a wrong JSON type is a 400."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import ClientDisconnect, Request

from .errors import MalformedRequestError

__all__ = [
    "DEFAULT_BODY_LIMIT",
    "optional_str",
    "parse_json_object",
    "read_body",
    "sub_object",
    "unknown_keys",
]

DEFAULT_BODY_LIMIT = 1024 * 1024


async def read_body(request: Request, limit: int = DEFAULT_BODY_LIMIT) -> bytes:
    """The whole body, refused (400) as soon as it passes ``limit`` bytes: a declared
    Content-Length over the limit is refused before reading, a chunked body while reading."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise MalformedRequestError(f"invalid Content-Length header {declared!r}")
        if int(declared) > limit:
            raise MalformedRequestError(
                f"request body of {declared} bytes is over the limit of {limit} bytes"
            )
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise MalformedRequestError(f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # Gone, or cut off by the body timeout (runner.py): the answer goes nowhere, and
        # this is no failure of the service to log.
        raise MalformedRequestError("the connection closed before the whole body arrived") from None
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object (RFC 8259: no NaN/Infinity, UTF-8); 400 otherwise."""
    if not body.strip():
        raise MalformedRequestError("request body is empty; expected a JSON object")
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise MalformedRequestError("request body is not UTF-8 text") from None
    except RecursionError:
        raise MalformedRequestError("request body nests JSON too deeply") from None
    except ValueError as exc:
        raise MalformedRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedRequestError(
            f"request body must be a JSON object, not {_json_type(data)}"
        )
    try:
        # json.loads lets "\ud800" through as a lone surrogate, which no UTF-8 store (SQLite,
        # the package name) can hold; RFC 8259 §8.2 leaves such strings unpredictable.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedRequestError(
            f"request body holds an unpaired UTF-16 surrogate {exc.object[exc.start:exc.end]!r}"
            " in a string; send valid Unicode"
        ) from None
    return data


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def unknown_keys(data: Mapping[str, Any], allowed: Iterable[str]) -> list[str]:
    """The keys of ``data`` not in ``allowed``, sorted (to be ignored and logged)."""
    allowed_set = set(allowed)
    return sorted(k for k in data if k not in allowed_set)


def sub_object(data: Mapping[str, Any], key: str, *, required: bool = True) -> dict[str, Any]:
    """``data[key]`` as a JSON object; 400 if it is missing (when required) or not an object."""
    value = data.get(key)
    if value is None:
        if required:
            raise MalformedRequestError(f"field[{key}] is mandatory, can not be null")
        return {}
    if not isinstance(value, dict):
        raise MalformedRequestError(
            f"field[{key}] must be a JSON object, not {_json_type(value)}"
        )
    return value


def optional_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise MalformedRequestError(
            f"field[{key}] of {where} must be a string, not {_json_type(value)}"
        )
    return value


def string_list(data: Mapping[str, Any], key: str, where: str) -> None:
    """400 unless ``data[key]`` is absent, null or a list of strings."""
    value = data.get(key)
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedRequestError(f"field[{key}] of {where} must be a list of strings")
