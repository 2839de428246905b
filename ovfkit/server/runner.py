"""Running the service on uvicorn, hardened against slow and hostile clients, and shut down
gracefully. This is the socket edge; the application (:mod:`.app`) knows nothing of it.

uvicorn alone times out nothing before a request is complete and has no connection limit: 1,100
clients that each sent half a request line held 1,100 file descriptors for ever, and once the
process ran out of descriptors every accept and every file open failed, each with a traceback in
the log. Here (:class:`GuardedH11Protocol`, uvicorn's h11 protocol plus these rules):

- A connection must complete its request headers within ``header_timeout`` seconds of being
  opened (or of its previous response, for a kept-alive connection), and its body within
  ``body_timeout`` seconds of the headers; a response the client does not read for
  ``send_timeout`` seconds ends the connection. Timed-out requests get 408 in ZStack JSON (as
  Apache's mod_reqtimeout and nginx's client_header/body_timeout answer 408).
- At most ``max_connections`` connections are open, kept below the file-descriptor limit
  (:func:`connection_limit`) so accept(2) never fails for want of descriptors. At the limit, a new
  connection takes the place of the oldest one that has been waiting a second or more for a
  complete request; when there is none, it gets 503 in ZStack JSON and is closed.
- Requests that are not HTTP/1.1 (or whose headers pass 16 KiB) get 400 in ZStack JSON, not
  uvicorn's plain text.
- Each condition is logged in one line, not once per connection: :class:`RepeatFilter` lets the
  first record of a kind through per minute and then says in one line how many more there were.

Shutdown (SIGTERM/SIGINT, :class:`OvfkitServer`): stop accepting, refuse new exports (SYS.1010),
let running exports finish for ``shutdown_grace`` seconds, then cancel the rest, which roll back
(record and partial files removed) and answer SYS.1017 in ZStack JSON before the process exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import OperationFailedError, OperationTimeoutError, OvfkitError
from .errors import MalformedRequestError

__all__ = [
    "GuardedH11Protocol",
    "Limits",
    "OvfkitServer",
    "RepeatFilter",
    "connection_limit",
    "raise_nofile_limit",
    "raw_error_reply",
    "serve",
]

log = logging.getLogger("ovfkit.server.http")

# Descriptors kept free of connections: the data folder's SQLite files, logs, the listening
# sockets, and per running export its disks, output, qemu-img pipes and worker processes.
FD_RESERVE = 64
FD_PER_EXPORT = 32
LISTEN_BACKLOG = 2048  # uvicorn's default
EVICT_AFTER = 1.0


@dataclass(frozen=True)
class Limits:
    """Connection limits and timeouts (seconds) of ``ovfkit serve``."""

    header_timeout: float = 20.0
    body_timeout: float = 60.0
    send_timeout: float = 300.0
    keep_alive: int = 5
    max_connections: int = 1024
    shutdown_grace: float = 30.0


def raise_nofile_limit(wanted: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard one (as Go's runtime does at start: the soft
    default of 1024 exists for select(2), which asyncio does not use); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_limit(wanted: int, nofile: int, export_workers: int) -> tuple[int, int]:
    """(connections open at once, accept batch) that keep the process under ``nofile``
    descriptors (pure).

    asyncio accepts up to ``backlog`` connections in one loop turn (the batch) before any of
    them reaches the protocol, and a closed connection frees its descriptor one turn later; so
    besides the open connections, twice the batch is kept free, with what the exports and the
    service itself need. (The kernel's queue of connections not yet accepted holds no
    descriptor of ours: :class:`OvfkitServer` makes it :data:`LISTEN_BACKLOG` long.)"""
    room = nofile - FD_RESERVE - FD_PER_EXPORT * export_workers
    batch = max(8, min(128, room // 8))
    return max(1, min(wanted, room - 2 * batch)), batch


def raw_error_reply(
    status: int, error: OvfkitError, headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """A complete HTTP/1.1 response carrying ``{"error": ErrorCode}``, for answers written
    straight to the transport (no request cycle exists, or it is being abandoned); pure."""
    body = json.dumps({"error": error.to_error_code()}).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        f"date: {formatdate(usegmt=True)}",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- one log line per condition ----------------------------------------------------------------


@dataclass
class _Window:
    start: float
    level: int
    text: str
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """A logging filter: the first record of each kind (logger, message template's first line,
    exception type) passes per ``interval``; the rest are counted and reported in one line
    when the interval is over (:meth:`flush`, or the next record of that kind). Thread-safe."""

    SUMMARY = "ovfkit_summary"

    def __init__(
        self, interval: float = 60.0, *, clock: Callable[[], float] = time.monotonic,
        max_kinds: int = 1024,
    ) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._max_kinds = max_kinds
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str, str], _Window] = {}

    @staticmethod
    def _kind(record: logging.LogRecord) -> tuple[str, str, str]:
        first = str(record.msg).split("\n", 1)[0]
        exc = record.exc_info[1] if record.exc_info else None
        return record.name, first, type(exc).__name__ if exc is not None else ""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, self.SUMMARY, False):
            return True
        kind = self._kind(record)
        now = self._clock()
        report: tuple[str, _Window] | None = None
        with self._lock:
            window = self._windows.get(kind)
            if window is not None and now - window.start < self.interval:
                window.suppressed += 1
                return False
            if window is not None and window.suppressed:
                report = (kind[0], window)
            if len(self._windows) >= self._max_kinds:
                self._windows.pop(next(iter(self._windows)))
            self._windows[kind] = _Window(now, record.levelno, kind[1])
        if report is not None:
            self._report(*report)
        return True

    def flush(self, *, force: bool = False) -> None:
        """Report the kinds whose interval is over (all of them with ``force``)."""
        now = self._clock()
        due: list[tuple[str, _Window]] = []
        with self._lock:
            for kind, window in list(self._windows.items()):
                if window.suppressed and (force or now - window.start >= self.interval):
                    due.append((kind[0], window))
                    self._windows[kind] = _Window(now, window.level, window.text)
        for name, window in due:
            self._report(name, window)

    def _report(self, name: str, window: _Window) -> None:
        logging.getLogger(name).log(
            window.level,
            "%d more like this in %.0f s: %s",
            window.suppressed,
            max(self.interval, self._clock() - window.start),
            window.text,
            extra={self.SUMMARY: True},
        )


# -- the protocol ------------------------------------------------------------------------------


class _Guard:
    """State shared by the connections of one server (used on the event loop only)."""

    def __init__(self, limits: Limits, max_connections: int) -> None:
        self.limits = limits
        self.max_connections = max_connections
        self.open = 0
        # Connections with no request in progress, oldest first, with the time they started
        # waiting: the ones a new connection may take the place of when the limit is reached.
        self.waiting: dict[GuardedH11Protocol, float] = {}
        # A connection just accepted has had no time to send its request: not taken.
        self.evict_after = min(EVICT_AFTER, limits.header_timeout / 2)

    def make_room(self, now: float) -> bool:
        if self.open < self.max_connections:
            return True
        for oldest, since in self.waiting.items():
            if now - since < self.evict_after:
                return False
            oldest.evict()
            return True
        return False


_IDLE, _BODY, _BUSY = "idle", "body", "busy"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the timeouts, the connection limit and the JSON error
    answers of the module docstring. :func:`guarded_protocol` binds it to a :class:`_Guard`."""

    guard: _Guard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None
        self._admitted = False

    # -- connection life -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        guard = self.guard
        if not guard.make_room(time.monotonic()):
            peer = transport.get_extra_info("peername")
            log.warning(
                "connection limit of %d reached: refusing new connections with 503 (from %s)",
                guard.max_connections, _host(peer),
            )
            err = OperationFailedError(
                f"the service has {guard.max_connections} connections open, its limit; "
                "try again shortly"
            )
            transport.write(raw_error_reply(503, err, (("retry-after", "1"),)))
            transport.close()
            return
        self._admitted = True
        guard.open += 1
        super().connection_made(transport)
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self.guard.open -= 1
        self.guard.waiting.pop(self, None)
        self._cancel_deadline()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    # -- phases and their deadlines -------------------------------------------------------------

    def _track(self) -> None:
        """Re-arm the read deadline when the request phase changes: waiting for headers (from
        the connection or the previous response on), receiving a body, or neither."""
        if not self._admitted or self.transport.is_closing():
            return
        state = self.conn.their_state
        phase = _IDLE if state is h11.IDLE else _BODY if state is h11.SEND_BODY else _BUSY
        if phase == self._phase:
            return
        self._phase = phase
        self._cancel_deadline()
        waiting = self.guard.waiting
        waiting.pop(self, None)
        limits = self.guard.limits
        if phase == _IDLE:
            waiting[self] = time.monotonic()  # (re)inserted last: the newest
            self._deadline = self.loop.call_later(limits.header_timeout, self._headers_late)
        elif phase == _BODY:
            self._deadline = self.loop.call_later(limits.body_timeout, self._body_late)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self._phase != _IDLE or self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:
            self._late("headers", self.guard.limits.header_timeout)
        else:  # an idle connection, as uvicorn's keep-alive timeout closes it: no answer
            self.transport.close()

    def _body_late(self) -> None:
        self._deadline = None
        if self._phase == _BODY and not self.transport.is_closing():
            self._late("body", self.guard.limits.body_timeout)

    def _late(self, what: str, timeout: float) -> None:
        # ``what`` in the template: headers and bodies are two conditions for RepeatFilter.
        log.warning(
            f"closed a connection from %s: request {what} not complete within %.0f s "
            "(slow or stalled client)",
            _host(self.client), timeout,
        )
        err = OperationTimeoutError(
            f"the request {what} {'were' if what == 'headers' else 'was'} not complete within "
            f"{timeout:.0f} s"
        )
        self._abandon(408, err)

    def evict(self) -> None:
        """Make room for a new connection: this one has no request in progress."""
        self.guard.waiting.pop(self, None)
        self._cancel_deadline()
        if self.conn.trailing_data[0]:
            log.warning(
                "connection limit of %d reached: closed the oldest connection still sending "
                "its request headers (from %s) to admit a new one",
                self.guard.max_connections, _host(self.client),
            )
            err = OperationTimeoutError(
                "the request headers were not complete when the service needed the connection"
            )
            self._abandon(408, err)
        else:
            self.transport.close()
        # connection_lost comes later; the slot is counted free now.
        self._admitted = False
        self.guard.open -= 1
        super().connection_lost(None)

    def _abandon(self, status: int, error: OvfkitError) -> None:
        """Answer ``status`` and close, whatever the request cycle was doing: the application,
        if it is waiting for the body, gets a disconnect and its answer goes nowhere."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            started = cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
            if started:  # part of a response is out: no second one
                self.transport.close()
                return
        self.transport.write(raw_error_reply(status, error))
        self.transport.close()

    # -- writing: a client that stops reading ---------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._stall = self.loop.call_later(self.guard.limits.send_timeout, self._send_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _send_stalled(self) -> None:
        self._stall = None
        log.warning(
            "closed a connection from %s: the client read nothing of the response for %.0f s",
            _host(self.client), self.guard.limits.send_timeout,
        )
        self.transport.abort()  # close() would wait for the buffered bytes to go out

    # -- uvicorn's plain-text answers, in ZStack JSON -------------------------------------------

    def send_400_response(self, msg: str) -> None:
        err = MalformedRequestError(
            "the request is not valid HTTP/1.1 (request line, headers, or headers over "
            f"{_header_limit(self)} bytes)"
        )
        self.transport.write(raw_error_reply(400, err))
        self.transport.close()


def _header_limit(protocol: H11Protocol) -> int:
    limit = protocol.config.h11_max_incomplete_event_size
    return limit if limit is not None else h11._connection.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE


def _host(peer: Any) -> str:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "an unknown peer"


def guarded_protocol(limits: Limits, max_connections: int) -> type[GuardedH11Protocol]:
    """A protocol class for one server, sharing one connection table."""
    guard = _Guard(limits, max_connections)
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})


# -- the server --------------------------------------------------------------------------------


class OvfkitServer(uvicorn.Server):
    """uvicorn's server with the export-aware shutdown of the module docstring. ``drain(grace,
    forced)`` is the application's part: refuse new exports, wait up to ``grace`` seconds for
    the running ones, cancel the rest and wait for their roll-back."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        drain: Callable[[float, Callable[[], bool]], Awaitable[None]],
        grace: float,
        repeat_filter: RepeatFilter | None = None,
    ) -> None:
        super().__init__(config)
        self._drain = drain
        self._grace = grace
        self._repeat_filter = repeat_filter

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        # asyncio gave listen(2) the accept batch as backlog; the kernel's queue may be long.
        for server in self.servers:
            for sock in server.sockets:
                with sock.dup() as listening:
                    listening.listen(LISTEN_BACKLOG)

    async def on_tick(self, counter: int) -> bool:
        if self._repeat_filter is not None and counter % 10 == 0:
            self._repeat_filter.flush()
        return await super().on_tick(counter)

    async def shutdown(self, sockets: Any = None) -> None:
        for server in self.servers:  # stop accepting first, as uvicorn's shutdown does
            server.close()
        started = time.monotonic()
        await self._drain(self._grace, lambda: self.force_exit)
        # What is left (downloads, other requests) gets the rest of the grace period.
        left = self._grace - (time.monotonic() - started)
        self.config.timeout_graceful_shutdown = max(1, int(left))
        await super().shutdown(sockets)
        if self._repeat_filter is not None:
            self._repeat_filter.flush(force=True)


