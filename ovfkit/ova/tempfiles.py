"""The OVA writer's temporary files: made locked, found and removed once their writer is dead.

A package is written into ``.<name>.<random>.ovfkit.part`` beside the target and renamed over
it when complete. A writer killed outright (SIGKILL, OOM killer, power loss) cannot remove its
file, so each one holds an exclusive ``flock(2)`` on it for as long as it writes: the kernel
drops the lock when the process dies, however it dies. The next export to the folder
(:func:`sweep`) removes every such file nobody holds a lock on; a live writer's file is never
touched, in this process (another thread's export) or any other.

flock, not fcntl/lockf: a flock belongs to the open file description, so two exports in one
process exclude each other and closing another descriptor of the file does not drop the lock
(POSIX record locks are per process and have both faults). On NFS, Linux emulates flock with
whole-file NFS locks, which still vanish with their holder.

Race between a new writer and a sweep: the sweep may take the lock of a file just created and
not yet locked, and remove it; the writer then finds its path gone (or another file there)
once it holds the lock, and makes a new one. A file is only ever removed while its remover
holds the lock and the path still names the locked file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets

from ..errors import OvfkitIOError

__all__ = ["SUFFIX", "create", "sweep"]

#: Marks the files this protocol owns: a sweep looks at nothing else (a ``.part`` of another
#: tool, or of an ovfkit before the lock, is left alone). The name still matches the
#: ``.<name>.*.part`` pattern the backup storages clean up by.
SUFFIX = ".ovfkit.part"
_ATTEMPTS = 5


def create(folder: str, name: str) -> tuple[int, str]:
    """A new, locked temporary file (mode 0600) for the package ``name`` in ``folder``:
    (descriptor, path). The lock lasts until the descriptor is closed or the process ends.

    The path is chosen before the file is made and one ``try`` covers making, locking and
    returning it, so an exception at any point (a KeyboardInterrupt, or SIGTERM raised as one
    by the CLI) removes the file: the caller's own clean-up takes over only once it has both."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_ATTEMPTS):
        path = os.path.join(folder, f".{name}.{secrets.token_hex(4)}{SUFFIX}")
        fd = -1
        try:
            fd = os.open(path, flags, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, path):
                return fd, path
        except FileExistsError:
            continue  # a name taken (by anyone): not ours to touch
        except BlockingIOError:
            pass  # a sweep holds it and is removing it
        except BaseException as exc:
            _discard(fd, path)
            if isinstance(exc, OSError):
                raise OvfkitIOError(
                    f"cannot create a file in {folder!r}: {exc.strerror or exc}"
                ) from None
            raise
        os.close(fd)  # swept before we locked it: the path is gone or names another file
    raise OvfkitIOError(f"cannot create a temporary file in {folder!r}: removed {_ATTEMPTS} times")


def _discard(fd: int, path: str) -> None:
    if fd >= 0:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)


def sweep(folder: str) -> list[str]:
    """Remove the temporary files of dead writers in ``folder``; returns their paths. Never
    raises: a file that cannot be opened, locked or removed is left for a later sweep."""
    removed: list[str] = []
    try:
        names = [e.name for e in os.scandir(folder) if e.name.startswith(".")]
    except OSError:
        return removed
    for name in names:
        if not name.endswith(SUFFIX):
            continue
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile, a symbolic link, or not ours to read
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, path):
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass  # locked: its writer is alive
        finally:
            os.close(fd)
    return removed


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)
