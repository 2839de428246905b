"""The interface every disk source offers to the writers.

A source is the virtual disk as a byte range [0, capacity) described by extents. Writers ask for
extents first and read only the extents that are data, so holes and zero extents cost nothing.
Implementations live beside this file (raw files, images served by qemu-nbd, memory for tests).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "PIECE_FILE",
    "PIECE_FILE_SHORT",
    "PIECE_NBD",
    "PIECE_ZERO",
    "DirectSource",
    "Extent",
    "ImageSource",
    "Piece",
]


@dataclass(frozen=True)
class Extent:
    """``length`` bytes from ``start``; ``zero`` means the guest reads zeros there (hole or
    zero cluster) and nothing needs to be read."""

    start: int
    length: int
    zero: bool


class ImageSource(Protocol):
    @property
    def capacity(self) -> int:
        """Virtual size in bytes."""
        ...

    def extents(self) -> Iterator[Extent]:
        """Extents covering [0, capacity) in ascending order, without gaps."""
        ...

    def readinto(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` with the bytes at ``offset``; returns len(buf) (short only at the end)."""
        ...

    def close(self) -> None: ...


# Where another process reads a source's bytes itself (the VMDK writer's workers): a Piece is
# (disk offset, length, kind, file, at) for bytes [offset, offset + length) of the disk.
Piece = tuple[int, int, int, int, int]
PIECE_ZERO = 0  # the bytes are zeros; nothing to read
PIECE_FILE = 1  # pread from direct_files()[file] at ``at``; the file ending first is an error
PIECE_FILE_SHORT = 2  # as PIECE_FILE, but zeros past the file's end (a raw layer shorter than
# the disk: qemu reads zeros there)
PIECE_NBD = 3  # an NBD read at disk offset ``at`` through a spare connection of the source


class DirectSource(ImageSource, Protocol):
    """An ImageSource that can tell another process how to read it: the files to hand over
    (descriptors, valid while the source is open) and the pieces of any byte range below
    capacity, ascending and without gaps."""

    def direct_files(self) -> Sequence[int]: ...

    def direct_pieces(self, start: int, length: int) -> Iterator[Piece]: ...
