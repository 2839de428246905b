"""Disk sources: reading any image qemu can open, extent by extent (holes are never read).

:func:`open_source` picks the reader: a raw file is read directly (:mod:`.raw`), anything else
(qcow2 with a backing chain or compressed clusters, vmdk, vhdx, ...) through a private read-only
qemu-nbd (:mod:`.nbd`); for chains of plain qcow2/raw layers the clusters qemu-img map places
are read straight from the files and only the rest (compressed clusters) through qemu-nbd
(:mod:`.mapped`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

from ..errors import InvalidArgumentError, NotFoundError, OperationFailedError, OvfkitIOError
from ..model import DiskSource
from ..qemu import img
from .mapped import MappedSource, eligible
from .memory import MemorySource
from .nbd import NbdSource
from .raw import RawSource
from .source import Extent, ImageSource

__all__ = [
    "Extent",
    "ImageSource",
    "MappedSource",
    "MemorySource",
    "NbdSource",
    "RawSource",
    "check_image",
    "open_source",
]


def check_image(disk: DiskSource, *, force_shared: bool = False) -> img.ImageInfo:
    """``qemu-img info`` of the image and its backing chain, refusing what must not be exported:
    a missing file (NotFoundError), an image in use (ImageInUseError, unless ``force_shared``),
    a broken image or one qemu marked corrupt (OperationFailedError), an image of 0 bytes
    (InvalidArgumentError: a VMDK cannot describe it)."""
    if not os.path.lexists(disk.path):
        raise NotFoundError(f"disk image {disk.path} does not exist")
    _check_file_type(disk.path)
    info = img.info(disk.path, disk.format, backing_chain=True, force_share=force_shared)
    if info.virtual_size == 0:
        # A sparse extent of 0 sectors has 0 grain tables: qemu's vmdk driver ("Unsupported
        # image type 'streamOptimized'") and libvmdk ("grain table size value out of bounds")
        # refuse it, so the package would not import anywhere.
        raise InvalidArgumentError(
            f"disk image {disk.path} has a virtual size of 0 bytes; a streamOptimized VMDK"
            " cannot describe an empty disk (qemu and libvmdk refuse it): resize it"
            " (qemu-img resize) or leave the volume out"
        )
    for layer in (info, *info.backing_chain):
        if layer.corrupt:
            # qemu opens an image marked corrupt read-only and serves whatever its broken
            # metadata points at; an export must not ship that.
            raise OperationFailedError(
                f"{layer.filename}: qemu marked the image corrupt; check and repair it first"
                f" (qemu-img check -r all {layer.filename})"
            )
    return info


def _check_file_type(path: str) -> None:
    """Only a regular file or a block device holds an image: qemu-img blocks for ever opening a
    FIFO (no writer ever comes), and a directory or character device is no disk at all."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise NotFoundError(f"disk image {path} is a broken symbolic link") from None
    except OSError as e:
        raise OvfkitIOError(f"cannot stat disk image {path}: {e.strerror or e}") from None
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return
    kind = (
        "a directory" if stat.S_ISDIR(mode)
        else "a FIFO" if stat.S_ISFIFO(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "a character device" if stat.S_ISCHR(mode)
        else "not a regular file"
    )
    raise InvalidArgumentError(
        f"disk image {path} is {kind}; a volume must be a regular file or a block device"
    )


@contextlib.contextmanager
def open_source(
    disk: DiskSource, *, force_shared: bool = False, nbd_spares: int = 0
) -> Iterator[ImageSource]:
    """An ImageSource for ``disk``, closed (qemu-nbd ended, its socket removed) on exit.

    ``qemu-img info`` checks the image and its whole backing chain first: a missing file gives
    NotFoundError, a broken image OperationFailedError, and an image open read-write elsewhere
    (a running VM holds qemu's write lock) ImageInUseError, unless ``force_shared`` asks to read
    it anyway (qemu's force-share; the data may be inconsistent while the VM writes).
    ``nbd_spares``: where the image is served by qemu-nbd, that many more connections are
    negotiated for other processes to read through (``NbdSource.take_spare``).
    """
    info = check_image(disk, force_shared=force_shared)
    source: ImageSource
    if info.format == "raw" and not info.backing_chain:
        raw = RawSource(disk.path)
        if not force_shared:
            try:
                if raw.write_locked():
                    raise img.ImageInUseError(
                        f"{disk.path}: the image is in use (another process, e.g. a running VM,"
                        " holds qemu's write lock); stop it, or read with force_shared at your"
                        " own risk"
                    )
                # Keep VMs from opening it read-write until the export is done, as qemu-nbd
                # does for the other formats.
                raw.lock_like_qemu()
            except BaseException:
                raw.close()
                raise
        source = raw
    else:
        nbd = NbdSource.open(
            disk.path, info.format, force_share=force_shared, spares=nbd_spares
        )
        if eligible(info):
            try:
                source = MappedSource(info, nbd, force_share=force_shared)
            except BaseException:
                nbd.close()
                raise
        else:
            source = nbd
    try:
        yield source
    finally:
        source.close()
