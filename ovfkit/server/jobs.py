"""ZStack's asynchronous API jobs: ``202 {"location": ".../api-jobs/<uuid>"}``, then polling.

A job holds the HTTP answer of a call that runs in a worker thread: while it runs, polling gives
``202 {}``; when done, the status and body the synchronous call would have given (200 with the
result, or the error status with ``{"error": ...}``). Finished jobs are kept for ``keep`` seconds
(ZStack keeps API results for a while, then forgets them); jobs live in memory, so a restart of
the service forgets them too (the package records themselves are in SQLite and survive).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..zstack.inventory import new_zstack_uuid

__all__ = ["DEFAULT_JOB_KEEP", "Job", "JobRegistry"]

DEFAULT_JOB_KEEP = 3600.0


@dataclass
class Job:
    uuid: str
    owner: str
    status: int | None = None
    body: dict[str, Any] | None = None
    finished_at: float | None = None

    @property
    def done(self) -> bool:
        return self.status is not None


class JobRegistry:
    """Jobs by uuid, thread-safe: results are set from worker threads, read from the event loop."""

    def __init__(self, *, keep: float = DEFAULT_JOB_KEEP, clock: Callable[[], float] = time.time):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._keep = keep
        self._clock = clock

    def create(self, owner: str) -> Job:
        job = Job(uuid=new_zstack_uuid(), owner=owner)
        with self._lock:
            self._forget_old()
            self._jobs[job.uuid] = job
        return job

    def finish(self, job: Job, status: int, body: dict[str, Any]) -> None:
        with self._lock:
            job.body = body
            job.finished_at = self._clock()
            job.status = status

    def get(self, uuid: str) -> Job | None:
        with self._lock:
            self._forget_old()
            return self._jobs.get(uuid)

    def _forget_old(self) -> None:
        limit = self._clock() - self._keep
        old = [
            u for u, j in self._jobs.items() if j.finished_at is not None and j.finished_at < limit
        ]
        for uuid in old:
            del self._jobs[uuid]
