"""ZStack's ExportVmOvaPackage and the image-package APIs, as plain functions over a context.

``export_vm_ova_package`` is synchronous, as the reference page says: it returns when the package
is ``Exported`` or the export has failed, and it never raises for a request it can answer — every
failure comes back as ``Reply(success=False, error=<ZStack ErrorCode>)``. The query, update and
delete functions raise :class:`~ovfkit.errors.OvfkitError` (each with its ZStack code).

Order of checks follows ZStack's API interceptor, all before any byte is written: mandatory
fields, UUID syntax, lengths, then VM and backup storage found (SYS.1003), VM Stopped, one package
per VM, resourceUuid free, paths under storage roots, and the capacity on the backup storage
(``qemu-img measure`` of every disk). Then the record is created ``Exporting``; from there on
any failure rolls back (partial files removed, record deleted) before the error is returned.

Packages belong to the account that exported them (``account_uuid``), as ZStack's resources do:
given an ``account_uuid``, the query, update, delete and tag functions see only that account's
packages, and another account's package is not found (SYS.1003), as an unknown one. None (the
admin, or a library caller with no accounts) sees them all.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OvfkitError,
    OvfkitIOError,
)
from ..model import VirtualMachine
from ..progress import CancelToken, ProgressCallback, check_cancel
from .catalog import confine_images, confine_paths
from .context import ExportContext, remove_spooled
from .inventory import (
    API_MESSAGE,
    DESCRIPTION_MAX,
    NAME_MAX,
    UUID_PATTERN,
    Condition,
    ExportVmOvaPackageRequest,
    ImagePackageInventory,
    ImagePackageState,
    Reply,
    conditions_from_query,
    is_zstack_uuid,
    new_zstack_uuid,
    parse_condition,
)
from .records import (
    DuplicateVmError,
    ExportLock,
    PackageRecord,
    already_exported_message,
    new_download_token,
)
from .storage import BackupStorage
from .tags import TAG_QUERY_FIELDS, TagRecord, check_system_tags, check_user_tags

if TYPE_CHECKING:
    from ..ova.writer import OvaOptions

__all__ = [
    "PACKAGE_OVERHEAD",
    "count_image_packages",
    "count_tags",
    "delete_image_package",
    "estimate_package_size",
    "export_vm_ova_package",
    "get_image_package",
    "package_file",
    "query_image_packages",
    "query_tags",
    "update_image_package",
]

_log = logging.getLogger(__name__)

# Descriptor, manifest, tar headers and end-of-archive blocks: far below this for any VM ZStack
# can hold (a descriptor of 64 disks is ~100 KiB).
PACKAGE_OVERHEAD = 1 << 20


def _mandatory(field: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"field[{field}] of message[{API_MESSAGE}] is mandatory, can not be null"
    )


def _check_uuid(field: str, value: str) -> None:
    if not is_zstack_uuid(value):
        raise InvalidArgumentError(
            f"invalid field[{field}]: {value!r} is not a valid uuid. A valid uuid is a UUID "
            f"(v4 recommended) with '-' stripped; ZStack checks it against '{UUID_PATTERN}'"
        )


def _check_length(
    field: str, value: str | None, limit: int, message: str = API_MESSAGE
) -> None:
    if value is not None and len(value) > limit:
        raise InvalidArgumentError(
            f"field[{field}] of message[{message}] exceeds max length of string. "
            f"expected was <= {limit}, actual was {len(value)}"
        )


def _validate_request(
    req: ExportVmOvaPackageRequest,
) -> tuple[str, str, tuple[str, ...], tuple[str, ...]]:
    """(vmUuid, backupStorageUuid, system tags, user tags) of a request ZStack would accept."""
    if req.vm_uuid is None:
        raise _mandatory("vmUuid")
    if req.backup_storage_uuid is None:
        raise _mandatory("backupStorageUuid")
    _check_uuid("vmUuid", req.vm_uuid)
    _check_uuid("backupStorageUuid", req.backup_storage_uuid)
    if req.resource_uuid is not None:
        _check_uuid("resourceUuid", req.resource_uuid)
    for i, tag in enumerate(req.tag_uuids):
        _check_uuid(f"tagUuids[{i}]", tag)
    _check_length("name", req.name, NAME_MAX)
    _check_length("description", req.description, DESCRIPTION_MAX)
    system_tags = check_system_tags(req.system_tags)
    return req.vm_uuid, req.backup_storage_uuid, system_tags, check_user_tags(req.user_tags)


def estimate_package_size(vm: VirtualMachine, *, include_iso: bool = True) -> int:
    """Upper bound of the OVA's size, before any byte is written: ``qemu-img measure`` of every
    disk as streamOptimized VMDK (qemu 7.2 cannot measure vmdk: ovfkit's bound from
    ``qemu-img map`` then), plus the ISOs when the package carries them, plus
    :data:`PACKAGE_OVERHEAD`."""
    from ..qemu import img

    total = PACKAGE_OVERHEAD
    for disk in vm.disks:
        if disk.source is None:
            continue
        # -U: a stopped VM holds no lock, but a backup job might; reading is safe either way.
        total += img.measure(
            disk.source.path, "vmdk", fmt=disk.source.format, force_share=True
        ).required
        total += 1024  # tar header (+ GNU long-name header) and padding to 512
    for cd in vm.cd_drives if include_iso else ():
        if cd.iso is not None:
            try:
                total += os.path.getsize(cd.iso) + 1024
            except OSError as exc:
                raise OvfkitIOError(f"cannot read ISO {cd.iso}: {exc.strerror}") from None
    return total


def _vm_model(
    inventory: Mapping[str, Any], req: ExportVmOvaPackageRequest, roots: Sequence[str]
) -> VirtualMachine:
    from .adapter import vm_from_zstack

    # The request's system tags (bootMode::UEFI, ...) join the VM's own, as ZStack does.
    vm = confine_paths(vm_from_zstack(inventory, system_tags=list(req.system_tags)), roots)
    confine_images(vm, roots)
    return vm


def _write(
    vm: VirtualMachine,
    storage: BackupStorage,
    install_path: str,
    spool: Path,
    options: OvaOptions | None,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> tuple[str, int]:
    """Write the package through the storage's upload; (md5, size) of the published .ova.

    A local storage gets the package written in place; a remote one from ``spool/<name>``
    (see :mod:`ovfkit.zstack.storage.base` for why), which is removed in every case."""
    from ..ova.writer import OvaOptions, write_ova

    opts = options if options is not None else OvaOptions()
    upload = storage.begin(install_path)
    spooled = spool / install_path
    try:
        if upload.local_path is not None:
            result = write_ova(vm, upload.local_path, opts, progress=progress, cancel=cancel)
        else:
            spool.mkdir(parents=True, exist_ok=True)
            result = write_ova(vm, spooled, opts, progress=progress, cancel=cancel)
            upload.upload_from(spooled, progress=progress, cancel=cancel)
        check_cancel(cancel, "the export")
        upload.commit()
    except BaseException:
        try:
            upload.abort()
        except OvfkitError as exc:  # the record's cleanup entry retries it later
            _log.warning("cannot remove the partial package %s: %s", install_path, exc)
        raise
    finally:
        remove_spooled(spool, install_path)
    return result.md5, result.size


def _export(
    req: ExportVmOvaPackageRequest,
    context: ExportContext,
    options: OvaOptions | None,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    account_uuid: str | None = None,
) -> ImagePackageInventory:
    vm_uuid, bs_uuid, system_tags, user_tags = _validate_request(req)
    inventory = context.resolve_vm(vm_uuid)
    if inventory is None:
        raise NotFoundError(
            f"invalid field[vmUuid], resource[uuid:{vm_uuid}, type:VmInstanceVO] not found"
        )
    config = context.config
    if bs_uuid not in config.backup_storages:
        raise NotFoundError(
            f"invalid field[backupStorageUuid], resource[uuid:{bs_uuid}, type:BackupStorageVO] "
            "not found"
        )
    if inventory.get("state") != "Stopped":
        raise InvalidArgumentError("Only vm in state: Stopped can be exported.")
    holder = context.records.find_by_vm(vm_uuid)
    if holder is not None:
        raise DuplicateVmError(
            already_exported_message(
                vm_uuid, holder.inventory.uuid, holder.account_uuid, account_uuid
            )
        )
    package_uuid = req.resource_uuid or new_zstack_uuid()
    if context.records.get(package_uuid) is not None:
        raise InvalidArgumentError(
            f"resourceUuid[{package_uuid}] is already used by another image package"
        )
    vm = _vm_model(inventory, req, config.storage_roots)
    vm_name = inventory.get("name")
    # ZStack's default; cut to the column's 255 characters for a VM name near that limit.
    name = req.name if req.name is not None else f"exported-vm-{vm_name or vm.name}"[:NAME_MAX]
    description = req.description if req.description is not None else (
        f"source vm uuid: {vm_uuid}"
    )
    check_cancel(cancel, "the export")

    storage = context.open_storage(bs_uuid)
    try:
        required = estimate_package_size(
            vm, include_iso=options.include_iso if options is not None else False
        )
        spool = context.spool_dir
        with contextlib.ExitStack() as reservations:
            reservations.enter_context(
                context.reserve(bs_uuid, required, storage.available_capacity, lambda: (
                    f"backup storage[uuid: {bs_uuid}] does not have enough available capacity "
                    f"for exporting vm[uuid: {vm_uuid}], required capacity is: {required}"
                ))
            )
            if storage.remote:  # the package is spooled here first
                spool.mkdir(parents=True, exist_ok=True)
                reservations.enter_context(
                    context.reserve("spool", required, lambda: _free_bytes(spool), lambda: (
                        f"the spool folder {spool} does not have enough available capacity "
                        f"for exporting vm[uuid: {vm_uuid}] to backup storage[uuid: {bs_uuid}], "
                        f"required capacity is: {required}"
                    ))
                )
            job = _ExportJob(
                vm=vm,
                vm_uuid=vm_uuid,
                package_uuid=package_uuid,
                name=name,
                description=description,
                backup_storage_uuid=bs_uuid,
                spool=spool,
                options=options,
                system_tags=tuple(system_tags),
                user_tags=tuple(user_tags),
                account_uuid=account_uuid,
            )
            return _export_reserved(context, storage, job, progress, cancel)
    finally:
        storage.close()


def _free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except OSError as exc:
        raise OvfkitIOError(f"cannot stat {folder}: {exc.strerror}") from None
    return st.f_bavail * st.f_frsize


@dataclass(frozen=True)
class _ExportJob:
    """An export whose request passed every check and whose room is reserved: the VM to write,
    the package record it becomes (uuid, name, description, tags) and where it goes."""

    vm: VirtualMachine
    vm_uuid: str
    package_uuid: str
    name: str
    description: str
    backup_storage_uuid: str
    spool: Path
    options: OvaOptions | None = None
    system_tags: tuple[str, ...] = ()
    user_tags: tuple[str, ...] = ()
    account_uuid: str | None = None

    @property
    def install_path(self) -> str:
        return f"{self.package_uuid}.ova"


def _export_reserved(
    context: ExportContext,
    storage: BackupStorage,
    job: _ExportJob,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> ImagePackageInventory:
    """From the record on: create it Exporting (with its system and user tags), write, mark
    Exported, or roll everything back."""
    package_uuid, bs_uuid, install_path = (
        job.package_uuid, job.backup_storage_uuid, job.install_path
    )
    lock = ExportLock.try_acquire(context.records.lock_path(package_uuid))
    if lock is None:
        raise InvalidArgumentError(
            f"resourceUuid[{package_uuid}] is already used by another image package"
        )
    try:
        record = ImagePackageInventory(
            uuid=package_uuid,
            name=job.name,
            description=job.description,
            vm_uuid=job.vm_uuid,
            backup_storage_uuid=bs_uuid,
            state=ImagePackageState.EXPORTING,
        )
        context.records.create_exporting(
            record, install_path, account_uuid=job.account_uuid, system_tags=job.system_tags,
            user_tags=job.user_tags,
        )
        try:
            md5, size = _write(
                job.vm, storage, install_path, job.spool, job.options, progress, cancel
            )
            token = None if storage.remote else new_download_token()
            context.records.mark_exported(
                package_uuid,
                export_url=storage.export_url(install_path, package_uuid, token),
                md5_sum=md5,
                size=size,
                download_token=token,
            )
        except BaseException:
            deleted = context.records.delete(package_uuid)
            if deleted is not None:
                try:
                    storage.remove(install_path)
                    context.records.cleanup_done(bs_uuid, install_path)
                except OvfkitError as exc:
                    _log.warning("cleanup of %s postponed: %s", install_path, exc)
            raise
    finally:
        lock.release()
    return get_image_package(context, package_uuid)


def export_vm_ova_package(
    request: ExportVmOvaPackageRequest | Mapping[str, Any] | str | bytes,
    *,
    context: ExportContext,
    options: OvaOptions | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    account_uuid: str | None = None,
) -> Reply:
    """ExportVmOvaPackage: export VM ``vmUuid`` to an OVA on backup storage
    ``backupStorageUuid`` and return ``Reply(success, error, inventory)``; the package is
    ``account_uuid``'s (None: no account's, seen only unscoped).

    ``request`` is an :class:`ExportVmOvaPackageRequest` or a JSON body (ZStack's
    ``{"params": {...}}`` form or the flat form). ``options`` are the OVA writer's options;
    ``progress``/``cancel`` as everywhere in ovfkit (a cancelled export is rolled back and
    answers SYS.1017). Thread-safe: exports of different VMs run concurrently.
    """
    try:
        req = (
            request
            if isinstance(request, ExportVmOvaPackageRequest)
            else ExportVmOvaPackageRequest.from_json(request)
        )
        return Reply.ok(_export(req, context, options, progress, cancel, account_uuid))
    except OvfkitError as exc:
        return Reply.failure(exc)
    except Exception as exc:
        _log.exception("ExportVmOvaPackage failed unexpectedly")
        return Reply.failure(InternalError(f"{type(exc).__name__}: {exc}"))


# --- QueryImagePackage / UpdateImagePackage / DeleteImagePackage -------------------------------


def query_image_packages(
    context: ExportContext,
    conditions: Sequence[str | Condition] = (),
    *,
    limit: int | None = None,
    start: int = 0,
    sort_by: str | None = None,
    sort_direction: str = "asc",
    group_by: str | None = None,
    account_uuid: str | None = None,
) -> list[ImagePackageInventory]:
    """QueryImagePackage: records matching every ``q=`` condition (``name=x``, ``size>5``,
    ``name~=web%``, ``state!=Exporting``, ``uuid?=a,b``, ``description is null``,
    ``__userTag__=blue``); one per distinct ``group_by`` value when given; SYS.1007 for a
    malformed condition or unknown field. Only ``account_uuid``'s packages when given."""
    conds = conditions_from_query(conditions)
    records = context.records.query(
        conds, limit=limit, start=start, sort_by=sort_by, sort_direction=sort_direction,
        group_by=group_by, account_uuid=account_uuid,
    )
    return [r.inventory for r in records]


