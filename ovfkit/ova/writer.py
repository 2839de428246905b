"""write_ova: an OVA package for a VM, to a path (appearing atomically) or to a stream.

A path target gets the layout ``options.layout`` names (:mod:`.seekable`: "default" is
descriptor, manifest, certificate, then the files, with exact ``ovf:size``; "one-pass" is
descriptor, files, manifest, certificate, hashed while it is written), written into a
temporary file in the target's folder that is renamed over the target once complete and
flushed; on any failure, cancellation or KeyboardInterrupt the temporary file is removed and
the target is left untouched. The temporary file is locked while it is written
(:mod:`.tempfiles`): if the process is killed outright, the next export to the folder removes
it. A writable stream gets the streaming layout (:mod:`.stream`: chunked disks, manifest last).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from typing import IO

from ..errors import InvalidArgumentError, NotFoundError, OvfkitError, OvfkitIOError
from ..model import VirtualMachine
from ..progress import CancelToken, ProgressCallback
from . import tempfiles
from .plan import OvaOptions, PackageFile, PackageResult

__all__ = ["OvaOptions", "PackageFile", "PackageResult", "write_ova"]


def _check_target(target: str, vm: VirtualMachine) -> str:
    path = os.path.abspath(os.fspath(target))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise NotFoundError(f"target folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise InvalidArgumentError(f"target {path!r} is a directory")
    if os.path.exists(path):
        _refuse_own_image(path, vm)
    return path


def _refuse_own_image(path: str, vm: VirtualMachine) -> None:
    """The package is renamed over ``path`` at the end: if that is one of the VM's own images
    (a disk, a file of its backing chain, a packed ISO; under any name, hard links included)
    the export would destroy its source. Only an existing target can be one."""
    from ..qemu import img  # lazy: the qemu-img edge, needed only when the target exists

    sources: list[str] = [cd.iso for cd in vm.cd_drives if cd.iso is not None]
    for disk in vm.disks:
        if disk.source is None:
            continue
        sources.append(disk.source.path)
        with contextlib.suppress(OvfkitError):  # an unreadable image fails later, clearly
            info = img.info(disk.source.path, disk.source.format, force_share=True)
            sources += [layer.filename for layer in info.backing_chain]
    for source in sources:
        with contextlib.suppress(OSError):
            if os.path.samefile(path, source):
                raise InvalidArgumentError(
                    f"target {path!r} is {source!r}, an image of VM {vm.name!r}: writing the"
                    " package there would destroy it; choose another target"
                )


def write_ova(
    vm: VirtualMachine,
    target: str | os.PathLike[str] | IO[bytes],
    options: OvaOptions = OvaOptions(),  # noqa: B008 - frozen, safe as a default
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> PackageResult:
    """Write ``vm`` as an OVA package to ``target``.

    ``target`` is a path (written atomically, see the module docstring) or a writable binary
    stream, possibly not seekable (written in streaming order, :func:`ovfkit.ova.stream.
    write_ova_stream`). ``path`` of the result is the target's absolute path, None for a
    stream. Raises InvalidArgumentError for a VM or options no package can express,
    NotFoundError for a missing disk image or folder, OvfkitIOError when writing fails (disk
    full...), OperationCancelledError when ``cancel`` is set; nothing is left at the target path
    then.
    """
    if not isinstance(target, (str, os.PathLike)):
        from .stream import write_ova_stream  # checks the arguments itself

        return write_ova_stream(vm, target, options, progress=progress, cancel=cancel)
    from .members import check_call, resolve_capacities

    check_call(vm, target, options, progress, cancel)
    vm = resolve_capacities(vm)
    path = _check_target(os.fspath(target), vm)
    folder = os.path.dirname(path)
    tempfiles.sweep(folder)  # what exports killed outright left here (SIGKILL, OOM, power)
    fd, tmp = tempfiles.create(folder, os.path.basename(path))  # locked while it is written
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a package is meant to be shared
        from .seekable import write_seekable

        with os.fdopen(fd, "w+b", buffering=0) as raw:
            result = write_seekable(vm, raw.fileno(), options, progress, cancel)
            os.replace(tmp, path)
        if options.fsync:
            _fsync_dir(folder)
        return replace(result, path=path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, KeyboardInterrupt):
            raise
        if isinstance(exc, OvfkitError):
            raise
        if isinstance(exc, OSError):
            raise OvfkitIOError(
                f"writing {path!r} failed: {exc.strerror or exc}",
                elaboration=f"errno {exc.errno}",
            ) from exc
        raise


def _fsync_dir(folder: str) -> None:
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
