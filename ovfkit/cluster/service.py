"""The API node's side of the cluster: ExportVmOvaPackage checked here, run by a worker.

:meth:`ClusterService.submit` makes the checks that need no storage (fields, VM found and
Stopped, backup storage known, one package per VM, a worker able to take the job), then creates
the package record and the job in one transaction and publishes the job's message to the queue
of the least loaded group of capable workers. The synchronous API waits on the job's row
(:meth:`ClusterService.wait`); the job form answers its uuid and is polled from any API node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from ..db import Database
from ..db.packages import DuplicateVmError, already_exported_message
from ..errors import InvalidArgumentError, NotFoundError, OperationFailedError, OvfkitError
from ..progress import CancelToken
from ..zstack.catalog import VmResolver, unwrap_vm_inventory
from ..zstack.inventory import (
    NAME_MAX,
    ExportVmOvaPackageRequest,
    ImagePackageInventory,
    ImagePackageState,
    Reply,
    new_zstack_uuid,
)
from .celery_app import make_celery
from .jobs import Job, JobStore
from .routing import needs_of, unroutable
from .worker import ClusterTimings, request_json

__all__ = ["ClusterService"]

_log = logging.getLogger(__name__)


class ClusterService:
    def __init__(
        self,
        db: Database,
        broker_url: str,
        *,
        resolver: VmResolver,
        known_storages: Mapping[str, Any] | None = None,
        timings: ClusterTimings | None = None,
        reaper: bool = True,
    ) -> None:
        self.db = db
        self.store = JobStore(db)
        self.resolver = resolver
        self.known_storages = dict(known_storages or {})
        self.timings = timings or ClusterTimings()
        self.celery = make_celery(broker_url, visibility_timeout=self.timings.visibility_timeout)
        self.dispatcher = self.timings.dispatcher(self.store, self.celery)
        self._stop = threading.Event()
        if reaper:
            threading.Thread(target=self._reap, name="ovfkit-reaper", daemon=True).start()

    def _reap(self) -> None:
        while not self._stop.wait(self.timings.reap_every):
            try:
                self.dispatcher.reap()
            except OvfkitError as exc:
                _log.warning("reaper: %s", exc)
            except Exception:
                _log.exception("reaper failed")

    def submit(
        self,
        request: ExportVmOvaPackageRequest,
        account_uuid: str,
        job_uuid: str | None = None,
        webhook: str | None = None,
    ) -> Job:
        """Queue an export as job ``job_uuid`` (default: a new uuid); OvfkitError for a request
        that cannot be queued."""
        from ..zstack.api import _validate_request

        # The tags are checked as the embedded API checks them, and kept with the package.
        vm_uuid, bs_uuid, system_tags, user_tags = _validate_request(request)
        found = self.resolver(vm_uuid)
        if found is None:
            raise NotFoundError(
                f"invalid field[vmUuid], resource[uuid:{vm_uuid}, type:VmInstanceVO] not found"
            )
        vm = unwrap_vm_inventory(found)
        workers = self.dispatcher.workers()
        if bs_uuid not in self.known_storages and bs_uuid not in (
            self.store.known_backup_storages()
        ):
            raise NotFoundError(
                f"invalid field[backupStorageUuid], resource[uuid:{bs_uuid}, "
                "type:BackupStorageVO] not found"
            )
        if vm.get("state") != "Stopped":
            raise InvalidArgumentError("Only vm in state: Stopped can be exported.")
        holder = self.store.packages.find_by_vm(vm_uuid)
        if holder is not None:
            raise DuplicateVmError(
                already_exported_message(
                    vm_uuid, holder.inventory.uuid, holder.account_uuid, account_uuid
                )
            )
        package_uuid = request.resource_uuid or new_zstack_uuid()
        if self.store.packages.get(package_uuid) is not None:
            raise InvalidArgumentError(
                f"resourceUuid[{package_uuid}] is already used by another image package"
            )
        queue = self.dispatcher.route(vm, bs_uuid, workers)
        if queue is None:
            raise OperationFailedError(unroutable(workers, needs_of(vm), bs_uuid))
        name = request.name if request.name is not None else (
            f"exported-vm-{vm.get('name') or vm_uuid}"[:NAME_MAX]
        )
        description = request.description if request.description is not None else (
            f"source vm uuid: {vm_uuid}"
        )
        package = ImagePackageInventory(
            uuid=package_uuid, name=name, description=description, vm_uuid=vm_uuid,
            backup_storage_uuid=bs_uuid, state=ImagePackageState.EXPORTING,
        )
        job_uuid = job_uuid or new_zstack_uuid()
        self.store.submit(
            job_uuid, account_uuid, package, f"{package_uuid}.ova", request_json(request),
            vm, queue, system_tags=system_tags, user_tags=user_tags, webhook=webhook,
        )
        self.dispatcher.publish(job_uuid, queue)
        job = self.store.get(job_uuid)
        assert job is not None
        return job

    def wait(
        self, job_uuid: str, *, cancel: CancelToken | None = None, timeout: float | None = None
    ) -> Job | None:
        """The job once done; None if ``cancel`` was set or ``timeout`` passed first (the job
        goes on: its answer stays pollable)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Polling the job's row by primary key is cheap; short first, since most small exports
        # end within a second, then at most every 0.2 s.
        delay = 0.02
        while True:
            try:
                job = self.store.get(job_uuid)
            except OvfkitError as exc:  # the database restarting: wait for it
                _log.warning("waiting for job %s: %s", job_uuid, exc)
                job = None
            if job is not None and job.done:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                return None
            if cancel is not None and cancel.wait(delay):
                return None
            if cancel is None:
                time.sleep(delay)
            delay = min(delay * 1.3, 0.2)

    def export(
        self,
        request: ExportVmOvaPackageRequest,
        account_uuid: str = "",
        *,
        job_uuid: str | None = None,
        cancel: CancelToken | None = None,
        webhook: str | None = None,
    ) -> Reply:
        """ExportVmOvaPackage through a worker, synchronously, as the single-host API;
        ``webhook`` is kept with the job (:meth:`JobStore.claim_webhook`)."""
        try:
            job = self.submit(request, account_uuid, job_uuid, webhook)
        except OvfkitError as exc:
            return Reply.failure(exc)
        done = self.wait(job.uuid, cancel=cancel)
        if done is None:
            from ..errors import OperationCancelledError

            return Reply.failure(OperationCancelledError(
                f"stopped waiting for job {job.uuid}; poll /zstack/v1/api-jobs/{job.uuid}"
            ))
        return self.reply(done)

    def reply(self, job: Job) -> Reply:
        body = job.body or {}
        if job.status == 200:
            record = self.store.packages.get(job.package_uuid)
            if record is not None:
                return Reply.ok(record.inventory)
        error = body.get("error") or {"code": "SYS.1000", "description": "unknown failure"}
        return Reply(success=False, error=error)

    def close(self) -> None:
        self._stop.set()
        self.celery.close()