def install_repeat_filter(interval: float = 60.0) -> RepeatFilter:
    """One :class:`RepeatFilter` on the loggers that repeat under load: uvicorn's, asyncio's
    (accept failures) and the service's own."""
    flt = RepeatFilter(interval)
    for name in ("uvicorn.error", "asyncio", "ovfkit.server", "ovfkit.server.http"):
        logging.getLogger(name).addFilter(flt)
    return flt


def serve(
    app: Any,
    *,
    host: str,
    port: int,
    limits: Limits,
    export_workers: int,
    drain: Callable[[float, Callable[[], bool]], Awaitable[None]],
    log_level: str = "info",
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> None:
    """Run ``app`` until SIGTERM/SIGINT, with the limits and shutdown of the module docstring."""
    nofile = raise_nofile_limit()
    max_connections, batch = connection_limit(limits.max_connections, nofile, export_workers)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(limits, max_connections),
        log_level=log_level,
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=limits.keep_alive,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        lifespan="on",
        backlog=batch,
    )
    flt = install_repeat_filter()  # after uvicorn.Config, which sets uvicorn's logging up
    if max_connections < limits.max_connections:
        log.warning(
            "at most %d connections at once (file-descriptor limit %d); raise `ulimit -n` "
            "for more", max_connections, nofile,
        )
    server = OvfkitServer(config, drain=drain, grace=limits.shutdown_grace, repeat_filter=flt)
    server.run()
