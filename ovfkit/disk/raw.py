"""A raw file or block device read directly: the fast path, no qemu in between.

Extents come from ``lseek(SEEK_DATA/SEEK_HOLE)`` (Linux 3.1+, every common file system): holes
read as zeros and are never read. A file system or device without them is one data extent.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from collections.abc import Iterator

from ..errors import NotFoundError, OperationFailedError, OvfkitIOError
from .source import PIECE_FILE, Extent, Piece

__all__ = ["RawSource"]

# qemu's image locking (block/file-posix.c): a process holding permission bit N takes a shared
# OFD lock on byte RAW_LOCK_PERM_BASE (100) + N; BLK_PERM_WRITE is bit 1. qemu-img info does not
# test it for raw images (the raw driver needs no consistent read), so the fast path does.
_QEMU_WRITE_PERM_BYTE = 100 + 1
# Taking part in that protocol as a reader does: hold CONSISTENT_READ (bit 0, byte 100) and do not
# share WRITE (byte RAW_LOCK_SHARED_BASE 200 + 1), so a VM cannot open the image read-write while
# it is exported; qemu-nbd --read-only holds the same locks on the images it serves.
_QEMU_READ_PERM_BYTE = 100 + 0
_QEMU_UNSHARED_WRITE_BYTE = 200 + 1
_FLOCK = struct.Struct("@hhqqi")  # struct flock on 64-bit Linux, padded to 32 bytes below
_FLOCK_SIZE = 32


def _os_error(path: str, exc: OSError) -> Exception:
    details = f"{path}: {exc.strerror or exc}"
    if exc.errno == errno.ENOENT:
        return NotFoundError(details)
    if exc.errno in (errno.EIO, errno.ENOSPC, errno.EROFS):
        return OvfkitIOError(details)
    return OperationFailedError(details)


class RawSource:
    """An ImageSource over a raw file (any size, not only whole sectors) or block device."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _os_error(self.path, exc) from None
        try:
            mode = os.fstat(self._fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise OperationFailedError(f"{self.path}: not a regular file or block device")
            self._capacity = os.lseek(self._fd, 0, os.SEEK_END)
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def capacity(self) -> int:
        return self._capacity

    def extents(self) -> Iterator[Extent]:
        size = self._capacity
        offset = 0
        while offset < size:
            try:
                data = os.lseek(self._fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after offset: the rest is a hole
                    data = size
                elif exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    yield Extent(offset, size - offset, False)
                    return
                else:
                    raise _os_error(self.path, exc) from None
            data = min(data, size)
            if data > offset:
                yield Extent(offset, data - offset, True)
            if data >= size:
                return
            try:
                hole = min(os.lseek(self._fd, data, os.SEEK_HOLE), size)
            except OSError as exc:
                raise _os_error(self.path, exc) from None
            yield Extent(data, hole - data, False)
            offset = hole

    def readinto(self, offset: int, buf: memoryview) -> int:
        want = min(len(buf), max(0, self._capacity - offset))
        done = 0
        while done < want:
            try:
                n = os.preadv(self._fd, [buf[done:want]], offset + done)
            except OSError as exc:
                raise _os_error(self.path, exc) from None
            if n == 0:
                break  # the file shrank under us: short read, as at the end
            done += n
        return done

    def direct_files(self) -> list[int]:
        return [self._fd]

    def direct_pieces(self, start: int, length: int) -> Iterator[Piece]:
        """The file itself (see ovfkit.disk.source.Piece): a file that ends before capacity
        was truncated during the export."""
        length = min(length, self._capacity - start)
        if length > 0:
            yield (start, length, PIECE_FILE, 0, start)

    def write_locked(self) -> bool:
        """True when another process (a running VM's qemu) holds qemu's write permission lock."""
        getlk = getattr(fcntl, "F_OFD_GETLK", None)
        if getlk is None:
            return False
        request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, _QEMU_WRITE_PERM_BYTE, 1, 0)
        request += bytes(_FLOCK_SIZE - len(request))
        try:
            reply = fcntl.fcntl(self._fd, getlk, request)
        except OSError:
            return False  # a file system without OFD locks: qemu could not lock it either
        return bool(_FLOCK.unpack_from(reply)[0] != fcntl.F_UNLCK)

    def lock_like_qemu(self) -> bool:
        """Take qemu's reader locks (see above); False where OFD locks are not supported. The
        locks go with the file descriptor, at close()."""
        setlk = getattr(fcntl, "F_OFD_SETLK", None)
        if setlk is None:
            return False
        for byte in (_QEMU_READ_PERM_BYTE, _QEMU_UNSHARED_WRITE_BYTE):
            request = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, byte, 1, 0)
            request += bytes(_FLOCK_SIZE - len(request))
            try:
                fcntl.fcntl(self._fd, setlk, request)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise OperationFailedError(
                        f"{self.path}: cannot take qemu's read lock ({exc.strerror})"
                    ) from None
                return False
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
