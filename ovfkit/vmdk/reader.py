"""Check a streamOptimized VMDK's structure and read its virtual disk back.

Rules: VMware "Virtual Disk Format 5.0" (header, markers, grain directory/tables, footer, EOS)
plus the importer rules in docs/interop-rules.md (version 3, footer marker + footer +
EOS as the last three sectors, grains in ascending LBA order). Files written by qemu-img (GD and
GTs before the grains, no footer, no EOS) are read too; what they lack is reported as faults.

Hostile input is bounded: the file is walked marker by marker (each step advances, so no loops),
a grain is inflated with ``max_length`` = grain size (no decompression bomb), a compressed grain
larger than the worst deflate expansion is refused, and the grain tables are only loaded when
they fit in ``_MAX_GT_ENTRIES`` (else that cross-check is skipped, never the file).
"""

from __future__ import annotations

import os
import zlib
from array import array
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import InvalidArgumentError, NotFoundError, OvfkitIOError, VmdkFormatError
from . import format as fmt

__all__ = ["VmdkInfo", "VmdkSource", "inspect_vmdk", "read_vmdk_data"]

VmdkSource = str | os.PathLike[str] | BinaryIO | tuple[BinaryIO, int, int]
"""A path, a seekable binary stream (the whole stream), or (stream, offset, size): a VMDK
stored inside another file, e.g. an OVA tar member."""

_MAX_GRAIN_SECTORS = 2048  # 1 MiB grains at most (VMware writes 128); bounds a grain's memory
_MAX_DESCRIPTOR_SECTORS = 2048
_MAX_GT_ENTRIES = 1 << 24  # 64 MiB of grain table entries (disks up to 1 TiB with 64 KiB grains)
_FATAL = frozenset(
    {"truncated", "bad-magic", "not-stream-optimized", "bad-grain-size", "bad-compression",
     "bad-marker", "bad-gt-size"}
)  # fmt: skip


@dataclass(frozen=True)
class VmdkInfo:
    """What inspect_vmdk found. Sizes in bytes. ``faults`` empty means the file follows every
    rule; each is a VmdkFormatError whose ``fault`` names the rule broken."""

    size: int
    capacity: int
    populated_size: int
    grains: int
    header: fmt.SparseHeader
    footer: fmt.SparseHeader | None
    descriptor: fmt.Descriptor | None
    has_eos: bool
    faults: tuple[VmdkFormatError, ...]

    @property
    def ok(self) -> bool:
        return not self.faults

    @property
    def fault_names(self) -> tuple[str, ...]:
        return tuple(f.fault for f in self.faults)


class _Stop(Exception):
    """A fault after which the walk cannot go on."""


# Faults of layout only: the data still reads back right, so read_vmdk_data lets them pass.
_LAYOUT_ONLY = frozenset(
    {"bad-version", "odd-grain-size", "bad-newline", "bad-overhead", "unsorted-grains",
     "early-eos", "footer-not-last", "bad-capacity", "zero-gap", "zero-capacity"}
)  # fmt: skip


class _Faults:
    def __init__(self, strict: bool, ignore: frozenset[str] = frozenset()) -> None:
        self.strict = strict
        self.ignore = ignore
        self.items: list[VmdkFormatError] = []

    def add(self, fault: str, details: str) -> None:
        if fault in self.ignore:
            return
        err = VmdkFormatError(fault, details)
        if self.strict:
            raise err
        self.items.append(err)
        if fault in _FATAL:
            raise _Stop


class _Window:
    """Random access to [offset, offset + size) of a binary stream."""

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        self.f, self.base, self.size = f, offset, size

    def read(self, pos: int, n: int) -> bytes:
        n = max(0, min(n, self.size - pos))
        try:
            self.f.seek(self.base + pos)
            data = self.f.read(n)
        except OSError as e:
            raise OvfkitIOError(f"reading the VMDK at byte {pos} failed: {e}") from e
        return data