def count_image_packages(
    context: ExportContext,
    conditions: Sequence[str | Condition] = (),
    *,
    group_by: str | None = None,
    account_uuid: str | None = None,
) -> int:
    """QueryImagePackage with ``count=true``: how many records (or groups) match."""
    return context.records.count(
        conditions_from_query(conditions), group_by=group_by, account_uuid=account_uuid
    )


def query_tags(
    context: ExportContext,
    kind: str,
    conditions: Sequence[str | Condition] = (),
    *,
    limit: int | None = None,
    start: int = 0,
    sort_by: str | None = None,
    sort_direction: str = "asc",
    account_uuid: str | None = None,
) -> list[TagRecord]:
    """QueryUserTag (``kind`` tags.USER) / QuerySystemTag (tags.SYSTEM) over the packages'
    tags, e.g. ``resourceUuid=<package uuid>``; only tags of ``account_uuid``'s packages when
    given."""
    return context.records.query_tags(
        kind, _tag_conditions(conditions), limit=limit, start=start, sort_by=sort_by,
        sort_direction=sort_direction, account_uuid=account_uuid,
    )


def count_tags(
    context: ExportContext,
    kind: str,
    conditions: Sequence[str | Condition] = (),
    *,
    account_uuid: str | None = None,
) -> int:
    return context.records.count_tags(
        kind, _tag_conditions(conditions), account_uuid=account_uuid
    )


