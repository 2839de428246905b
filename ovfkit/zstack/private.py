"""Owner-only modes for the data folder's secrets.

The data folder holds bearer secrets: ``auth.sqlite`` (live session uuids are what clients send
as ``Authorization: OAuth``), ``packages.db`` (the download tokens of exportUrl) and
``config.json`` (SFTP passwords). They are created 0600 inside a 0700 folder, and a folder made
by an older version (0755/0644 under the usual umask) is brought to those modes when it is opened.

SQLite creates a database's ``-wal``/``-shm``/``-journal`` files with the mode of the database
file itself (``robust_open`` in sqlite3's unix VFS), so creating the database file 0600 before
the first ``connect`` keeps its companions 0600 too; existing companions are fixed here as well.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from ..errors import OvfkitIOError

__all__ = ["FILE_MODE", "FOLDER_MODE", "private_database", "private_file", "private_folder"]

FOLDER_MODE = 0o700
FILE_MODE = 0o600
_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def _restrict(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` if it gives anything to group or others (no-op otherwise,
    so a stricter mode chosen by the owner stays)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        return  # a link the owner made on purpose; its target's mode is theirs to choose
    if stat.S_IMODE(st.st_mode) & 0o077:
        try:
            os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
        except OSError as exc:
            raise OvfkitIOError(f"cannot restrict the mode of {path}: {exc.strerror}") from None


def private_folder(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and its parents) if missing; the folder itself is made 0700, or
    brought to it when it was more open."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
    except OSError as exc:
        raise OvfkitIOError(f"cannot create {folder}: {exc.strerror}") from None
    _restrict(folder, FOLDER_MODE)
    return folder


def private_file(path: str | os.PathLike[str]) -> Path:
    """Bring an existing file to 0600 (a missing one is left missing)."""
    file = Path(path)
    _restrict(file, FILE_MODE)
    return file


def private_database(path: str | os.PathLike[str]) -> Path:
    """Create the SQLite file ``path`` empty and 0600 if missing (SQLite accepts an empty file
    as a new database), and bring it and its companions to 0600."""
    db = Path(path)
    try:
        fd = os.open(db, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise OvfkitIOError(f"cannot create {db}: {exc.strerror}") from None
    os.close(fd)
    for suffix in ("", *_SQLITE_COMPANIONS):
        with contextlib.suppress(FileNotFoundError):
            private_file(db.with_name(db.name + suffix))
    return db
