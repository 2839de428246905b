"""Logging of the service: the ``ovfkit`` loggers beside uvicorn's, and no credential in any log.

ZStack's Python SDK puts ``sessionId=<session uuid>`` (and for AccessKey calls nothing secret,
but a session when there is one) in the query string of every GET and DELETE; uvicorn's access
log writes the whole request target. :class:`RedactCredentials` replaces such values with
``***`` in uvicorn's access records; ovfkit's own messages name ignored parameters, never their
values.
"""

from __future__ import annotations

import logging
import re

__all__ = ["RedactCredentials", "configure_logging", "redact"]

# Query parameters whose value is a credential (zssdk.py sends sessionId; accessKeySecret is
# never sent, but a hand-written client might).
_SECRET_PARAMS = re.compile(
    r"(?i)(^|[?&])(sessionId|sessionUuid|accessKeySecret|password)=([^&#\s]*)"
)


def redact(target: str) -> str:
    """``target`` (a path with query) with credential values replaced by ``***``."""
    return _SECRET_PARAMS.sub(lambda m: f"{m.group(1)}{m.group(2)}=***", target)


class RedactCredentials(logging.Filter):
    """For uvicorn's access logger: redact the request target (the record's third argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact(args[2]), *args[3:])
        return True


def configure_logging(level: str) -> None:
    """Give the ``ovfkit`` loggers a handler at ``level`` (uvicorn configures only its own) and
    install the access-log redaction."""
    logger = logging.getLogger("ovfkit")
    if not any(getattr(h, "_ovfkit", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        handler._ovfkit = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if level == "trace" else level.upper())
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactCredentials) for f in access.filters):
        access.addFilter(RedactCredentials())
