"""The export context: one data folder's config, records, VM resolver and backup storages.

Open one per process (``open_context``) and share it between threads; it is what
:func:`ovfkit.zstack.api.export_vm_ova_package` and the HTTP service work on. Opening it recovers
from a crash: every ``Exporting`` record whose exporting process is gone (its flock is free) is
deleted together with its partial files — the package never existed, as after any failed export —
and file removals that could not be done earlier (storage unreachable) are retried.

A data folder without any backup storage in its config gets the embedded default, a local one in
``<data>/packages`` (:func:`ovfkit.zstack.config.ensure_default_storage`).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from ..db import Database
from ..errors import InvalidArgumentError, NotFoundError, OperationFailedError, OvfkitError
from .catalog import FolderCatalog, VmResolver, unwrap_vm_inventory
from .config import CONFIG_NAME, Config, ensure_default_storage, load_config
from .private import private_file, private_folder
from .records import PackageRecords
from .storage import BackupStorage, open_backup_storage

__all__ = ["ExportContext", "RecoveryReport", "open_context", "remove_spooled"]

_log = logging.getLogger(__name__)


class RecoveryReport:
    """What start-up recovery did: packages rolled back, files removed, removals still pending."""

    def __init__(self) -> None:
        self.rolled_back: list[str] = []
        self.removed: list[tuple[str, str]] = []
        self.pending: list[tuple[str, str]] = []


class ExportContext:
    """Shared state of the export API. Thread-safe; close() when done (or use ``with``)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        resolver: VmResolver | None = None,
        base_url: str | None = None,
        database: Database | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        private_folder(self.data_dir)
        private_file(self.data_dir / CONFIG_NAME)  # may hold SFTP passwords
        self.catalog = FolderCatalog(self.data_dir)
        self.resolver: VmResolver = resolver if resolver is not None else self.catalog
        self._base_url = base_url.rstrip("/") if base_url else None
        self._config_lock = threading.Lock()
        self._reserve_lock = threading.Lock()
        self._reserved: dict[str, int] = {}
        self._config: Config = ensure_default_storage(self.data_dir)
        self._config_stamp = self._stamp()
        self.records = PackageRecords(self.data_dir, database=database)
        self.recovery = RecoveryReport()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.data_dir / CONFIG_NAME).stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    @property
    def config(self) -> Config:
        """The config file's content, re-read when the file changed (``ovfkit vm``/edits)."""
        with self._config_lock:
            stamp = self._stamp()
            if stamp != self._config_stamp:
                self._config = load_config(self.data_dir)
                self._config_stamp = stamp
            return self._config

    @property
    def base_url(self) -> str | None:
        """Base URL of the HTTP service (exportUrl of local packages); argument wins over file."""
        return self._base_url or self.config.base_url

    @base_url.setter
    def base_url(self, value: str | None) -> None:
        self._base_url = value.rstrip("/") if value else None

    @contextlib.contextmanager
    def reserve(
        self,
        key: str,
        size: int,
        available: Callable[[], int],
        message: Callable[[], str],
    ) -> Iterator[None]:
        """Reserve ``size`` bytes of storage ``key`` for one export while it runs, so exports
        running at once in this process do not all count the same free space (ZStack reserves
        backup-storage capacity the same way). SYS.1006 with ``message()`` if it does not fit.
        Other processes' exports are not counted: only what they have written already."""
        free = available()
        with self._reserve_lock:
            held = self._reserved.get(key, 0)
            if free - held < size:
                raise OperationFailedError(message())
            self._reserved[key] = held + size
        try:
            yield
        finally:
            with self._reserve_lock:
                self._reserved[key] -= size

    @property
    def spool_dir(self) -> Path:
        """Where packages for remote (SFTP) backup storages are written before the upload."""
        return self.data_dir / "spool"

    def resolve_vm(self, vm_uuid: str) -> Mapping[str, Any] | None:
        """The resolver's VmInstanceInventory for ``vm_uuid`` (a QueryVmInstance reply or API
        event is unwrapped), None if there is no such VM. SYS.1007 if the resolver answers with
        another VM than the one asked for."""
        found = self.resolver(vm_uuid)
        if found is None:
            return None
        vm = unwrap_vm_inventory(found)
        if vm.get("uuid") != vm_uuid:
            raise InvalidArgumentError(
                f"the VM resolver answered VM {vm.get('uuid')} for vmUuid {vm_uuid}"
            )
        return vm

    def open_storage(self, uuid: str) -> BackupStorage:
        """Connect to backup storage ``uuid``; SYS.1003 if it is not configured."""
        storage = self.config.backup_storages.get(uuid)
        if storage is None:
            raise NotFoundError(
                f"invalid field[backupStorageUuid], resource[uuid:{uuid}, type:BackupStorageVO] "
                "not found"
            )
        return open_backup_storage(storage, self.base_url)

    def recover(self) -> RecoveryReport:
        """Roll back exports left ``Exporting`` by a dead process; retry pending removals."""
        report = self.recovery
        for record, lock in self.records.stale_exports():
            try:
                deleted = self.records.delete(record.inventory.uuid, only_exporting=True)
                if deleted is not None:
                    remove_spooled(self.spool_dir, deleted.install_path)
                    report.rolled_back.append(record.inventory.uuid)
                    _log.warning(
                        "rolled back image package %s of VM %s: its export was interrupted",
                        record.inventory.uuid, record.inventory.vm_uuid,
                    )
            finally:
                lock.release()
        self.retry_cleanup()
        return report

    def retry_cleanup(self) -> None:
        for bs_uuid, path in self.records.pending_cleanup():
            if bs_uuid not in self.config.backup_storages:
                # The storage was removed from the config: nothing left to clean there.
                self.records.cleanup_done(bs_uuid, path)
                continue
            try:
                storage = self.open_storage(bs_uuid)
                try:
                    storage.remove(path)
                finally:
                    storage.close()
            except OvfkitError as exc:
                _log.warning("cannot remove %s from backup storage %s yet: %s", path, bs_uuid, exc)
                self.recovery.pending.append((bs_uuid, path))
                continue
            self.records.cleanup_done(bs_uuid, path)
            self.recovery.removed.append((bs_uuid, path))

    def close(self) -> None:
        self.records.close()

    def __enter__(self) -> ExportContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_context(
    data_dir: str | os.PathLike[str],
    *,
    resolver: VmResolver | None = None,
    base_url: str | None = None,
    recover: bool = True,
    database: Database | None = None,
) -> ExportContext:
    """Open a data folder (created if missing) and, unless ``recover=False``, clean up after a
    crash (see the module docstring). ``resolver`` replaces the folder catalog; ``base_url``
    (e.g. ``http://host:8080``) makes local packages' exportUrl point at ``ovfkit serve``;
    ``database`` keeps the package records there instead of the folder's ``packages.db``
    (the caller closes it)."""
    ctx = ExportContext(data_dir, resolver=resolver, base_url=base_url, database=database)
    if recover:
        try:
            ctx.recover()
        except BaseException:
            ctx.close()
            raise
    return ctx


def remove_spooled(spool: Path, install_path: str) -> None:
    """Remove ``spool/<name>`` and the OVA writer's temporaries of it (``.<name>.*.part``)."""
    for p in [spool / install_path, *spool.glob(f".{glob.escape(install_path)}.*.part")]:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