def _tag_conditions(conditions: Sequence[str | Condition]) -> list[Condition]:
    return [
        c if isinstance(c, Condition) else parse_condition(c, TAG_QUERY_FIELDS, "TagInventory")
        for c in conditions
    ]


def _record_of(context: ExportContext, uuid: str, account_uuid: str | None) -> PackageRecord:
    """The record ``uuid``, if ``account_uuid`` (None: anyone) may see it; else SYS.1003, the
    same for another account's package as for none, so uuids of others tell nothing."""
    record = context.records.get(uuid)
    if record is None or (account_uuid is not None and record.account_uuid != account_uuid):
        raise NotFoundError(
            f"invalid field[uuid], resource[uuid:{uuid}, type:ImagePackageVO] not found"
        )
    return record


def get_image_package(
    context: ExportContext, uuid: str, *, account_uuid: str | None = None
) -> ImagePackageInventory:
    return _record_of(context, uuid, account_uuid).inventory


_UPDATE_MESSAGE = "APIUpdateImagePackageMsg"


def update_image_package(
    context: ExportContext,
    uuid: str,
    name: str | None = None,
    description: str | None = None,
    *,
    account_uuid: str | None = None,
) -> ImagePackageInventory:
    """UpdateImagePackage: change name and/or description (same length limits as export).
    Any update, even of nothing, restarts the validity period of the package's download URL
    (``lastOpDate``, see :func:`package_file`)."""
    if name is not None:
        if not isinstance(name, str):
            raise InvalidArgumentError("field[name] must be a string")
        if not name:
            raise InvalidArgumentError("field[name] can not be empty")
        _check_length("name", name, NAME_MAX, _UPDATE_MESSAGE)
    if description is not None:
        if not isinstance(description, str):
            raise InvalidArgumentError("field[description] must be a string")
        _check_length("description", description, DESCRIPTION_MAX, _UPDATE_MESSAGE)
    _record_of(context, uuid, account_uuid)
    record = context.records.update(uuid, name=name, description=description)
    if record is None:
        raise NotFoundError(
            f"invalid field[uuid], resource[uuid:{uuid}, type:ImagePackageVO] not found"
        )
    return record.inventory


