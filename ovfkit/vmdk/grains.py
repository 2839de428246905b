"""Grains of a streamOptimized VMDK made from a disk's bytes: deflated, zero grains dropped,
incompressible grains stored (VMware "Virtual Disk Format 5.0", "Stream-Optimized Compressed
Sparse Extents": a grain marker is the grain's LBA u64, the compressed size u32, an RFC 1950 zlib
stream, zero padding to the sector).

Standard library and isal only: the writer's worker processes (ovfkit.vmdk.worker) import this
module, and every module they import costs RSS in each of them. ovfkit.vmdk.format takes its
grain-level encoders from here.

Every decision is taken per grain, from that grain's bytes alone, so the output does not depend
on how the disk is cut into batches or on how many workers share it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from types import ModuleType

_isal: ModuleType | None
try:  # isal: the same RFC 1950 streams as zlib, several times faster (issue 3 measurements)
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - isal is a dependency; stdlib zlib is the fallback
    _isal = None

__all__ = [
    "GRAIN_SECTORS",
    "GRAIN_SIZE",
    "MARKER_HEADER_SIZE",
    "MAX_GRAIN_BYTES",
    "SECTOR",
    "STORED_SIZE",
    "Compress",
    "GrainMaker",
    "compressor",
    "grain_marker_frame",
    "zlib_stored",
]

SECTOR = 512
GRAIN_SECTORS = 128  # 64 KiB grains, what VMware and qemu write
GRAIN_SIZE = GRAIN_SECTORS * SECTOR
MARKER_HEADER_SIZE = 12  # u64 val + u32 size
_GRAIN_MARKER = struct.Struct("<QI")
_PADS = tuple(bytes(n) for n in range(SECTOR))

# RFC 1950: CM 8 (deflate), 32 KiB window, FLEVEL 0, FCHECK so that (CMF * 256 + FLG) % 31 == 0
_ZLIB_STORED_HEAD = b"\x78\x01"
_STORED_MAX = 0xFFFF  # RFC 1951 3.2.4: LEN is 16 bits
_STORED_BLOCK = struct.Struct("<BHH")  # BFINAL + BTYPE 00 in the low bits, then LEN, NLEN
_ADLER = struct.Struct(">I")
# A grain as stored blocks: zlib head 2 + two stored-block heads 2 x 5 + Adler-32 4.
STORED_SIZE = GRAIN_SIZE + 16
# The most one grain marker takes: no grain is ever written bigger than stored (GrainMaker).
MAX_GRAIN_BYTES = -(-(MARKER_HEADER_SIZE + STORED_SIZE) // SECTOR) * SECTOR

_ZLIB_LEVEL = {0: 1, 1: 1, 2: 6, 3: 9}  # isal level -> nearest stdlib zlib level (fallback)

Compress = Callable[[memoryview], bytes]
Pieces = list[bytes | memoryview]


def grain_marker_frame(lba: int, size: int) -> tuple[bytes, bytes]:
    """The bytes before and after ``size`` bytes of compressed grain: (lba u64 + size u32, zero
    padding to the sector). A writer joins head + data + pad with its other grains in one copy."""
    if size <= 0:
        raise ValueError("a grain marker needs at least one byte of data")
    return _GRAIN_MARKER.pack(lba, size), _PADS[(-(MARKER_HEADER_SIZE + size)) % SECTOR]


def zlib_stored(data: bytes | memoryview, adler32: int) -> Pieces:
    """``data`` as an RFC 1950 zlib stream of RFC 1951 *stored* blocks (BTYPE 00: LEN, NLEN, the
    bytes as they are), in pieces to be joined; ``adler32`` is the data's Adler-32, computed by
    the caller. What a deflater emits for incompressible input, without searching it for matches
    first: zlib's uncompress() (qemu, VMware) reads it like any other grain."""
    parts: Pieces = [_ZLIB_STORED_HEAD]
    n = len(data)
    start = 0
    while True:
        size = min(n - start, _STORED_MAX)
        final = start + size >= n
        parts.append(_STORED_BLOCK.pack(1 if final else 0, size, size ^ 0xFFFF))
        parts.append(data[start : start + size])
        start += size
        if final:
            break
    parts.append(_ADLER.pack(adler32 & 0xFFFFFFFF))
    return parts


