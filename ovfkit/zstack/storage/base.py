"""The interface of a backup storage: where finished OVA packages are kept.

A package appears under its final name only once it is complete (an atomic rename on the same
file system, local or SFTP), so a reader never sees a half-written ``<name>``. Removing a package
removes the final name and every temporary name of it; that is also how an export interrupted by
a crash is cleaned up.

The OVA writer needs a local file descriptor for its seekable mode (pwrite of the headers, mmap
for the whole-package MD5). A local storage hands the writer the final path; a remote one
(``local_path`` None) gets the finished package from a local spool file through
:meth:`PackageUpload.upload_from`. Streaming the package straight to the remote host would
need the writer's streaming mode, whose chunked disks virt-v2v and VirtualBox cannot import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from ...progress import CancelToken, ProgressCallback

__all__ = ["PART_SUFFIX", "BackupStorage", "PackageUpload", "check_package_name"]

PART_SUFFIX = ".part"


def check_package_name(name: str) -> str:
    """Package names are single path components chosen by ovfkit (``<uuid>.ova``); anything
    else is a programming error, refused so no caller can write outside the storage folder."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"invalid package file name {name!r}")
    return name


class PackageUpload(Protocol):
    """One package being written: either to :attr:`local_path` directly (local storage), or
    spooled locally and sent with :meth:`upload_from` (remote storage), then committed."""

    @property
    def local_path(self) -> Path | None:
        """Where the OVA writer writes the package on this machine; None for a remote storage."""
        ...

    def upload_from(
        self,
        path: Path,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        """Copy the finished package at ``path`` to the storage's ``.part`` object."""
        ...

    def commit(self) -> None:
        """Publish the package under its final name (atomic rename)."""
        ...

    def abort(self) -> None:
        """Remove whatever was written; never raises for a missing file."""
        ...


class BackupStorage(Protocol):
    uuid: str
    remote: bool  # True: packages are spooled locally and uploaded (see the module docstring)

    def available_capacity(self) -> int:
        """Free bytes, read from the storage itself (statvfs)."""
        ...

    def begin(self, name: str) -> PackageUpload: ...

    def remove(self, name: str) -> None:
        """Remove ``name`` and ``name.part``; a missing file is not an error."""
        ...

    def size_of(self, name: str) -> int | None:
        """Size of the published package ``name``, None if it does not exist."""
        ...

    def export_url(self, name: str, package_uuid: str, token: str | None = None) -> str:
        """Where the published package can be fetched; ``token``: the download token a URL of
        the service's download route carries (local storages)."""
        ...

    def local_file(self, name: str) -> Path | None:
        """The package's path on this machine (for downloads by the service), None if remote."""
        ...

    def close(self) -> None: ...


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename in ``path`` durable (POSIX: fsync the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
