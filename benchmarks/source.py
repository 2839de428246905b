"""Reading the reference disk the way the native writer does, shared by the benchmarks' floors:
a floor that read differently (copies instead of mapped page-cache pages) would flatter or
penalise the writer it is compared with."""

from __future__ import annotations

import mmap
import os
import sys
import tempfile

from ovfkit.disk import RawSource

__all__ = ["BATCH", "GRAIN", "ZERO", "batch", "data_bytes", "reference_disk", "warm"]

GRAIN = 64 * 1024
BATCH = 64 * GRAIN
ZERO = bytes(GRAIN)


def batch(src: RawSource, fd: int, off: int, n: int) -> bytearray | mmap.mmap:
    """The bytes [off, off + n) as the native writer gets them: mapped from the page cache
    when wholly inside the file (no copy), else read into a buffer."""
    if os.fstat(fd).st_size >= off + n:
        return mmap.mmap(fd, n, prot=mmap.PROT_READ, offset=off)
    buf = bytearray(n)
    src.readinto(off, memoryview(buf))
    return buf


def reference_disk(path: str | None, scale: float) -> str:
    """The absolute path of the reference disk: ``path``, or one in the temp folder for
    ``scale``; made with benchmarks.refdisk when missing."""
    disk = path or os.path.join(tempfile.gettempdir(), f"ovfkit-refdisk-s{scale}.raw")
    if not os.path.exists(disk):
        from benchmarks.refdisk import make_refdisk

        print(f"making the reference disk {disk} ...", file=sys.stderr)
        make_refdisk(disk, scale=scale)
    return os.path.abspath(disk)


def data_bytes(path: str) -> int:
    """Bytes of the disk's data extents (what the writers compress)."""
    src = RawSource(path)
    try:
        return sum(e.length for e in src.extents() if not e.zero)
    finally:
        src.close()


def warm(path: str) -> None:
    """Read every data extent once so the page cache holds the source for every candidate."""
    src = RawSource(path)
    buf = bytearray(BATCH)
    try:
        for e in src.extents():
            if e.zero:
                continue
            off = e.start
            while off < e.start + e.length:
                n = min(BATCH, e.start + e.length - off)
                src.readinto(off, memoryview(buf)[:n])
                off += n
    finally:
        src.close()
