"""ZStack's asynchronous API jobs: ``202 {"location": ".../api-jobs/<uuid>", "apiTimeout": ms}``,
then polling.

A job holds the HTTP answer of a call that runs in a worker: while it runs, polling gives
``202 {}``; when done, ``200`` with the result or ``503`` with ``{"error": ...}``
(RestServer.handleJobQuery). Finished jobs are kept for ``keep`` seconds (ZStack keeps API
results for a while, then forgets them); jobs live in memory, so a restart of the service
forgets them too (the package records themselves are in SQLite and survive).

Which calls take the job form (:func:`job_form`), as ZStack's SDKs expect: the APIs whose SDK
action polls (``NEED_POLL = True`` / ``info.needPoll = true`` in the zstack repository's sdk:
ExportVmOvaPackage, UpdateImagePackage, DeleteImagePackage, RenewSession), when the request
carries ``X-Job-UUID`` (the SDKs send it on every call; it becomes the job's uuid) or
``X-Web-Hook``, or ovfkit's own ``X-Job-Mode: async``. ``X-Job-Mode: sync`` forces the
synchronous answer. Everything else answers synchronously (the SDK raises on a 202 for an API
it does not poll). ``X-API-Timeout`` (seconds) sets the ``apiTimeout`` reported in the 202
(milliseconds; ZStack's default is the API's @DefaultTimeout, else 30 minutes).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..zstack.inventory import new_zstack_uuid
from .errors import MalformedRequestError

__all__ = [
    "API_TIMEOUTS",
    "DEFAULT_JOB_KEEP",
    "JOB_MODE_HEADER",
    "JOB_UUID_HEADER",
    "WEBHOOK_HEADER",
    "Job",
    "JobForm",
    "JobRegistry",
    "current_job",
    "job_form",
    "job_uuid_header",
]

DEFAULT_JOB_KEEP = 3600.0

# The job whose work is running (set by the job runner, seen in the worker thread): a backend
# that runs the work elsewhere names it after the job (ovfkit.cluster.api_node).
current_job: ContextVar[Job | None] = ContextVar("ovfkit_current_job", default=None)

JOB_MODE_HEADER = "X-Job-Mode"
# RestConstants of ZStack's rest module.
JOB_UUID_HEADER = "X-Job-UUID"
WEBHOOK_HEADER = "X-Web-Hook"
API_TIMEOUT_HEADER = "X-API-Timeout"
JOB_SUCCESS_HEADER = "X-Job-Success"

# ApiTimeoutManagerImpl: an API message's @DefaultTimeout, else "30m".
# APIExportVmOvaPackageMsg: @DefaultTimeout(timeunit = HOURS, value = 72).
_DEFAULT_TIMEOUT_MS = 30 * 60 * 1000
API_TIMEOUTS: Mapping[str, int] = {
    "ExportVmOvaPackage": 72 * 3600 * 1000,
    "UpdateImagePackage": _DEFAULT_TIMEOUT_MS,
    "DeleteImagePackage": _DEFAULT_TIMEOUT_MS,
    "RenewSession": _DEFAULT_TIMEOUT_MS,
}

# ZStack only checks the length (32); the uuid goes into the job's URL, so letters and digits.
_JOB_UUID_RE = re.compile(r"[0-9A-Za-z]{32}")


def job_uuid_header(headers: Mapping[str, str]) -> str | None:
    """``X-Job-UUID`` if given; 400 with RestServer's text unless it is a dash-less UUID."""
    value = headers.get(JOB_UUID_HEADER)
    if value is None:
        return None
    if not _JOB_UUID_RE.fullmatch(value.strip()):
        raise MalformedRequestError(
            f"Invalid header[{JOB_UUID_HEADER}], it must be a UUID with '-' stripped"
        )
    return value.strip()


@dataclass(frozen=True)
class JobForm:
    """How a job-form call was asked for: its uuid (None: a new one), its webhook, apiTimeout."""

    uuid: str | None
    webhook: str | None
    api_timeout_ms: int


def job_form(headers: Mapping[str, str], api: str) -> JobForm | None:
    """The job form asked for by ``headers`` for ``api`` (a key of :data:`API_TIMEOUTS`), or
    None for the synchronous answer. Header checks answer 400."""
    uuid = job_uuid_header(headers)
    webhook = headers.get(WEBHOOK_HEADER)
    mode = headers.get(JOB_MODE_HEADER)
    if mode is not None and mode.strip().lower() not in ("sync", "async"):
        raise MalformedRequestError(f"{JOB_MODE_HEADER} must be 'sync' or 'async', not {mode!r}")
    if mode is not None and mode.strip().lower() == "sync":
        return None
    if mode is None and uuid is None and webhook is None:
        return None
    timeout = API_TIMEOUTS[api]
    given = headers.get(API_TIMEOUT_HEADER)
    if given is not None:
        if not given.strip().isdigit() or len(given.strip()) > 12 or int(given) == 0:
            raise MalformedRequestError(
                f"Invalid header[{API_TIMEOUT_HEADER}], timeout is requested in seconds"
            )
        timeout = int(given) * 1000
    return JobForm(uuid, webhook, timeout)


@dataclass
class Job:
    uuid: str
    owner: str
    # Jobs started with AccessKey authentication: the SDKs poll them with no usable
    # credential ("OAuth None"), and ZStack's RestServer checks none on api-jobs, so the job
    # uuid is the capability.
    open: bool = False
    webhook: str | None = None
    api_timeout_ms: int = _DEFAULT_TIMEOUT_MS
    status: int | None = None
    body: dict[str, Any] | None = None
    finished_at: float | None = None

    @property
    def done(self) -> bool:
        return self.status is not None


class DuplicateJobError(MalformedRequestError):
    """RestServer: a POST/PUT/DELETE whose X-Job-UUID names a job already known (400)."""


class JobRegistry:
    """Jobs by uuid, thread-safe: results are set from worker threads, read from the event loop."""

    def __init__(self, *, keep: float = DEFAULT_JOB_KEEP, clock: Callable[[], float] = time.time):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._keep = keep
        self._clock = clock

    def create(
        self,
        owner: str,
        *,
        uuid: str | None = None,
        open: bool = False,
        webhook: str | None = None,
        api_timeout_ms: int = _DEFAULT_TIMEOUT_MS,
    ) -> Job:
        job = Job(
            uuid=uuid or new_zstack_uuid(), owner=owner, open=open, webhook=webhook,
            api_timeout_ms=api_timeout_ms,
        )
        with self._lock:
            self._forget_old()
            if job.uuid in self._jobs:
                raise DuplicateJobError(f"Duplicate job uuid[{job.uuid}]")
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
