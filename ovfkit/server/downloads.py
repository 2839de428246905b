"""Package downloads: Starlette's FileResponse (Range, multipart/byteranges, If-Range), held to
RFC 9110 section 14 and answering its errors in ZStack JSON.

Starlette's FileResponse serves one range as ``206`` with ``Content-Range``, several as ``206
multipart/byteranges`` (overlapping ones merged), and answers a malformed header with a
plain-text 400 and an unsatisfiable one with an empty 416. Here:

- a range unit other than ``bytes`` is ignored and the whole file served (RFC 9110 14.2: a
  server MUST ignore a Range header with a unit it does not understand), as is a header of more
  than :data:`MAX_RANGES` ranges (Starlette's limit; 14.2 allows ignoring such requests);
- ranges that cannot be satisfied are dropped when another one can (14.1.2: 416 only when none
  is satisfiable);
- 400 and 416 carry ``{"error": ErrorCode}`` (SYS.1007), 416 with ``Content-Range: bytes */N``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import FileResponse
from starlette.types import Message, Receive, Scope, Send

from .errors import MalformedRequestError

__all__ = ["MAX_RANGES", "PackageFileResponse", "satisfiable_ranges"]

MAX_RANGES = FileResponse.max_ranges


def _satisfiable(spec: str, size: int) -> bool:
    """RFC 9110 14.1.2: ``first-` or ``first-last`` with first < length; ``-suffix`` with a
    non-zero suffix and a non-empty file. A spec that is not of these forms is kept, for the
    parser to refuse."""
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return True
    first, last = first.strip(), last.strip()
    if not first:
        return not last.isdigit() or (int(last) > 0 and size > 0)
    if not first.isdigit():
        return True
    return int(first) < size


def satisfiable_ranges(header: str, size: int) -> str | None:
    """The Range header to act on (pure): None to serve the whole file (a unit other than
    ``bytes``, or more than :data:`MAX_RANGES` ranges); else ``header`` without the ranges
    that cannot be satisfied, when at least one can."""
    unit, eq, specs = header.partition("=")
    if not eq:
        return header  # malformed: refused as such
    if unit.strip().lower() != "bytes":
        return None
    parts = specs.split(",")
    if len(parts) > MAX_RANGES:
        return None
    kept = [p for p in parts if _satisfiable(p, size)]
    if not kept or len(kept) == len(parts):
        return header
    return f"{unit}={','.join(kept)}"


class PackageFileResponse(FileResponse):
    """FileResponse with the Range rules and JSON errors of the module docstring."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = self.stat_result.st_size if self.stat_result is not None else None
        if size is not None and scope["type"] == "http":
            scope = _with_range(scope, size)
        await super().__call__(scope, receive, _json_errors(send))


def _with_range(scope: Scope, size: int) -> Scope:
    headers: list[tuple[bytes, bytes]] = list(scope.get("headers", []))
    found = [v for k, v in headers if k == b"range"]
    if len(found) != 1:
        return scope
    wanted = satisfiable_ranges(found[0].decode("latin-1"), size)
    rest = [(k, v) for k, v in headers if k != b"range"]
    if wanted is not None:
        rest.append((b"range", wanted.encode("latin-1")))
    return {**scope, "headers": rest}


def _json_errors(send: Send) -> Send:
    """Turn FileResponse's plain-text 400/416 into ZStack JSON; pass everything else."""
    held: dict[str, Any] = {}

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] in (400, 416):
            held["start"] = message
            return
        if "start" in held and message["type"] == "http.response.body":
            start = held.pop("start")
            status = start["status"]
            text = message.get("body", b"").decode("utf-8", "replace").strip()
            details = (
                f"invalid Range header: {text}" if status == 400
                else "Range not satisfiable: no range starts inside the package"
            )
            body = json.dumps({"error": MalformedRequestError(details).to_error_code()}).encode()
            headers = [
                (k, v) for k, v in start.get("headers", [])
                if k.lower() in (b"content-range", b"accept-ranges")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await send(message)

    return sender
