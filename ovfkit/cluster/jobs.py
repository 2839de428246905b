"""Export jobs and workers in the shared database: the state every node agrees on.

A job goes ``queued`` -> ``running`` (a worker holds its lease) -> ``done`` (its HTTP answer is
stored). Every transition is one conditional UPDATE, so two nodes acting at once cannot both
win: a job is claimed by one worker, finished once, and a finish by a worker that lost its lease
changes nothing. The lease is renewed by the running worker's heartbeat; a lease that ran out
belongs to a dead or cut-off worker, and any node may put the job back in the queue
(:meth:`JobStore.requeue_expired`). ``attempts`` counts claims: the fencing token of a finish.

The job's ImagePackage record is created ``Exporting`` in the same transaction as the job, so
the ``vm_uuid`` constraint of the package table is what keeps one export per VM across hosts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, delete, func, insert, select, update

from ..db import Database
from ..db.packages import PackageRecord, PackageStore, now_ms
from ..db.schema import cluster_workers as W
from ..db.schema import export_jobs as J
from ..errors import InvalidArgumentError
from ..zstack.inventory import ImagePackageInventory
from .routing import Reach, WorkerInfo

__all__ = ["Job", "JobStore"]

QUEUED, RUNNING, DONE = "queued", "running", "done"
# export_jobs.webhook_state
WEBHOOK_PENDING, WEBHOOK_SENT, WEBHOOK_FAILED = "pending", "sent", "failed"


@dataclass(frozen=True)
class Job:
    uuid: str
    account_uuid: str
    package_uuid: str
    vm_uuid: str
    backup_storage_uuid: str
    request: Mapping[str, Any]
    vm: Mapping[str, Any]
    queue: str
    state: str
    worker: str | None
    worker_name: str | None
    lease_until: int | None
    attempts: int
    status: int | None
    body: Mapping[str, Any] | None
    dispatched: int
    webhook: str | None = None
    webhook_state: str | None = None

    @property
    def done(self) -> bool:
        return self.state == DONE


def _job(row: Row[Any]) -> Job:
    m = row._mapping
    return Job(
        uuid=m["uuid"], account_uuid=m["account_uuid"], package_uuid=m["package_uuid"],
        vm_uuid=m["vm_uuid"], backup_storage_uuid=m["backup_storage_uuid"],
        request=json.loads(m["request"]), vm=json.loads(m["vm"]), queue=m["queue"],
        state=m["state"], worker=m["worker"], worker_name=m["worker_name"],
        lease_until=m["lease_until"], attempts=m["attempts"], status=m["status"],
        body=None if m["body"] is None else json.loads(m["body"]), dispatched=m["dispatched"],
        webhook=m["webhook"], webhook_state=m["webhook_state"],
    )


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.packages = PackageStore(db)

    # -- jobs -----------------------------------------------------------------------------------

    def submit(
        self,
        job_uuid: str,
        account_uuid: str,
        package: ImagePackageInventory,
        install_path: str,
        request: Mapping[str, Any],
        vm: Mapping[str, Any],
        queue: str,
        *,
        system_tags: Sequence[str] = (),
        user_tags: Sequence[str] = (),
        webhook: str | None = None,
    ) -> None:
        """The package record (``Exporting``) and its queued job, in one transaction.
        DuplicateVmError if the VM has a package or a running export, on any node.
        ``webhook``: the job form's X-Web-Hook, to be sent by any API node once done."""
        now = now_ms()
        with self.db.begin() as conn:
            if conn.execute(select(J.c.uuid).where(J.c.uuid == job_uuid)).first() is not None:
                raise InvalidArgumentError(f"api job[uuid:{job_uuid}] already exists")
            self.packages.insert_exporting(
                conn, package, install_path, account_uuid=account_uuid or None,
                system_tags=system_tags, user_tags=user_tags,
            )
            conn.execute(
                insert(J).values(
                    uuid=job_uuid, account_uuid=account_uuid, package_uuid=package.uuid,
                    vm_uuid=package.vm_uuid, backup_storage_uuid=package.backup_storage_uuid,
                    request=json.dumps(request), vm=json.dumps(vm), queue=queue, state=QUEUED,
                    attempts=0, created=now, updated=now, dispatched=now, webhook=webhook,
                    webhook_state=None if webhook is None else WEBHOOK_PENDING,
                )
            )

    def get(self, uuid: str) -> Job | None:
        with self.db.connect() as conn:
            row = conn.execute(select(J).where(J.c.uuid == uuid)).first()
        return None if row is None else _job(row)

    def claim(self, uuid: str, worker: str, lease_ms: int, name: str = "") -> Job | None:
        """Take a queued job, or one whose lease ran out; the job (attempts counted) or None
        if it is done or another worker holds a live lease."""
        now = now_ms()
        with self.db.begin() as conn:
            count = conn.execute(
                update(J)
                .where(
                    J.c.uuid == uuid,
                    (J.c.state == QUEUED) | ((J.c.state == RUNNING) & (J.c.lease_until < now)),
                )
                .values(state=RUNNING, worker=worker, worker_name=name[:255],
                        lease_until=now + lease_ms,
                        attempts=J.c.attempts + 1, updated=now)
            ).rowcount
            if count != 1:
                return None
            return _job(conn.execute(select(J).where(J.c.uuid == uuid)).one())

    def _mine(self, job: Job, worker: str) -> Any:
        return (
            (J.c.uuid == job.uuid) & (J.c.state == RUNNING) & (J.c.worker == worker)
            & (J.c.attempts == job.attempts)
        )

    def renew(self, job: Job, worker: str, lease_ms: int) -> bool:
        """Extend the lease; False if it is no longer this worker's (the export must stop)."""
        now = now_ms()
        with self.db.begin() as conn:
            return bool(
                conn.execute(
                    update(J).where(self._mine(job, worker)).values(lease_until=now + lease_ms)
                ).rowcount
            )

    def finish_exported(
        self, job: Job, worker: str, *, export_url: str, md5_sum: str, size: int,
        download_token: str | None = None, body: Mapping[str, Any] | None = None,
    ) -> bool:
        """Mark the package Exported and the job done with a 200 answer, together; False (and
        nothing changed) if the lease was lost. ``body`` defaults to the package's inventory;
        ``download_token``: the secret in ``export_url``."""
        now = now_ms()
        with self.db.begin() as conn:
            done = conn.execute(
                update(J).where(self._mine(job, worker))
                .values(state=DONE, status=200, lease_until=None, updated=now)
            ).rowcount
            if done != 1:
                return False
            self.packages.mark_exported(
                job.package_uuid, export_url=export_url, md5_sum=md5_sum, size=size,
                download_token=download_token, conn=conn,
            )
            if body is None:
                record = self.packages.get_in(conn, job.package_uuid)
                body = {"inventory": record.inventory.to_json() if record else None}
            conn.execute(update(J).where(J.c.uuid == job.uuid).values(body=json.dumps(body)))
        return True

    def finish_failed(
        self, job: Job, worker: str | None, status: int, body: Mapping[str, Any]
    ) -> tuple[bool, PackageRecord | None]:
        """The job done with an error answer and its package record deleted (its files queued
        for removal), together. ``worker`` None: a queued job nobody took. (finished, the
        deleted record)."""
        now = now_ms()
        cond = self._mine(job, worker) if worker is not None else (
            (J.c.uuid == job.uuid) & (J.c.state == QUEUED)
        )
        with self.db.begin() as conn:
            done = conn.execute(
                update(J).where(cond).values(
                    state=DONE, status=status, body=json.dumps(body), lease_until=None,
                    updated=now,
                )
            ).rowcount
            if done != 1:
                return False, None
            return True, self.packages.delete(job.package_uuid, only_exporting=True, conn=conn)

    def expired(self) -> list[Job]:
        """Running jobs whose lease ran out."""
        with self.db.connect() as conn:
            rows = conn.execute(
                select(J).where(J.c.state == RUNNING, J.c.lease_until < now_ms())
            ).all()
        return [_job(r) for r in rows]

    def queued(self, dispatched_before: int | None = None) -> list[Job]:
        stmt = select(J).where(J.c.state == QUEUED)
        if dispatched_before is not None:
            stmt = stmt.where(J.c.dispatched < dispatched_before)
        with self.db.connect() as conn:
            return [_job(r) for r in conn.execute(stmt.order_by(J.c.created)).all()]

    def requeue_expired(self, job: Job, queue: str) -> bool:
        """Put a job whose lease ran out back in the queue (``queue``: its group may be gone);
        True if this call did it (then the caller publishes the message)."""
        now = now_ms()
        with self.db.begin() as conn:
            return bool(
                conn.execute(
                    update(J)
                    .where(J.c.uuid == job.uuid, J.c.state == RUNNING,
                           J.c.attempts == job.attempts, J.c.lease_until < now)
                    .values(state=QUEUED, worker=None, lease_until=None, queue=queue,
                            dispatched=now, updated=now)
                ).rowcount
            )

    def redispatch(self, job: Job, queue: str) -> bool:
        """Mark a queued job as published again (its message may have been lost); True if this
        call did it."""
        now = now_ms()
        with self.db.begin() as conn:
            return bool(
                conn.execute(
                    update(J)
                    .where(J.c.uuid == job.uuid, J.c.state == QUEUED,
                           J.c.dispatched == job.dispatched)
                    .values(queue=queue, dispatched=now, updated=now)
                ).rowcount
            )

    def undispatched(self, uuid: str) -> None:
        """Its message could not be sent: the reaper's next round publishes it."""
        with self.db.begin() as conn:
            conn.execute(
                update(J).where(J.c.uuid == uuid, J.c.state == QUEUED).values(dispatched=0)
            )

    def load(self) -> dict[str, int]:
        """Jobs queued or running, by queue."""
        with self.db.connect() as conn:
            rows = conn.execute(
                select(J.c.queue, func.count()).where(J.c.state != DONE).group_by(J.c.queue)
            ).all()
        return {r[0]: int(r[1]) for r in rows}

    def forget_done(self, older_than_ms: int) -> int:
        """Remove done jobs older than that, except those whose webhook is still to send."""
        with self.db.begin() as conn:
            return int(
                conn.execute(
                    delete(J).where(
                        J.c.state == DONE, J.c.updated < now_ms() - older_than_ms,
                        J.c.webhook_state.is_(None) | (J.c.webhook_state != WEBHOOK_PENDING),
                    )
                ).rowcount
            )

    # -- webhooks -------------------------------------------------------------------------------

    def claim_webhook(self, uuid: str, hold_ms: int, *, unclaimed_for_ms: int = 0) -> bool:
        """Take the sending of a done job's pending webhook for ``hold_ms``: nobody holds it,
        or its holder's claim ran out. ``unclaimed_for_ms``: only if the job has been done
        that long (another node's reaper leaves the node that took the request time to send
        it first)."""
        now = now_ms()
        free = J.c.webhook_until.is_(None) & (J.c.updated <= now - unclaimed_for_ms)
        with self.db.begin() as conn:
            return bool(
                conn.execute(
                    update(J)
                    .where(
                        J.c.uuid == uuid, J.c.state == DONE,
                        J.c.webhook_state == WEBHOOK_PENDING,
                        free | (J.c.webhook_until < now),
                    )
                    .values(webhook_until=now + hold_ms)
                ).rowcount
            )

    def webhook_done(self, uuid: str, sent: bool) -> None:
        """The webhook was accepted (``sent``), or refused through every retry: not again."""
        with self.db.begin() as conn:
            conn.execute(
                update(J)
                .where(J.c.uuid == uuid, J.c.webhook_state == WEBHOOK_PENDING)
                .values(webhook_state=WEBHOOK_SENT if sent else WEBHOOK_FAILED, webhook_until=None)
            )

    def pending_webhooks(self, unclaimed_for_ms: int) -> list[str]:
        """Done jobs whose webhook nobody sent nor holds: unclaimed ``unclaimed_for_ms`` after
        the job ended, or claimed by a node whose claim ran out (it died sending)."""
        now = now_ms()
        with self.db.connect() as conn:
            rows = conn.execute(
                select(J.c.uuid).where(
                    J.c.state == DONE, J.c.webhook_state == WEBHOOK_PENDING,
                    (J.c.webhook_until.is_(None) & (J.c.updated <= now - unclaimed_for_ms))
                    | (J.c.webhook_until < now),
                ).order_by(J.c.updated)
            ).all()
        return [r[0] for r in rows]

    # -- workers --------------------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo) -> None:
        now = now_ms()
        with self.db.begin() as conn:
            conn.execute(delete(W).where(W.c.uuid == info.uuid))
            conn.execute(
                insert(W).values(
                    uuid=info.uuid, name=info.name, queue=info.reach.queue,
                    roots=json.dumps(info.reach.roots),
                    backup_storages=json.dumps(info.reach.backup_storages),
                    concurrency=info.concurrency, started=now, heartbeat=now,
                    lease_ms=info.lease_ms,
                )
            )

    def worker_heartbeat(self, uuid: str) -> bool:
        with self.db.begin() as conn:
            return bool(
                conn.execute(update(W).where(W.c.uuid == uuid).values(heartbeat=now_ms())).rowcount
            )

    def unregister_worker(self, uuid: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(W).where(W.c.uuid == uuid))

    def live_workers(self, ttl_ms: int) -> list[WorkerInfo]:
        """Workers whose heartbeat is younger than their own lease (``ttl_ms`` for a row that
        has none); rows silent for ten leases are removed."""
        now = now_ms()
        lease = func.coalesce(W.c.lease_ms, ttl_ms)
        with self.db.begin() as conn:
            conn.execute(delete(W).where(W.c.heartbeat < now - 10 * lease))
            rows = conn.execute(
                select(W).where(W.c.heartbeat >= now - lease).order_by(W.c.name)
            ).all()
        return [
            WorkerInfo(
                uuid=r.uuid, name=r.name,
                reach=Reach(tuple(json.loads(r.roots)), tuple(json.loads(r.backup_storages))),
                concurrency=r.concurrency, lease_ms=r.lease_ms,
            )
            for r in rows
        ]

    def known_backup_storages(self) -> set[str]:
        """The backup storages of every worker still registered, live or not (a storage whose
        writers are all down is unreachable, SYS.1006, not unknown, SYS.1003)."""
        with self.db.connect() as conn:
            rows = conn.execute(select(W.c.backup_storages)).all()
        return {bs for r in rows for bs in json.loads(r[0])}

