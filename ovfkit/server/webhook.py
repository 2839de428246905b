"""Webhooks: a job's final reply POSTed to the ``X-Web-Hook`` URL, as ZStack's RestServer does.

RestServer.callWebHook posts the reply the job would give when polled (``{"inventory": ...}``,
or ``{"error": ...}``) as ``application/json; charset=utf-8`` with the headers ``X-Job-UUID`` and
``X-Job-Success`` (``true``/``false``), and retries on an I/O error or a non-2xx answer, 15 times
2 seconds apart (``@RetryCondition(times = 15, interval = 2)``). Redirects are not followed.

A webhook makes the service send a request wherever a client says, so only ``http``/``https``
URLs whose host is on the allowed list (config.json ``webHooks.allowedHosts``) are accepted:
host names (exact, case-insensitive) and IP networks (``10.0.0.0/8``) matching an IP literal
host. The default list is the loopback (``localhost``, ``127.0.0.0/8``, ``::1``). The check
is pure (:func:`check_webhook_url`); :func:`post` is the I/O edge, blocking, for a worker thread.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import ssl
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InvalidArgumentError
from ..zstack.config import DEFAULT_WEBHOOK_HOSTS

__all__ = ["WebhookTarget", "check_webhook_url", "post"]

log = logging.getLogger("ovfkit.server.webhook")

RETRY_TIMES = 15
RETRY_INTERVAL = 2.0
ATTEMPT_TIMEOUT = 10.0


@dataclass(frozen=True)
class WebhookTarget:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line


def _host_allowed(host: str, allowed: Sequence[str]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in allowed:
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
        if host.lower() == entry.lower():
            return True
    return False


def check_webhook_url(
    url: str, allowed: Sequence[str] = DEFAULT_WEBHOOK_HOSTS
) -> WebhookTarget:
    """The target of an ``X-Web-Hook`` URL; SYS.1007 naming why it is refused."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidArgumentError(f"invalid webhook URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError(
            f"invalid webhook URL {url!r}: only http:// and https:// URLs with a host are accepted"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidArgumentError(f"invalid webhook URL {url!r}: no user information allowed")
    host = parts.hostname
    if not _host_allowed(host, allowed):
        raise InvalidArgumentError(
            f"webhook host {host!r} is not allowed; add it to webHooks.allowedHosts in the data "
            f"folder's config.json (allowed now: {', '.join(allowed) or 'none'})"
        )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return WebhookTarget(
        parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path
    )


def _attempt(target: WebhookTarget, body: bytes, headers: dict[str, str]) -> int:
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        conn = http.client.HTTPSConnection(
            target.host, target.port, timeout=ATTEMPT_TIMEOUT,
            context=ssl.create_default_context(),
        )
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=ATTEMPT_TIMEOUT)
    try:
        conn.request("POST", target.path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(64 * 1024)
        return response.status
    finally:
        conn.close()


def post(
    target: WebhookTarget,
    body: bytes,
    job_uuid: str,
    success: bool,
    *,
    stop: threading.Event | None = None,
    times: int = RETRY_TIMES,
    interval: float = RETRY_INTERVAL,
) -> bool:
    """POST ``body`` to ``target``, retrying as RestServer does; whether it was accepted.
    ``stop`` (the service shutting down) ends the retries early."""
    stop = stop if stop is not None else threading.Event()
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "X-Job-UUID": job_uuid,
        "X-Job-Success": "true" if success else "false",
    }
    for attempt in range(1, times + 1):
        try:
            status = _attempt(target, body, headers)
            if 200 <= status < 300:
                return True
            problem = f"HTTP status {status}"
        except (OSError, http.client.HTTPException) as exc:
            problem = str(exc) or type(exc).__name__
        log.warning(
            "webhook of job %s to %s://%s:%d (attempt %d of %d): %s", job_uuid, target.scheme,
            target.host, target.port, attempt, times, problem,
        )
        if attempt < times and stop.wait(interval):
            break
    return False