def compressor(level: int) -> Compress:
    """A function compressing one grain into a zlib (RFC 1950) stream: isal at ``level`` (0-3),
    else stdlib zlib at the nearest level. qemu and VMware inflate with zlib's uncompress()."""
    if _isal is not None:
        isal = _isal

        def compress_isal(data: memoryview) -> bytes:
            out: bytes = isal.compress(data, level)
            return out

        return compress_isal

    zlevel = _ZLIB_LEVEL[level]

    def compress_zlib(data: memoryview) -> bytes:
        return zlib.compress(data, zlevel)

    return compress_zlib


_PROBE = 1024
_PROBES = (0, GRAIN_SIZE // 2 - _PROBE // 2, GRAIN_SIZE - _PROBE)
# isal level 0 (static Huffman codes, no table building: ~4 us per KiB) turns 1 KiB of random
# bytes into 1.32-1.36 KiB, and text or code into far less than 1 KiB.
_RANDOM_LIKE = _PROBE * 5 // 4


def _adler32(data: memoryview) -> int:
    return _isal.adler32(data) if _isal is not None else zlib.adler32(data)


class GrainMaker:
    """Makes the zlib stream of each grain at isal ``level``.

    A grain is all zeros exactly when it compresses to the stream of a zero grain (deflate is
    lossless and deterministic): testing the bytes in Python instead would hold the interpreter
    over every byte; the compressor takes a zero grain in ~11 us without it.

    Incompressible data (media, archives, encrypted volumes) is stored (RFC 1951 stored blocks,
    ``zlib_stored``) without searching it for matches: ~20 us instead of ~100 us of isal for
    64 KiB of random bytes, and the same size (isal stores such data too). A grain is taken for
    incompressible when three 1 KiB probes (start, middle, end) each deflate at isal level 0 to
    more than 5/4 of their size; the first probe alone settles a text grain (~4 us). A grain
    that deflates to more than its stored form is stored too, so no grain marker ever exceeds
    ``MAX_GRAIN_BYTES`` (a batch's output has a fixed bound)."""

    def __init__(self, level: int) -> None:
        self.compress = compressor(level)
        self.zero = self.compress(memoryview(bytes(GRAIN_SIZE)))
        self._probe = _isal.compress if _isal is not None else None

    def looks_incompressible(self, grain: memoryview) -> bool:
        probe = self._probe
        if probe is None:  # pragma: no cover - isal is a dependency
            return False
        return all(len(probe(grain[o : o + _PROBE], 0)) >= _RANDOM_LIKE for o in _PROBES)

    def stream(self, grain: memoryview) -> tuple[Pieces, int] | None:
        """(the zlib stream of ``grain`` in pieces, its length), or None for a zero grain. A
        stored grain's pieces include views of ``grain``."""
        if self.looks_incompressible(grain):
            return zlib_stored(grain, _adler32(grain)), STORED_SIZE
        compressed = self.compress(grain)
        if compressed == self.zero:
            return None
        if len(compressed) > STORED_SIZE:
            return zlib_stored(grain, _adler32(grain)), STORED_SIZE
        return [compressed], len(compressed)

    def streams(self, view: memoryview, count: int) -> Iterator[tuple[int, Pieces, int]]:
        """(index, zlib stream in pieces, its length) of each non-zero grain of the first
        ``count`` grains of ``view``, in order."""
        for k in range(count):
            o = k * GRAIN_SIZE
            made = self.stream(view[o : o + GRAIN_SIZE])
            if made is not None:
                yield k, made[0], made[1]