def _open(src: VmdkSource, stack: ExitStack) -> _Window:
    if isinstance(src, tuple):
        f, offset, size = src
        if offset < 0 or size < 0:
            raise InvalidArgumentError(f"VMDK window offset {offset} / size {size} is negative")
        return _Window(f, offset, size)
    if isinstance(src, str | os.PathLike):
        try:
            f = stack.enter_context(open(src, "rb"))  # noqa: SIM115 - closed by the stack
        except FileNotFoundError:
            raise NotFoundError(f"VMDK file {os.fspath(src)!r} does not exist") from None
        except OSError as e:
            raise OvfkitIOError(f"cannot open VMDK file {os.fspath(src)!r}: {e}") from e
        return _Window(f, 0, os.fstat(f.fileno()).st_size)
    try:
        size = src.seek(0, os.SEEK_END)
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"the VMDK stream must be seekable: {e}") from e
    return _Window(src, 0, size)


class _Walk:
    """One pass over a VMDK: header, descriptor, footer, grain tables, then the markers."""

    def __init__(self, win: _Window, faults: _Faults, inflate: bool) -> None:
        self.win, self.faults, self.inflate = win, faults, inflate
        self.footer: fmt.SparseHeader | None = None
        self.descriptor: fmt.Descriptor | None = None
        self.has_eos = False
        self.grains = 0
        self.gt: array[int] | None = None
        self.header = self._header()

    # -- fixed structures ------------------------------------------------------------------

    def _header(self) -> fmt.SparseHeader:
        raw = self.win.read(0, fmt.SECTOR)
        try:
            h = fmt.decode_header(raw)
        except VmdkFormatError as e:
            self.faults.add(e.fault, e.details.split(": ", 1)[-1])
            raise _Stop from None
        add = self.faults.add
        if h.version != fmt.VERSION:
            add("bad-version", f"version {h.version}; streamOptimized needs 3 (ESXi, COT#65)")
        if not (h.compressed and h.has_markers):
            add("not-stream-optimized", f"flags {h.flags:#x} lack compressed (bit 16) + markers "
                "(bit 17)")  # fmt: skip
        if h.compress_algorithm != fmt.COMPRESSION_DEFLATE:
            add("bad-compression", f"compressAlgorithm {h.compress_algorithm}, expected 1")
        gs = h.grain_size
        if gs < 8 or gs > _MAX_GRAIN_SECTORS or gs & (gs - 1):
            add("bad-grain-size", f"grainSize {gs} sectors")
        elif gs != fmt.GRAIN_SECTORS:
            add("odd-grain-size", f"grainSize {gs} sectors; VMware writes 128")
        if h.num_gtes_per_gt != fmt.GTES_PER_GT:
            add("bad-gt-size", f"numGTEsPerGT {h.num_gtes_per_gt}, expected 512")
        if h.flags & fmt.FLAG_VALID_NEWLINE and h.newline_check != b"\n \r\n":
            add("bad-newline", f"newline check bytes {h.newline_check!r}: file went through a "
                "text-mode transfer")  # fmt: skip
        if h.capacity == 0:
            # qemu's vmdk driver ("Unsupported image type") and libvmdk refuse 0 grain tables.
            add("zero-capacity", "capacity 0 sectors: qemu and libvmdk refuse an empty disk")
        if h.capacity * fmt.SECTOR >= 1 << 63:
            add("bad-capacity", f"capacity {h.capacity} sectors is not a real disk size")
        return h

    def descriptor_and_footer(self) -> None:
        h, add, win = self.header, self.faults.add, self.win
        if h.descriptor_offset == 0 or h.descriptor_size == 0:
            add("missing-descriptor", "descriptorOffset/descriptorSize is 0")
        elif h.descriptor_size > _MAX_DESCRIPTOR_SECTORS:
            add("bad-descriptor", f"descriptorSize {h.descriptor_size} sectors is too large")
        else:
            raw = win.read(h.descriptor_offset * fmt.SECTOR, h.descriptor_size * fmt.SECTOR)
            try:
                d = fmt.decode_descriptor(raw)
            except VmdkFormatError as e:
                add(e.fault, e.details.split(": ", 1)[-1])
            else:
                self.descriptor = d
                if d.create_type != "streamOptimized":
                    add("bad-create-type", f"createType {d.create_type!r}")
                total = sum(e.sectors for e in d.extents)
                if len(d.extents) != 1 or total != h.capacity:
                    add("capacity-mismatch", f"descriptor extents cover {total} sectors, header "
                        f"capacity is {h.capacity}")  # fmt: skip
        # Footer: [footer marker][footer][EOS] are the last three sectors (qemu reads end-1536).
        end = win.size // fmt.SECTOR
        if win.size % fmt.SECTOR:
            add("unaligned-size", f"file size {win.size} is not a whole number of sectors")
        last = win.read((end - 1) * fmt.SECTOR, fmt.SECTOR) if end >= 1 else b""
        self.has_eos = end >= 2 and last == bytes(fmt.SECTOR)
        if not self.has_eos:
            add("missing-eos", "the last sector is not an end-of-stream marker (qemu #1357)")
        fpos = end - (2 if self.has_eos else 1)
        self.footer = self._footer_at(fpos)
        if self.footer is None:
            add("missing-footer", "no footer marker + footer before the end of stream")
        else:
            f = self.footer
            same = (f.capacity, f.grain_size, f.num_gtes_per_gt, f.version, f.flags)
            if same != (h.capacity, h.grain_size, h.num_gtes_per_gt, h.version, h.flags):
                add("footer-mismatch", "footer fields differ from the header")
            if h.gd_offset not in (fmt.GD_AT_END, f.gd_offset):
                add("footer-mismatch", "header and footer name different grain directories")
        if h.gd_offset != fmt.GD_AT_END:
            gd_offset = h.gd_offset
        elif self.footer is not None and self.footer.gd_offset != fmt.GD_AT_END:
            gd_offset = self.footer.gd_offset
        else:
            add("missing-gd", "gdOffset is at-end in the header and no footer gives it")
            return
        self._load_tables(gd_offset)

    def _footer_at(self, sector: int) -> fmt.SparseHeader | None:
        if sector < 2:
            return None
        raw = self.win.read((sector - 1) * fmt.SECTOR, 2 * fmt.SECTOR)
        if len(raw) < 2 * fmt.SECTOR:
            return None
        m = fmt.decode_marker(raw)
        if m.is_grain or m.type != fmt.MARKER_FOOTER:
            return None
        try:
            return fmt.decode_header(raw[fmt.SECTOR :])
        except VmdkFormatError:
            return None

    def _load_tables(self, gd_offset: int) -> None:
        h, add = self.header, self.faults.add
        n_gd = fmt.gd_entries(h.capacity) if h.grain_size == fmt.GRAIN_SECTORS else -1
        if n_gd < 0 or h.num_gtes_per_gt != fmt.GTES_PER_GT:
            return
        file_sectors = self.win.size // fmt.SECTOR
        if gd_offset + fmt.sectors_for(4 * n_gd) > file_sectors:
            add("bad-gd", f"grain directory at sector {gd_offset} ({n_gd} entries) is past EOF")
            return
        if n_gd * fmt.GTES_PER_GT > _MAX_GT_ENTRIES:
            return  # too large to hold; the walk still checks every grain
        gd = fmt.decode_table(self.win.read(gd_offset * fmt.SECTOR, 4 * n_gd), n_gd)
        gt = array("I", bytes(4 * n_gd * fmt.GTES_PER_GT))
        for i, sector in enumerate(gd):
            if sector == 0:
                continue
            if sector + fmt.GT_SECTORS > file_sectors:
                add("bad-gd", f"grain directory entry {i} points past EOF (sector {sector})")
                continue
            raw = self.win.read(sector * fmt.SECTOR, fmt.GT_SECTORS * fmt.SECTOR)
            base = i * fmt.GTES_PER_GT
            gt[base : base + fmt.GTES_PER_GT] = array("I", fmt.decode_table(raw, fmt.GTES_PER_GT))
        self.gt = gt

    # -- the marker walk ---------------------------------------------------------------------

    def grains_iter(self) -> Iterator[tuple[int, bytes]]:
        """Yield (byte offset in the disk, inflated grain clipped to capacity) for each grain
        marker, in file order, reporting faults on the way."""
        h, add, win = self.header, self.faults.add, self.win
        grain_bytes = h.grain_size * fmt.SECTOR
        capacity = h.capacity * fmt.SECTOR
        # Worst deflate expansion: 5 bytes per 16 KiB stored block, plus zlib header/trailer.
        max_compressed = grain_bytes + 5 * (grain_bytes // 16384 + 1) + 64
        end = win.size // fmt.SECTOR
        start = h.overhead
        first_data = h.descriptor_offset + h.descriptor_size if h.descriptor_offset else 1
        if not first_data <= start <= end:
            add("bad-overhead", f"overHead {h.overhead} sectors is outside the file")
            start = min(max(first_data, 1), end)
        pos = start
        last_lba = -1
        walked_gt_entries = 0
        while pos < end:
            raw = win.read(pos * fmt.SECTOR, fmt.SECTOR)
            m = fmt.decode_marker(raw)
            if m.is_grain:
                lba = m.val
                if m.size > max_compressed:
                    add("bad-grain-size", f"grain at sector {pos} claims {m.size} bytes")
                nsec = fmt.grain_marker_sectors(m.size)
                if pos + nsec > end:
                    add("truncated", f"grain at sector {pos} runs past the end of the file")
                if lba % h.grain_size:
                    add("misaligned-grain", f"grain LBA {lba} at sector {pos} is not on a grain")
                if lba * fmt.SECTOR >= capacity:
                    add("lba-beyond-capacity", f"grain LBA {lba} at sector {pos} is past "
                        f"capacity {h.capacity}")  # fmt: skip
                elif lba == last_lba or (lba < last_lba and self._seen(lba, pos)):
                    add("grain-overlap", f"grain LBA {lba} at sector {pos} is stored twice")
                elif lba < last_lba:
                    add("unsorted-grains", f"grain LBA {lba} at sector {pos} follows {last_lba}")
                if self.gt is not None and lba * fmt.SECTOR < capacity:
                    idx = lba // h.grain_size
                    if self.gt[idx] != pos:
                        add("bad-gt", f"grain table entry {idx} is {self.gt[idx]}, the grain "
                            f"is at sector {pos}")  # fmt: skip
                    else:
                        walked_gt_entries += 1
                last_lba = max(last_lba, lba)
                self.grains += 1
                if self.inflate and lba * fmt.SECTOR < capacity:
                    data = win.read(pos * fmt.SECTOR + fmt.MARKER_HEADER_SIZE, m.size)
                    want = min(grain_bytes, capacity - lba * fmt.SECTOR)
                    grain = self._inflate(data, grain_bytes, want, lba, pos)
                    if grain is not None:
                        yield lba * fmt.SECTOR, grain[:want]
                pos += nsec
                continue
            if m.type == fmt.MARKER_EOS:
                if pos == end - 1:
                    return
                # A zero sector is an EOS marker, or padding some writers leave before the
                # first grain or between grains: look for more markers after the zeros.
                nxt = self._next_nonzero(pos + 1, end)
                if nxt is None:
                    add("early-eos", f"end-of-stream marker at sector {pos}, then "
                        f"{end - pos - 1} zero sectors")  # fmt: skip
                    return
                add("zero-gap", f"zero sectors {pos}..{nxt - 1} between markers")
                pos = nxt
                continue
            if m.type not in (fmt.MARKER_GT, fmt.MARKER_GD, fmt.MARKER_FOOTER):
                add("bad-marker", f"unknown marker type {m.type} at sector {pos}")
            if m.val > end - pos:
                add("truncated", f"marker at sector {pos} claims {m.val} sectors past EOF")
            if m.type == fmt.MARKER_FOOTER and pos + 2 + (1 if self.has_eos else 0) != end:
                add("footer-not-last", f"footer marker at sector {pos} is not 3rd from the end")
            pos += 1 + m.val
        if self.gt is not None:
            stored = sum(1 for v in self.gt if v)
            if stored != walked_gt_entries:
                add("bad-gt", f"grain tables list {stored} grains, {walked_gt_entries} found")

    def _next_nonzero(self, pos: int, end: int) -> int | None:
        """The first sector at or after ``pos`` that is not all zeros, read 1 MiB at a time."""
        step = 2048
        while pos < end:
            n = min(step, end - pos)
            chunk = self.win.read(pos * fmt.SECTOR, n * fmt.SECTOR)
            rest = chunk.lstrip(b"\0")
            if rest:
                return pos + (len(chunk) - len(rest)) // fmt.SECTOR
            pos += n
        return None

    def _seen(self, lba: int, pos: int) -> bool:
        # With grain tables loaded, an earlier grain for this LBA shows as a different entry.
        if self.gt is None:
            return False
        entry = self.gt[lba // self.header.grain_size]
        return entry != 0 and entry < pos

    def _inflate(
        self, data: bytes, grain_bytes: int, want: int, lba: int, pos: int
    ) -> bytes | None:
        d = zlib.decompressobj()
        try:  # one byte more than a grain: enough to tell a bomb, never more memory
            out = d.decompress(data, grain_bytes + 1)
        except zlib.error as e:
            self.faults.add("grain-inflate", f"grain LBA {lba} at sector {pos}: {e}")
            return None
        if len(out) > grain_bytes or d.unconsumed_tail:
            self.faults.add("grain-inflate", f"grain LBA {lba} at sector {pos} inflates to more "
                            f"than {grain_bytes} bytes")  # fmt: skip
            return None
        if not d.eof or d.unused_data:
            self.faults.add("grain-inflate", f"grain LBA {lba} at sector {pos} is not one whole "
                            "zlib stream")  # fmt: skip
            return None
        if len(out) != grain_bytes and len(out) < want:
            self.faults.add("grain-inflate", f"grain LBA {lba} at sector {pos} inflates to "
                            f"{len(out)} bytes, not {grain_bytes}")  # fmt: skip
            return None
        return out


def inspect_vmdk(src: VmdkSource, *, strict: bool = False, check_data: bool = True) -> VmdkInfo:
    """Check a streamOptimized VMDK. ``strict``: raise the first fault as VmdkFormatError;
    otherwise return every fault found in VmdkInfo.faults. ``check_data``: inflate every grain
    (slower, finds corrupt grains). NotFoundError / OvfkitIOError when the file cannot be read."""
    faults = _Faults(strict)
    with ExitStack() as stack:
        win = _open(src, stack)
        walk: _Walk | None = None
        try:
            walk = _Walk(win, faults, check_data)
            walk.descriptor_and_footer()
            for _ in walk.grains_iter():
                pass
        except _Stop:
            pass
        if walk is None:  # the header itself is unreadable
            return VmdkInfo(
                size=win.size, capacity=0, populated_size=0, grains=0,
                header=fmt.SparseHeader(capacity=0, magic=b"\0\0\0\0"), footer=None,
                descriptor=None, has_eos=False, faults=tuple(faults.items),
            )  # fmt: skip
        h = walk.header
        return VmdkInfo(
            size=win.size,
            capacity=h.capacity * fmt.SECTOR,
            populated_size=walk.grains * h.grain_size * fmt.SECTOR,
            grains=walk.grains,
            header=h,
            footer=walk.footer,
            descriptor=walk.descriptor,
            has_eos=walk.has_eos,
            faults=tuple(faults.items),
        )


def read_vmdk_data(src: VmdkSource, *, strict: bool = True) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, data) for every stored grain, in file order, data clipped to capacity;
    the rest of the disk reads as zeros. ``strict`` (default) raises VmdkFormatError on the
    first fault; otherwise faults are skipped (grains that do not inflate are left out)."""
    faults = _Faults(strict, _LAYOUT_ONLY)
    with ExitStack() as stack:
        win = _open(src, stack)
        try:
            walk = _Walk(win, faults, True)
            yield from walk.grains_iter()
        except _Stop:
            return
