"""Writing the References files of a package (disks, CD images, the environment ISO) through a
sink, with the digests the manifest needs taken on the way: the I/O edge both writers share.

The caller places the tar headers and padding around each file (``begin``/``end``): the
seekable writer leaves a header slot and fills it later, the streaming writer cuts chunks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import BinaryIO, Protocol, cast

from .._args import require, require_hooks
from ..errors import InvalidArgumentError, OperationCancelledError, OvfkitError, OvfkitIOError
from ..model import VirtualMachine
from ..progress import CancelToken, Progress, ProgressCallback, check_cancel
from .plan import OvaOptions, PackageFile, PackagePlan, WrittenFiles, digest_all

__all__ = [
    "MemberSink",
    "check_call",
    "measure_isos",
    "report",
    "resolve_capacities",
    "write_files",
]

_COPY_CHUNK = 4 << 20


class MemberSink(Protocol):
    """Where file data goes: ``count`` is the bytes taken so far."""

    count: int

    def write(self, data: bytes | memoryview) -> int: ...
    def flush(self) -> None: ...


def report(progress: ProgressCallback | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(Progress(stage, done, total))


def check_call(
    vm: object, target: object, options: object, progress: object, cancel: object
) -> None:
    """InvalidArgumentError for arguments of the wrong type (see ovfkit._args)."""
    require(vm, VirtualMachine, "vm")
    if not isinstance(target, str | os.PathLike) and not callable(getattr(target, "write", None)):
        raise InvalidArgumentError(
            f"target must be a path or a writable binary file object, not {type(target).__name__}"
        )
    require(options, OvaOptions, "options")
    require_hooks(progress, cancel)


def resolve_capacities(vm: VirtualMachine) -> VirtualMachine:
    """``vm`` with each disk's capacity the VMDK's (the image's virtual size in whole sectors),
    read with ``qemu-img info`` before anything is written: the streaming layout writes the
    descriptor first. The Disk.capacity rule (see ovfkit.model.Disk): None takes the image's
    size, a capacity given must be it."""
    from ..disk import check_image

    disks = []
    for disk in vm.disks:
        if disk.source is None:
            disks.append(disk)  # plan_package refuses it
            continue
        info = check_image(disk.source, force_shared=True)  # locks: checked when it is read
        image = -(-info.virtual_size // 512) * 512
        if disk.capacity is not None and -(-disk.capacity // 512) * 512 != image:
            raise InvalidArgumentError(
                f"disk {disk.id!r} has capacity {disk.capacity} but its image"
                f" {disk.source.path} holds {info.virtual_size} bytes: leave capacity None to"
                " take the image's size, or resize the image (qemu-img resize)"
            )
        disks.append(replace(disk, capacity=image))
    return replace(vm, disks=tuple(disks))


def measure_isos(vm: VirtualMachine, options: OvaOptions) -> dict[str, int]:
    """Byte size of each CD image the package will carry, by path (checked to be ISO 9660)."""
    if not options.include_iso:
        return {}
    paths = dict.fromkeys(cd.iso for cd in vm.cd_drives if cd.iso is not None)
    if not paths:
        return {}
    from .iso import check_iso_image

    return {path: check_iso_image(path) for path in paths}


def _copy_file(
    path: str,
    sink: MemberSink,
    algorithms: tuple[str, ...],
    stage: str,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> dict[str, str]:
    from ..vmdk.hashing import DigestTee

    total = os.path.getsize(path)
    done = 0
    with open(path, "rb") as src, DigestTee(algorithms) as tee:
        while True:
            check_cancel(cancel, stage)
            chunk = src.read(_COPY_CHUNK)
            if not chunk:
                break
            tee.update(chunk)
            sink.write(chunk)
            done += len(chunk)
            report(progress, stage, done, total)
        return tee.hexdigests()


def write_files(
    plan: PackagePlan,
    sink: MemberSink,
    options: OvaOptions,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    begin: Callable[[str], None],
    end: Callable[[str, int], None],
    timings: dict[str, float],
    *,
    defer_disk_digests: bool = False,
) -> WrittenFiles:
    """Write every file's data in References order through ``sink``; ``begin(name)`` and
    ``end(name, size)`` let the caller place tar headers and padding. ``defer_disk_digests``:
    the VMDK writer takes no digests (the disks' PackageFile.digests are left empty), for a
    caller that hashes the disks from the page cache itself."""
    from ..vmdk import write_vmdk

    layout = plan.layout
    vm = plan.vm
    files: list[PackageFile] = []
    sizes: dict[str, int] = {}
    populated: dict[str, int] = {}
    capacities: dict[str, int] = {}
    for ref in layout.files:
        check_cancel(cancel, "package")
        started = time.perf_counter()
        begin(ref.href)
        before = sink.count
        disk_file = next((d for d in layout.disks if d.file.id == ref.id), None)
        if disk_file is not None:
            disk = next(d for d in vm.disks if d.id == disk_file.disk_id)
            assert disk.source is not None
            try:
                result = write_vmdk(
                    disk.source,
                    cast(BinaryIO, sink),
                    replace(plan.vmdk_options(options, disk, ref.href), digests=())
                    if defer_disk_digests
                    else plan.vmdk_options(options, disk, ref.href),
                    progress=progress,
                    cancel=cancel,
                )
            except OperationCancelledError:
                raise
            except OvfkitError as e:  # which of the VM's disks: the worker knows only bytes
                name = f"{ref.href} (volume {disk.name!r})" if disk.name else ref.href
                e.details = f"{name}: {e.details}"
                e.args = (e.details,)
                raise
            digests = dict(result.digests)
            populated[disk.id] = result.populated_size
            capacities[disk.id] = result.capacity
            if sink.count - before != result.size:
                raise OvfkitIOError(
                    f"VMDK writer reported {result.size} bytes for {ref.href},"
                    f" {sink.count - before} reached the package"
                )
        elif ref.id in plan.iso_paths:
            digests = _copy_file(
                plan.iso_paths[ref.id], sink, plan.algorithms, f"iso {ref.href}", progress, cancel
            )
        else:
            assert plan.env_iso is not None
            sink.write(plan.env_iso)
            digests = digest_all(plan.env_iso, plan.algorithms)
        size = sink.count - before
        expected = plan.iso_sizes.get(ref.id)
        if expected is not None and size != expected:
            raise OvfkitIOError(
                f"ISO {ref.href} changed while it was packed ({expected} -> {size})"
            )
        end(ref.href, size)
        files.append(PackageFile(ref.href, size, digests))
        sizes[ref.id] = size
        timings[f"file {ref.href}"] = time.perf_counter() - started
    return WrittenFiles(tuple(files), sizes, populated, capacities)
