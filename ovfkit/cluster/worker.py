"""``ovfkit worker``: a Celery worker near the storage, running exports for the whole cluster.

At start the worker declares its reach (:class:`~ovfkit.cluster.routing.Reach`): the storage
roots of its data folder that exist and can be read, and the backup storages of its config that
answer and (local ones) can be written. It consumes the queue of that reach. Threads pool: an
export is I/O and zlib work that releases the GIL, and one process means a kill -9 stops the
export and its heartbeat together, so its lease runs out and another node reclaims the job.

Running a job (:meth:`WorkerRuntime.run_job`): claim it in the database (a lease of
``lease`` seconds, renewed every third of it); if an earlier attempt died, remove what it left on
the backup storage; export with the worker's own roots and storages; then mark the package
Exported and the job done in one transaction, only if the lease is still this worker's. Any
failure deletes the package record and stores the error as the job's answer. An export whose
lease cannot be renewed stops (SYS.1017) before the lease could run out under it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..db.packages import new_download_token
from ..errors import InternalError, OperationFailedError, OvfkitError, OvfkitIOError
from ..zstack.config import Config, load_config
from ..zstack.inventory import ExportVmOvaPackageRequest, Reply
from ..zstack.storage import open_backup_storage
from .dispatch import Dispatcher
from .jobs import Job, JobStore
from .routing import Reach, WorkerInfo

__all__ = ["ClusterTimings", "WorkerRuntime", "declare_reach"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class ClusterTimings:
    """Seconds. ``lease``: how long a silent worker keeps its job; the worker ttl and the
    reaper's period follow from it."""

    lease: float = 60.0
    max_attempts: int = 3
    visibility_timeout: float = 3600.0

    @property
    def lease_ms(self) -> int:
        return int(self.lease * 1000)

    @property
    def worker_ttl_ms(self) -> int:
        return int(self.lease * 1000)

    @property
    def reap_every(self) -> float:
        return max(0.2, self.lease / 3)

    def dispatcher(self, store: JobStore, celery: Any) -> Dispatcher:
        return Dispatcher(
            store, celery, worker_ttl_ms=self.worker_ttl_ms,
            redispatch_after_ms=int(max(30.0, 5 * self.lease) * 1000),
            unroutable_grace_ms=int(2 * self.lease * 1000),
        )


def declare_reach(config: Config, base_url: str | None = None) -> tuple[Reach, list[str]]:
    """What this host can reach, and why anything configured was left out."""
    roots: list[str] = []
    skipped: list[str] = []
    for root in config.storage_roots:
        if os.path.isdir(root) and os.access(root, os.R_OK | os.X_OK):
            roots.append(root)
        else:
            skipped.append(f"storage root {root}: not a readable folder")
    storages: list[str] = []
    for uuid, bs in config.backup_storages.items():
        try:
            storage = open_backup_storage(bs, base_url)
            try:
                storage.available_capacity()
                local = storage.local_file("probe")
                if local is not None and not os.access(local.parent, os.W_OK):
                    raise OperationFailedError(f"{local.parent} is not writable")
            finally:
                storage.close()
        except OvfkitError as exc:
            skipped.append(f"backup storage {uuid}: {exc.details}")
            continue
        storages.append(uuid)
    return Reach.of(roots, storages), skipped


@dataclass
class _Running:
    job: Job
    cancel: threading.Event
    deadline: float  # monotonic: stop the export before the lease could run out
    lost: bool = False


