"""How errors become HTTP answers (pure: no Starlette objects beyond the JSON response).

ZStack's REST server answers a failed API call with 503 and ``{"error": ErrorCode}``; this service
does the same, so ZStack's SDKs read our errors as they read ZStack's. The other statuses are for
requests that never became an API call:

- 400: the request cannot be read as the API's message (not JSON, not an object,
  wrong JSON type, body over the size limit, bad ``q=`` syntax, bad Range header): SYS.1007;
- 401: no, unknown, logged-out or expired session (ID.1001), wrong account or password (ID.1000);
- 429: a client that keeps failing to log in to an account must wait (ID.1000, ``Retry-After``);
- 404: no route for the path ("no api mapping", SYS.1003);
- 405: known path, wrong method (SYS.1007, with an ``Allow`` header);
- 503: the API ran and failed (any ovfkit error: SYS.1003 VM not found, SYS.1006, SYS.1007 from
  ZStack's own argument checks, OVF.1001/1002, ...), and SYS.1000 for an unexpected exception,
  whose traceback goes to the server log and never to the client.

Every error body, whatever the status, is ``{"error": ErrorCode}`` in JSON, except the refusals
RestServer answers in plain text before any API runs, kept word for word for clients that match
them: a missing ``Authorization`` header (400 ``missing header 'Authorization'``), an
authorization type other than OAuth/ZStack (400), and the AccessKey header checks (400, or 403
``requestTimeTooSkewed``; see :mod:`ovfkit.zstack.accesskeys`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response

from ..errors import InvalidArgumentError, NotFoundError, OvfkitError
from ..zstack.accesskeys import AccessKeyRequestError
from ..zstack.auth import AuthenticationError, InvalidSessionError, LoginThrottledError

__all__ = [
    "MalformedRequestError",
    "MethodNotAllowedError",
    "NoApiMappingError",
    "PlainRequestError",
    "error_response",
    "status_for",
]


class MalformedRequestError(InvalidArgumentError):
    """The HTTP request cannot be read as an API message (answered 400)."""


class PlainRequestError(MalformedRequestError):
    """A request RestServer refuses with a plain-text 400 before any API runs."""


class NoApiMappingError(NotFoundError):
    """No route for the path (answered 404)."""


class MethodNotAllowedError(InvalidArgumentError):
    """The path exists but not with this method (answered 405)."""

    def __init__(self, details: str, *, allow: tuple[str, ...] = ()) -> None:
        super().__init__(details)
        self.allow = allow


def status_for(exc: OvfkitError) -> int:
    if isinstance(exc, AccessKeyRequestError):
        return exc.status
    if isinstance(exc, MalformedRequestError):
        return 400
    if isinstance(exc, LoginThrottledError):
        return 429
    if isinstance(exc, AuthenticationError | InvalidSessionError):
        return 401
    if isinstance(exc, NoApiMappingError):
        return 404
    if isinstance(exc, MethodNotAllowedError):
        return 405
    return 503


def error_body(error: OvfkitError | Mapping[str, Any]) -> dict[str, Any]:
    code = error.to_error_code() if isinstance(error, OvfkitError) else dict(error)
    return {"error": code}


def error_response(exc: OvfkitError) -> Response:
    if isinstance(exc, PlainRequestError | AccessKeyRequestError):
        return PlainTextResponse(exc.details, status_code=status_for(exc))
    headers: dict[str, str] = {}
    if isinstance(exc, InvalidSessionError | AuthenticationError):
        headers["WWW-Authenticate"] = 'OAuth realm="zstack"'
    if isinstance(exc, LoginThrottledError):
        headers["Retry-After"] = str(int(exc.retry_after))  # RFC 9110 10.2.3: delay-seconds
    if isinstance(exc, MethodNotAllowedError) and exc.allow:
        headers["Allow"] = ", ".join(exc.allow)
    return JSONResponse(error_body(exc), status_code=status_for(exc), headers=headers)
