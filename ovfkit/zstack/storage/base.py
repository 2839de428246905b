"""The interface of a backup storage: where finished OVA packages are kept.

A package is written as ``<name>.part`` beside its final name and renamed into place only once it
is complete (an atomic rename on the same file system, local or SFTP), so a reader never sees a
half-written ``<name>``. Removing a package removes both names; that is also how an export
interrupted by a crash is cleaned up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Protocol

__all__ = ["PART_SUFFIX", "BackupStorage", "PackageUpload", "check_package_name"]

PART_SUFFIX = ".part"


def check_package_name(name: str) -> str:
    """Package names are single path components chosen by ovfkit (``<uuid>.ova``); anything
    else is a programming error, refused so no caller can write outside the storage folder."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"invalid package file name {name!r}")
    return name


class PackageUpload(Protocol):
    """One package being written. Exactly one of :attr:`local_path` (write this path) or
    :meth:`open` (write this seekable file) is what the OVA writer uses."""

    @property
    def local_path(self) -> Path | None:
        """The ``.part`` path on this machine, or None when the storage is remote."""
        ...

    def open(self) -> BinaryIO:
        """A seekable, writable binary file for the ``.part`` object (created empty)."""
        ...

    def commit(self) -> None:
        """Publish the ``.part`` under the final name (atomic rename)."""
        ...

    def abort(self) -> None:
        """Remove whatever was written; never raises for a missing file."""
        ...


class BackupStorage(Protocol):
    uuid: str

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

    def export_url(self, name: str, package_uuid: str) -> str:
        """Where the published package can be fetched."""
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
