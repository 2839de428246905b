"""The Celery application of the cluster (Redis as broker).

Settings and why:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only when its
  export has ended, so a worker killed mid-export leaves it with the broker, which hands it out
  again (Redis: once ``visibility_timeout`` has passed).
- ``worker_prefetch_multiplier=1``: a worker holds no more messages than it runs, so a queued
  export waits for the first free member of its group, not behind a busy one.
- JSON only, no results in the broker (``task_ignore_result``): the answer of a job is in the
  database, where any API node can read it, across restarts of the broker or of the node.
- The message carries only the job's uuid; the database says what to do, so a message
  delivered twice (redelivery, or a re-publish after a lost lease) does the work once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._extras import needs_extra

with needs_extra("cluster", "the many-host service"):
    from celery import Celery

__all__ = ["EXPORT_TASK", "make_celery"]

EXPORT_TASK = "ovfkit.export"


def make_celery(
    broker_url: str,
    *,
    visibility_timeout: float = 3600.0,
    run_job: Callable[[str], None] | None = None,
) -> Celery:
    """A Celery app on ``broker_url``; ``run_job`` (workers only) runs the export task."""
    app = Celery("ovfkit", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": visibility_timeout},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_publish_retry_policy={
            "max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0,
        },
        # A broker that restarts does not stop running exports: their result goes to the
        # database, and the unacknowledged message, handed out again, finds the job done.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_default_queue="ovfkit.default",
        broker_connection_timeout=5,
    )

    def export(job_uuid: str) -> None:
        if run_job is None:
            raise RuntimeError("this process does not run exports")
        run_job(job_uuid)

    task: Any = app.task(name=EXPORT_TASK, acks_late=True)
    task(export)
    return app
