"""qcow2 chains read mostly straight from their files, guided by ``qemu-img map``.

qemu-nbd costs about 1.5-2.5 CPU seconds per GiB served (measured on qemu 7.2, 1 GiB qcow2),
which a 2-core machine would take from the deflate threads. ``qemu-img map`` tells, for each
extent of the guest disk, which layer of the chain holds it (``depth``) and where in that layer's
file (``offset``) when the bytes are stored as they are: then they are read with ``preadv`` like
a raw file. Extents without a host offset (compressed clusters) and anything map cannot place are
read through qemu-nbd, which stays open as the fallback and, with its read-only open, keeps
other writers away while the map is in use (qemu's image locking).

Only chains of plain qcow2 and raw layers qualify: no encryption, no external data file (whose
offsets map does not name the file of). The map is taken window by window (4 GiB), so memory
does not grow with the disk.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import stat
from collections.abc import Iterator

from ..errors import OvfkitIOError
from ..qemu import img
from .nbd import NbdSource
from .source import PIECE_FILE, PIECE_FILE_SHORT, PIECE_NBD, PIECE_ZERO, Extent, Piece

__all__ = ["MappedSource", "eligible"]

WINDOW = 4 * 1024 * 1024 * 1024
_FORMATS = ("qcow2", "raw")


def eligible(info: img.ImageInfo) -> bool:
    """True when every layer is a local qcow2 or raw file without encryption or a data file."""
    for layer in (info, *info.backing_chain):
        if layer.format not in _FORMATS or layer.encrypted or layer.data_file is not None:
            return False
        try:
            mode = os.stat(layer.filename).st_mode
        except OSError:
            return False  # not a local file (a json: or nbd: filename, ...)
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):  # qcow2 on LVM is common
            return False
    return True


class MappedSource:
    """An ImageSource over a qcow2 chain: direct reads where ``qemu-img map`` gives a host
    offset, the qemu-nbd ``fallback`` elsewhere. Closing it closes the fallback too."""

    def __init__(self, info: img.ImageInfo, fallback: NbdSource, *, force_share: bool) -> None:
        self._info = info
        self._fallback = fallback
        self._force_share = force_share
        self._fds: list[int] = []
        try:
            for layer in (info, *info.backing_chain):
                self._fds.append(os.open(layer.filename, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            self.close()
            raise OvfkitIOError(f"opening {exc.filename}: {exc.strerror}") from None
        # The window in use and the one before it: the writer plans a batch's reads just
        # behind where it walks the extents, which may have entered the next window.
        self._windows: list[tuple[int, list[img.MapExtent], list[int]]] = []
        self._window_start = -1
        self._window: list[img.MapExtent] = []
        self._starts: list[int] = []
        # A layer's file may legitimately end before the disk only for a raw layer (qemu
        # reads zeros past it); a qcow2 layer ending before a cluster it maps was truncated.
        self._piece_kinds = [
            PIECE_FILE_SHORT if layer.format == "raw" else PIECE_FILE
            for layer in (info, *info.backing_chain)
        ]

    @property
    def capacity(self) -> int:
        return self._fallback.capacity

    @property
    def nbd(self) -> NbdSource:
        """The qemu-nbd fallback (its server names the image path, format and sharing)."""
        return self._fallback

    def _load(self, offset: int) -> None:
        start = offset - offset % WINDOW
        if start == self._window_start:
            return
        for w_start, w_extents, w_starts in self._windows:
            if w_start == start:
                self._window_start, self._window, self._starts = w_start, w_extents, w_starts
                return
        length = min(WINDOW, self.capacity - start)
        extents = img.map(
            self._info.filename,
            self._info.format,
            force_share=self._force_share,
            start=start,
            length=length,
        )
        self._window = [e for e in extents if e.length > 0]
        self._starts = [e.start for e in self._window]
        self._window_start = start
        self._windows = [*self._windows[-1:], (start, self._window, self._starts)]

    def _map_at(self, offset: int) -> img.MapExtent:
        self._load(offset)
        i = bisect.bisect_right(self._starts, offset) - 1
        if i < 0 or offset >= self._window[i].start + self._window[i].length:
            raise OvfkitIOError(
                f"qemu-img map does not cover byte {offset} of {self._info.filename}"
            )
        return self._window[i]

    def extents(self) -> Iterator[Extent]:
        size = self.capacity
        offset = 0
        run_start, run_zero = 0, None
        while offset < size:
            m = self._map_at(offset)
            end = min(m.start + m.length, size)
            if run_zero is not None and m.zero != run_zero:
                yield Extent(run_start, offset - run_start, run_zero)
                run_start = offset
            run_zero = m.zero
            offset = end
        if run_zero is not None:
            yield Extent(run_start, offset - run_start, run_zero)

    def readinto(self, offset: int, buf: memoryview) -> int:
        end = min(len(buf), max(0, self.capacity - offset))
        done = 0
        while done < end:
            pos = offset + done
            m = self._map_at(pos)
            n = min(end - done, m.start + m.length - pos)
            part = buf[done : done + n]
            if m.zero:
                part[:] = bytes(n)
            elif m.data and m.offset is not None and 0 <= m.depth < len(self._fds):
                self._pread(self._fds[m.depth], m.offset + (pos - m.start), part)
            else:
                self._fallback.readinto(pos, part)
            done += n
        return done

    def direct_files(self) -> list[int]:
        """The layers' files, top first (a piece's ``file`` is the map's depth)."""
        return list(self._fds)

    def direct_pieces(self, start: int, length: int) -> Iterator[Piece]:
        """Where ``qemu-img map`` places the bytes (see ovfkit.disk.source.Piece); what it does
        not place goes through qemu-nbd."""
        end = min(start + length, self.capacity)
        pos = start
        while pos < end:
            m = self._map_at(pos)
            n = min(end - pos, m.start + m.length - pos)
            if m.zero:
                yield (pos, n, PIECE_ZERO, 0, 0)
            elif m.data and m.offset is not None and 0 <= m.depth < len(self._fds):
                yield (pos, n, self._piece_kinds[m.depth], m.depth, m.offset + (pos - m.start))
            else:
                yield (pos, n, PIECE_NBD, 0, pos)
            pos += n

    def _pread(self, fd: int, at: int, part: memoryview) -> None:
        got = 0
        while got < len(part):
            try:
                k = os.preadv(fd, [part[got:]], at + got)
            except OSError as exc:
                raise OvfkitIOError(f"reading the image at host offset {at + got}: {exc}") from None
            if k == 0:
                # Past the end of a layer file (a short raw base): qemu reads zeros there.
                part[got:] = bytes(len(part) - got)
                return
            got += k

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        self._fallback.close()
