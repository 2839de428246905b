"""Running exports and the service's shutdown: count them, refuse new ones once the service is
stopping, give the running ones a grace period, then cancel them (they roll back) and wait.

Every export, synchronous or in job form, runs inside :meth:`ExportGate.running`; the runner
(:class:`ovfkit.server.runner.OvfkitServer`) calls :meth:`ExportGate.drain` when a SIGTERM
arrives, before uvicorn closes the connections, so a client waiting on a synchronous export gets
its answer (the inventory, or SYS.1017 in ZStack JSON) and no record is left ``Exporting``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio

from ..errors import NotReadyError, OperationCancelledError

__all__ = ["ROLLBACK_WAIT", "ExportGate", "ShuttingDownError"]

log = logging.getLogger("ovfkit.server")

# How long a cancelled export may take to roll back (remove its partial file and record)
# before the service exits anyway; start-up recovery then finishes the job.
ROLLBACK_WAIT = 60.0


class ShuttingDownError(NotReadyError):
    """A new export asked for while the service is stopping (SYS.1010)."""


class ExportGate:
    """Counts running exports (on the event loop); ``stopping`` is their cancel token."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.draining = False
        self.grace: float | None = None  # set when running exports were cancelled by shutdown
        self._running = 0

    @property
    def running_count(self) -> int:
        return self._running

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        if self.draining:
            raise ShuttingDownError(
                "the service is shutting down; no new export is started (send it to the "
                "service again once it is back)"
            )
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1

    async def _wait(self, seconds: float, forced: Callable[[], bool]) -> None:
        deadline = time.monotonic() + seconds
        while self._running and time.monotonic() < deadline and not forced():
            await anyio.sleep(0.05)

    async def drain(self, grace: float, forced: Callable[[], bool] = lambda: False) -> None:
        """Refuse new exports; wait up to ``grace`` s (less if ``forced()`` turns true) for the
        running ones; cancel the rest and wait up to :data:`ROLLBACK_WAIT` for their roll-back."""
        self.draining = True
        if self._running:
            log.warning(
                "shutting down: waiting up to %.0f s for %d running export(s)", grace, self._running
            )
            await self._wait(grace, forced)
        if self._running:
            log.warning(
                "shutting down: cancelling %d export(s) still running after %.0f s; they roll back",
                self._running, grace,
            )
            self.grace = grace
            self.stopping.set()
            await self._wait(ROLLBACK_WAIT, lambda: False)
            if self._running:
                log.error(
                    "shutting down with %d export(s) still rolling back; the next start "
                    "finishes the roll-back", self._running,
                )
        self.stopping.set()  # jobs that start despite everything stop at their first check

    def shutdown_error(self, error: Mapping[str, Any]) -> dict[str, Any]:
        """The error of an export this gate cancelled, said as such (the original is the
        cause); other errors unchanged."""
        if self.grace is None or error.get("code") != OperationCancelledError.code:
            return dict(error)
        out = OperationCancelledError(
            f"the service shut down before the export finished (grace period {self.grace:.0f} "
            "s); the export was rolled back, nothing was kept: export it again"
        ).to_error_code()
        out["cause"] = dict(error)
        return out
