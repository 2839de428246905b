"""An in-memory ImageSource, for tests of the writers: bytes plus an optional zero map."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..errors import InvalidArgumentError
from .source import Extent

__all__ = ["MemorySource"]


class MemorySource:
    """``data`` is the whole virtual disk. ``zero_ranges`` are (start, length) ranges reported as
    zero extents (they must hold zeros); everything else is one data extent per gap, so a data
    extent may still hold zeros, as a raw file's allocated zeros do."""

    def __init__(
        self, data: bytes | bytearray, zero_ranges: Iterable[tuple[int, int]] = ()
    ) -> None:
        self._data = bytes(data)
        self._extents = tuple(self._build(len(self._data), sorted(zero_ranges)))

    def _build(self, size: int, ranges: list[tuple[int, int]]) -> Iterator[Extent]:
        offset = 0
        for start, length in ranges:
            if length <= 0 or start < offset or start + length > size:
                raise InvalidArgumentError(
                    f"zero range {start}+{length} overlaps another or lies outside 0..{size}"
                )
            if any(self._data[start : start + length]):
                raise InvalidArgumentError(f"zero range {start}+{length} holds non-zero bytes")
            if start > offset:
                yield Extent(offset, start - offset, False)
            yield Extent(start, length, True)
            offset = start + length
        if offset < size:
            yield Extent(offset, size - offset, False)

    @property
    def capacity(self) -> int:
        return len(self._data)

    def extents(self) -> Iterator[Extent]:
        return iter(self._extents)

    def readinto(self, offset: int, buf: memoryview) -> int:
        chunk = self._data[offset : offset + len(buf)]
        buf[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        pass