def delete_image_package(
    context: ExportContext, uuid: str, *, account_uuid: str | None = None
) -> None:
    """DeleteImagePackage: remove the record and the package file from its backup storage.

    A package still ``Exporting`` is refused (SYS.1007), as deleting it would pull the file from
    under the running export. If the storage cannot be reached, the record goes now and the
    file removal is retried at the next start-up."""
    record = _record_of(context, uuid, account_uuid)
    if record.inventory.state is ImagePackageState.EXPORTING:
        raise InvalidArgumentError(
            f"image package[uuid: {uuid}] is still exporting; it cannot be deleted now"
        )
    deleted = context.records.delete(uuid)
    if deleted is None:
        return
    bs = deleted.inventory.backup_storage_uuid
    try:
        storage = context.open_storage(bs)
        try:
            storage.remove(deleted.install_path)
        finally:
            storage.close()
    except NotFoundError:
        context.records.cleanup_done(bs, deleted.install_path)  # storage no longer configured
        return
    except OvfkitError as exc:
        _log.warning("removal of %s from %s postponed: %s", deleted.install_path, bs, exc)
        return
    context.records.cleanup_done(bs, deleted.install_path)


def package_file(
    context: ExportContext,
    uuid: str,
    token: str | None = None,
    *,
    ttl: float | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[ImagePackageInventory, Path]:
    """The local file of an ``Exported`` package, for the service's download route
    (``/ova-packages/<token>/<uuid>.ova``, the package's exportUrl).

    ``token``, the service's caller's, must be the package's download token: exportUrl is a
    capability URL, fetched without a session, and the uuid alone (which queries list) does
    not open it. None: no check, for a library caller that owns the data folder. ``ttl``: the
    URL works that many seconds after the package was exported or last updated (lastOpDate).
    SYS.1003 for a wrong token (packages of remote storages have none), an expired URL, or a
    package not exported yet."""
    record = context.records.get(uuid)
    stored = record.download_token if record is not None else None
    # compare_digest: the time taken does not tell how much of a guessed token was right.
    if record is None or (token is not None and (
        stored is None or not hmac.compare_digest(stored.encode(), token.encode())
    )):
        raise NotFoundError(
            f"no image package to download at this URL (uuid {uuid}): a package's exportUrl "
            "carries its download token; QueryImagePackage gives it"
        )
    inventory = record.inventory
    if inventory.state is not ImagePackageState.EXPORTED:
        raise NotFoundError(f"image package[uuid: {uuid}] is not exported yet")
    changed = inventory.last_op_date
    if ttl is not None and changed is not None and clock() > changed.timestamp() + ttl:
        raise NotFoundError(
            f"the download URL of image package[uuid: {uuid}] expired ({ttl:.0f} s after its "
            "last update); UpdateImagePackage renews it"
        )
    storage = context.open_storage(inventory.backup_storage_uuid)
    try:
        path = storage.local_file(record.install_path)
    finally:
        storage.close()
    if path is None or not path.is_file():
        raise NotFoundError(
            f"image package[uuid: {uuid}] has no local file; fetch it from {inventory.export_url}"
        )
    return inventory, path
