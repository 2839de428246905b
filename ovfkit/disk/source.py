"""The interface every disk source offers to the writers.

A source is the virtual disk as a byte range [0, capacity) described by extents. Writers ask for
extents first and read only the extents that are data, so holes and zero extents cost nothing.
Implementations live beside this file (raw files, images served by qemu-nbd, memory for tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Extent", "ImageSource"]


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