@dataclass
class WorkerRuntime:
    """One worker process: its database, config, reach and running jobs."""

    store: JobStore
    data_dir: Path
    name: str
    concurrency: int
    timings: ClusterTimings = field(default_factory=ClusterTimings)
    uuid: str = field(default_factory=lambda: uuidlib.uuid4().hex)
    celery: Any = None
    _running: dict[str, _Running] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    reach: Reach = field(default_factory=lambda: Reach((), ()))

    @property
    def config(self) -> Config:
        return load_config(self.data_dir)

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    def start(self) -> WorkerInfo:
        """Declare the reach, clear the spool (nothing runs here yet), start the heartbeat
        and reaper threads."""
        config = self.config
        self.reach, skipped = declare_reach(config, config.base_url)
        for line in skipped:
            _log.warning("worker %s: left out %s", self.name, line)
        if self.spool.is_dir():
            shutil.rmtree(self.spool, ignore_errors=True)
        info = self._info()
        self.store.register_worker(info)
        threading.Thread(target=self._beat, name="ovfkit-heartbeat", daemon=True).start()
        threading.Thread(target=self._reap, name="ovfkit-reaper", daemon=True).start()
        return info

    def _info(self) -> WorkerInfo:
        return WorkerInfo(
            self.uuid, self.name, self.reach, self.concurrency, self.timings.lease_ms
        )

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OvfkitError):
            self.store.unregister_worker(self.uuid)

    # -- background -----------------------------------------------------------------------------

    def _beat(self) -> None:
        period = self.timings.lease / 3
        while not self._stop.wait(period):
            try:
                if not self.store.worker_heartbeat(self.uuid):
                    # Removed as dead while it was cut off: declare again.
                    self.store.register_worker(self._info())
            except OvfkitError as exc:
                _log.warning("worker heartbeat failed: %s", exc)
            with self._lock:
                running = list(self._running.values())
            for run in running:
                self._renew(run)

    def _renew(self, run: _Running) -> None:
        try:
            ok = self.store.renew(run.job, self.uuid, self.timings.lease_ms)
        except OvfkitError as exc:
            ok = None
            _log.warning("cannot renew the lease of job %s: %s", run.job.uuid, exc)
        now = time.monotonic()
        if ok:
            run.deadline = now + self.timings.lease * 2 / 3
        elif ok is False or now >= run.deadline:
            run.lost = True
            run.cancel.set()

    def _reap(self) -> None:
        dispatcher = self.timings.dispatcher(self.store, self.celery)
        while not self._stop.wait(self.timings.reap_every):
            try:
                dispatcher.reap()
                self._retry_cleanup()
            except OvfkitError as exc:
                _log.warning("reaper: %s", exc)
            except Exception:
                _log.exception("reaper failed")

    def _retry_cleanup(self) -> None:
        config = self.config
        pending = self.store.packages.pending_cleanup(self.reach.backup_storages)
        for bs_uuid, path in pending:
            bs = config.backup_storages.get(bs_uuid)
            if bs is None:
                continue
            storage = open_backup_storage(bs, config.base_url)
            try:
                storage.remove(path)
            finally:
                storage.close()
            self.store.packages.cleanup_done(bs_uuid, path)

    # -- the task -------------------------------------------------------------------------------

    def run_job(self, job_uuid: str) -> None:
        """The export task: run the job if it is free to take; return at once otherwise."""
        job = self._patiently(
            lambda: self.store.claim(job_uuid, self.uuid, self.timings.lease_ms, self.name),
            time.monotonic() + self.timings.lease,
        )
        if job is None:
            return  # done already, or running on a live worker (duplicate message)
        run = _Running(job, threading.Event(), time.monotonic() + self.timings.lease * 2 / 3)
        with self._lock:
            self._running[job.uuid] = run
        try:
            self._run(run)
        finally:
            with self._lock:
                self._running.pop(job.uuid, None)

    def _run(self, run: _Running) -> None:
        job = run.job
        if job.attempts > self.timings.max_attempts:
            err = OperationFailedError(
                f"the export of vm[uuid: {job.vm_uuid}] was interrupted "
                f"{job.attempts - 1} times (its worker was lost); giving up"
            )
            self._fail(job, err)
            return
        try:
            md5, size, export_url, token = self._export(run)
        except OvfkitError as exc:
            if run.lost:
                _log.warning("job %s: lease lost, left to the node that took it", job.uuid)
                return
            self._fail(job, exc)
            return
        except Exception as exc:
            _log.exception("job %s failed unexpectedly", job.uuid)
            self._fail(job, InternalError(f"{type(exc).__name__}: {exc}"))
            return
        if not self._patiently(
            lambda: self.store.finish_exported(
                job, self.uuid, export_url=export_url, md5_sum=md5, size=size,
                download_token=token,
            ),
            run.deadline,
        ):
            _log.warning("job %s: finished after its lease was lost; result dropped", job.uuid)

    @staticmethod
    def _patiently(call: Callable[[], _T], until: float) -> _T:
        """``call()``, tried again while the database is unreachable (restarting), until the
        monotonic time ``until``; then its OvfkitIOError goes up (the lease runs out and another
        node takes the job over)."""
        while True:
            try:
                return call()
            except OvfkitIOError as exc:
                if time.monotonic() >= until:
                    raise
                _log.warning("database unreachable, trying again: %s", exc)
                time.sleep(0.5)

    def _fail(self, job: Job, exc: OvfkitError) -> None:
        # 503 with the ErrorCode: what the synchronous API answers for a failed export.
        done, record = self._patiently(
            lambda: self.store.finish_failed(job, self.uuid, 503, Reply.failure(exc).to_json()),
            time.monotonic() + self.timings.lease * 2 / 3,
        )
        if done and record is not None:
            self._remove(record.inventory.backup_storage_uuid, record.install_path)

    def _remove(self, bs_uuid: str, install_path: str) -> None:
        config = self.config
        bs = config.backup_storages.get(bs_uuid)
        if bs is None:
            return
        try:
            storage = open_backup_storage(bs, config.base_url)
            try:
                storage.remove(install_path)
            finally:
                storage.close()
        except OvfkitError as exc:
            _log.warning("cleanup of %s postponed: %s", install_path, exc)
            return
        self.store.packages.cleanup_done(bs_uuid, install_path)

    def _export(self, run: _Running) -> tuple[str, int, str, str | None]:
        from ..zstack.api import _vm_model, _write, estimate_package_size
        from ..zstack.context import remove_spooled

        job = run.job
        config = self.config
        bs = config.backup_storages.get(job.backup_storage_uuid)
        if bs is None or job.backup_storage_uuid not in self.reach.backup_storages:
            raise OperationFailedError(
                f"worker {self.name} cannot write backup storage[uuid: {job.backup_storage_uuid}]"
            )
        install_path = f"{job.package_uuid}.ova"
        storage = open_backup_storage(bs, config.base_url)
        try:
            if job.attempts > 1:  # an earlier attempt died: remove what it left
                storage.remove(install_path)
                remove_spooled(self.spool, install_path)
            req = ExportVmOvaPackageRequest.from_json(job.request)
            vm = _vm_model(job.vm, req, self.reach.roots)
            required = estimate_package_size(vm, include_iso=False)
            if storage.available_capacity() < required:
                raise OperationFailedError(
                    f"backup storage[uuid: {job.backup_storage_uuid}] does not have enough "
                    f"available capacity for exporting vm[uuid: {job.vm_uuid}], required "
                    f"capacity is: {required}"
                )
            md5, size = _write(vm, storage, install_path, self.spool, None, None, run.cancel)
            token = None if storage.remote else new_download_token()
            return md5, size, storage.export_url(install_path, job.package_uuid, token), token
        finally:
            storage.close()


