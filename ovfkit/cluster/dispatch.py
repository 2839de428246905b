"""Publishing jobs and the reaper, shared by API nodes and workers.

:meth:`Dispatcher.reap` is what keeps a job from hanging: run every few seconds by every node,
it (1) puts back in a queue the jobs whose worker's lease ran out (killed, frozen, cut off),
re-routed since that worker's group may be gone; (2) publishes again the queued jobs whose
message may have been lost (a broker restarted without its data); (3) fails, with SYS.1006,
the queued jobs no live worker can take any more. Each step is a conditional UPDATE first, so
nodes reaping at the same time act on a job once.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from ..errors import OperationFailedError, OvfkitError
from ..zstack.inventory import Reply
from .jobs import Job, JobStore
from .routing import WorkerInfo, choose_queue, needs_of, unroutable

__all__ = ["Dispatcher", "ReapReport"]

_log = logging.getLogger(__name__)


@dataclass
class ReapReport:
    requeued: int = 0
    republished: int = 0
    failed: int = 0


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        celery: Any,
        *,
        worker_ttl_ms: int,
        redispatch_after_ms: int,
        unroutable_grace_ms: int,
    ) -> None:
        self.store = store
        self.celery = celery
        self.worker_ttl_ms = worker_ttl_ms
        self.redispatch_after_ms = redispatch_after_ms
        self.unroutable_grace_ms = unroutable_grace_ms

    def workers(self) -> list[WorkerInfo]:
        return self.store.live_workers(self.worker_ttl_ms)

    def route(self, vm: Any, backup_storage: str, workers: list[WorkerInfo]) -> str | None:
        return choose_queue(workers, needs_of(vm), backup_storage, self.store.load())

    def publish(self, job_uuid: str, queue: str) -> bool:
        """Send the job's message; False if the broker cannot be reached now (the job stays
        queued in the database and the reaper publishes it again later)."""
        from .celery_app import EXPORT_TASK

        try:
            self.celery.send_task(EXPORT_TASK, args=[job_uuid], queue=queue, retry=True)
        except Exception as exc:  # kombu raises OperationalError and socket errors alike
            _log.warning("cannot publish job %s to %s now: %s", job_uuid, queue, exc)
            with contextlib.suppress(OvfkitError):
                self.store.undispatched(job_uuid)  # the next reap publishes it
            return False
        return True

    def reap(self) -> ReapReport:
        from ..db.packages import now_ms

        report = ReapReport()
        workers = self.workers()
        for job in self.store.expired():
            queue = self.route(job.vm, job.backup_storage_uuid, workers) or job.queue
            if self.store.requeue_expired(job, queue):
                _log.warning(
                    "job %s (vm %s): the lease of worker %s ran out; queued again on %s",
                    job.uuid, job.vm_uuid, job.worker, queue,
                )
                report.requeued += 1
                self.publish(job.uuid, queue)
        now = now_ms()
        for job in self.store.queued():
            target = self.route(job.vm, job.backup_storage_uuid, workers)
            if target is None:
                if job.dispatched < now - self.unroutable_grace_ms and self.fail_unroutable(
                    job, workers
                ):
                    report.failed += 1
                continue
            stale = job.dispatched < now - self.redispatch_after_ms
            if (stale or target != job.queue) and self.store.redispatch(job, target):
                report.republished += 1
                self.publish(job.uuid, target)
        return report

    def fail_unroutable(self, job: Job, workers: list[WorkerInfo]) -> bool:
        error = OperationFailedError(
            unroutable(workers, needs_of(job.vm), job.backup_storage_uuid)
        )
        done, _ = self.store.finish_failed(job, None, 503, Reply.failure(error).to_json())
        if done:
            _log.warning("job %s failed: %s", job.uuid, error.details)
        return done