def request_json(req: ExportVmOvaPackageRequest) -> dict[str, Any]:
    """The flat body :meth:`ExportVmOvaPackageRequest.from_json` reads back."""
    out: dict[str, Any] = {
        "vmUuid": req.vm_uuid, "backupStorageUuid": req.backup_storage_uuid, "name": req.name,
        "description": req.description, "resourceUuid": req.resource_uuid,
        "tagUuids": list(req.tag_uuids), "systemTags": list(req.system_tags),
        "userTags": list(req.user_tags),
    }
    return {k: v for k, v in out.items() if v is not None}


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"



def run_worker(
    database_url: str,
    broker_url: str,
    data_dir: Path,
    *,
    concurrency: int = 2,
    name: str | None = None,
    timings: ClusterTimings | None = None,
    log_level: str = "WARNING",
) -> int:
    """Declare this host's reach and consume its queue until stopped (SIGTERM: the running
    exports finish first, as Celery's warm shutdown does)."""
    from ..db import open_database
    from ..errors import InvalidArgumentError
    from .celery_app import make_celery

    timings = timings or ClusterTimings()
    db = open_database(database_url)
    try:
        runtime = WorkerRuntime(
            JobStore(db), Path(data_dir), name or default_worker_name(), concurrency, timings
        )
        celery = make_celery(
            broker_url, visibility_timeout=timings.visibility_timeout, run_job=runtime.run_job
        )
        runtime.celery = celery
        reach, skipped = declare_reach(runtime.config)
        if not reach.roots or not reach.backup_storages:
            raise InvalidArgumentError(
                f"worker {runtime.name} can reach no "
                f"{'storage root' if not reach.roots else 'backup storage'} of {data_dir}"
                + (f" ({'; '.join(skipped)})" if skipped else "")
                + ": set storageRoots and backupStorages in its config.json"
            )
        info = runtime.start()
        print(
            f"ovfkit worker {info.name}: queue {info.reach.queue}; roots "
            f"{', '.join(info.reach.roots)}; backup storages "
            f"{', '.join(info.reach.backup_storages)}",
            flush=True,
        )
        try:
            celery.worker_main([
                "worker", "-Q", info.reach.queue, "-c", str(concurrency), "-P", "threads",
                "-n", f"{info.name}@%h", "-l", log_level, "--without-gossip",
                "--without-mingle", "--without-heartbeat",
            ])
        finally:
            runtime.stop()
    finally:
        db.close()
    return 0
