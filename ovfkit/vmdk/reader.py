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

import io
import os
from array import array
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from isal import isal_zlib

from ..errors import InvalidArgumentError, NotFoundError, OvfkitIOError, VmdkFormatError
from . import format as fmt

if TYPE_CHECKING:
    from ..progress import CancelToken
    from .checkers import Job, Result, Task

__all__ = ["VmdkInfo", "VmdkSource", "inspect_vmdk", "read_vmdk_data"]

VmdkSource = str | os.PathLike[str] | BinaryIO | tuple[BinaryIO, int, int]
"""A path, a seekable binary stream (the whole stream), or (stream, offset, size): a VMDK
stored inside another file, e.g. an OVA tar member."""

_MAX_GRAIN_SECTORS = 2048  # 1 MiB grains at most (VMware writes 128); bounds a grain's memory
_MAX_DESCRIPTOR_SECTORS = 2048
_MAX_GT_ENTRIES = 1 << 24  # 64 MiB of grain table entries (disks up to 1 TiB with 64 KiB grains)
_READ_AHEAD = 4 << 20
_INFLATE_ERROR: type[Exception] = isal_zlib.error  # type: ignore[assignment]  # a class
# Files smaller than this are walked in this process: starting workers costs ~0.1 s.
_MIN_PARALLEL_BYTES = 64 << 20
_MIN_SEGMENT_SECTORS = (8 << 20) // fmt.SECTOR
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
        self.raw: list[tuple[str, str]] = []  # what add() was given, for a worker's report

    def add(self, fault: str, details: str) -> None:
        if fault in self.ignore:
            return
        self.raw.append((fault, details))
        err = VmdkFormatError(fault, details)
        if self.strict:
            raise err
        self.items.append(err)
        if fault in _FATAL:
            raise _Stop


class _Window:
    """Random access to [offset, offset + size) of a binary stream. ``fd``: the stream's file
    descriptor when it has one (worker processes then read the same file with pread)."""

    def __init__(self, f: BinaryIO | None, offset: int, size: int, fd: int | None = None) -> None:
        self.f, self.base, self.size, self.fd = f, offset, size, fd
        self._ahead = b""
        self._ahead_pos = 0

    def read(self, pos: int, n: int) -> bytes:
        n = max(0, min(n, self.size - pos))
        try:
            if self.fd is not None:
                return os.pread(self.fd, n, self.base + pos)
            assert self.f is not None
            self.f.seek(self.base + pos)
            data = self.f.read(n)
        except OSError as e:
            raise OvfkitIOError(f"reading the VMDK at byte {pos} failed: {e}") from e
        return data

    def read_ahead(self, pos: int, n: int) -> memoryview:
        """``read`` for a forward walk: one read of ``_READ_AHEAD`` bytes serves the markers and
        grains that follow (a pread per grain costs more than inflating a stored one)."""
        rel = pos - self._ahead_pos
        if rel < 0 or rel + n > len(self._ahead):
            self._ahead = self.read(pos, max(n, _READ_AHEAD))
            self._ahead_pos, rel = pos, 0
        return memoryview(self._ahead)[rel : rel + n]


def _descriptor_of(f: object) -> int | None:
    """The file descriptor under ``f`` when pread on it reads what ``f`` reads: a plain binary
    file (a GzipFile, say, has the descriptor of its compressed bytes), flushed first."""
    if not isinstance(f, (io.FileIO, io.BufferedReader, io.BufferedRandom)):
        return None
    try:
        f.flush()
        return f.fileno()
    except (OSError, ValueError):
        return None


def _open(src: VmdkSource, stack: ExitStack) -> _Window:
    if isinstance(src, tuple):
        f, offset, size = src
        if offset < 0 or size < 0:
            raise InvalidArgumentError(f"VMDK window offset {offset} / size {size} is negative")
        return _Window(f, offset, size, _descriptor_of(f))
    if isinstance(src, str | os.PathLike):
        try:
            f = stack.enter_context(open(src, "rb"))  # noqa: SIM115 - closed by the stack
        except FileNotFoundError:
            raise NotFoundError(f"VMDK file {os.fspath(src)!r} does not exist") from None
        except OSError as e:
            raise OvfkitIOError(f"cannot open VMDK file {os.fspath(src)!r}: {e}") from e
        return _Window(f, 0, os.fstat(f.fileno()).st_size, f.fileno())
    try:
        size = src.seek(0, os.SEEK_END)
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"the VMDK stream must be seekable: {e}") from e
    return _Window(src, 0, size, _descriptor_of(src))


class _Walk:
    """One pass over a VMDK: header, descriptor, footer, grain tables, then the markers."""

    def __init__(
        self,
        win: _Window,
        faults: _Faults,
        inflate: bool,
        header: fmt.SparseHeader | None = None,
    ) -> None:
        self.win, self.faults, self.inflate = win, faults, inflate
        self.footer: fmt.SparseHeader | None = None
        self.descriptor: fmt.Descriptor | None = None
        self.has_eos = False
        self.grains = 0
        self.walked_gt_entries = 0
        self.gt: array[int] | None = None
        # A segment's walk (ovfkit.vmdk.checkers) holds only its own grain tables, gt[0] being
        # entry ``gt_base``, and expects only grains of LBAs in ``lbas`` (sectors, [lo, hi)).
        self.gt_base = 0
        self.lbas: tuple[int, int] | None = None
        self.foreign = False  # a grain outside ``lbas``: the segments do not fit the file
        self.end_pos = 0  # the sector where the walk stopped
        self.complete = False  # it reached the end of the file (or its last-sector EOS)
        self.header = header if header is not None else self._header()

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

    def walk_start(self) -> int:
        """The sector of the first marker after the header, descriptor and overhead."""
        h = self.header
        end = self.win.size // fmt.SECTOR
        start = h.overhead
        first_data = h.descriptor_offset + h.descriptor_size if h.descriptor_offset else 1
        if not first_data <= start <= end:
            self.faults.add("bad-overhead", f"overHead {h.overhead} sectors is outside the file")
            start = min(max(first_data, 1), end)
        return start

    def walk_all(self) -> Iterator[tuple[int, bytes]]:
        """Every grain (see grains_iter) from the first marker to the end of the file, then
        the grain tables' count of grains checked against the grains found."""
        yield from self.grains_iter(self.walk_start(), self.win.size // fmt.SECTOR)
        self.check_gt_count()

    def check_gt_count(self) -> None:
        """Every grain the tables list was found (a walk cut short by a fault cannot tell)."""
        if self.gt is not None and self.complete:
            stored = len(self.gt) - self.gt.count(0)
            if stored != self.walked_gt_entries:
                self.faults.add(
                    "bad-gt", f"grain tables list {stored} grains, {self.walked_gt_entries} found"
                )

    def grains_iter(self, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
        """Yield (byte offset in the disk, inflated grain clipped to capacity) for each grain
        marker from sector ``start`` up to ``stop``, in file order, reporting faults on the
        way; ``end_pos`` is then the sector where the walk ended."""
        h, add, win = self.header, self.faults.add, self.win
        grain_bytes = h.grain_size * fmt.SECTOR
        capacity = h.capacity * fmt.SECTOR
        # Worst deflate expansion: 5 bytes per 16 KiB stored block, plus zlib header/trailer.
        max_compressed = grain_bytes + 5 * (grain_bytes // 16384 + 1) + 64
        end = win.size // fmt.SECTOR
        gt, gt_base, lbas = self.gt, self.gt_base, self.lbas
        pos = start
        last_lba = -1
        while pos < stop:
            self.end_pos = pos
            m = fmt.decode_marker(win.read_ahead(pos * fmt.SECTOR, fmt.SECTOR))
            if m.is_grain:
                lba = m.val
                inside = lbas is None or lbas[0] <= lba < lbas[1]
                if not inside and lba * fmt.SECTOR < capacity:
                    self.foreign = True
                    return
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
                if gt is not None and lba * fmt.SECTOR < capacity:
                    idx = lba // h.grain_size
                    if gt[idx - gt_base] != pos:
                        add("bad-gt", f"grain table entry {idx} is {gt[idx - gt_base]}, the "
                            f"grain is at sector {pos}")  # fmt: skip
                    else:
                        self.walked_gt_entries += 1
                last_lba = max(last_lba, lba)
                self.grains += 1
                if self.inflate and lba * fmt.SECTOR < capacity:
                    data = win.read_ahead(pos * fmt.SECTOR + fmt.MARKER_HEADER_SIZE, m.size)
                    want = min(grain_bytes, capacity - lba * fmt.SECTOR)
                    grain = self._inflate(data, grain_bytes, want, lba, pos)
                    if grain is not None:
                        yield lba * fmt.SECTOR, grain[:want]
                pos += nsec
                continue
            if m.type == fmt.MARKER_EOS:
                if pos == end - 1:
                    self.complete = True
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
        self.end_pos = pos
        self.complete = pos >= end

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
        entry = self.gt[lba // self.header.grain_size - self.gt_base]
        return entry != 0 and entry < pos

    def _inflate(
        self, data: bytes | memoryview, grain_bytes: int, want: int, lba: int, pos: int
    ) -> bytes | None:
        # ISA-L's inflate: ~2.7x zlib's on the reference disk's grains, same zlib streams.
        d = isal_zlib.decompressobj()
        try:  # one byte more than a grain: enough to tell a bomb, never more memory
            out = d.decompress(data, grain_bytes + 1)
        except _INFLATE_ERROR as e:
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


def check_segment(job: Job, task: Task) -> Result:
    """A worker's part of inspect_vmdk (ovfkit.vmdk.checkers): walk and inflate the grains of
    one segment and report what was found; the parent adds it up in segment order."""
    fd, base, size, header, has_eos = job
    start, stop, gt_base, entries, lbas = task
    faults = _Faults(strict=False)
    walk = _Walk(_Window(None, base, size, fd), faults, True, fmt.decode_header(header))
    walk.has_eos = has_eos
    walk.gt = array("I")
    walk.gt.frombytes(entries)
    walk.gt_base, walk.lbas = gt_base, lbas
    try:
        for _ in walk.grains_iter(start, stop):
            pass
    except _Stop:
        pass
    return (
        walk.grains, walk.walked_gt_entries, faults.raw, walk.end_pos, walk.foreign,
        walk.complete,
    )  # fmt: skip


def _segments(walk: _Walk, start: int, parts: int) -> list[Task] | None:
    """The grain walk cut at grain tables into about ``4 * parts`` segments of the file, each
    from the first grain of its first table (by the grain tables) to the next segment's start.
    None when the tables cannot tell: missing, or their grains not in ascending file order."""
    gt, end = walk.gt, walk.win.size // fmt.SECTOR
    if gt is None or walk.header.grain_size != fmt.GRAIN_SECTORS:
        return None
    per = fmt.GTES_PER_GT
    tables = len(gt) // per
    raw = memoryview(gt).cast("B")
    firsts: list[tuple[int, int]] = []  # (table, sector of its first grain)
    last = start - 1
    for t in range(tables):
        entries = bytes(raw[4 * per * t : 4 * per * (t + 1)])
        rest = entries.lstrip(b"\0")
        if not rest:
            continue
        first = gt[per * t + (len(entries) - len(rest)) // 4]
        if first <= last or first >= end:
            return None
        firsts.append((t, first))
        last = first
    target = max(_MIN_SEGMENT_SECTORS, (end - start) // (4 * parts))
    cuts = [(0, start)]
    for t, first in firsts[1:]:
        if first - cuts[-1][1] >= target and end - first >= target // 2:
            cuts.append((t, first))
    if len(cuts) < 2:
        return None
    tasks: list[Task] = []
    for k, (t, begin) in enumerate(cuts):
        t_end, stop = cuts[k + 1] if k + 1 < len(cuts) else (tables, end)
        lbas = (t * per * fmt.GRAIN_SECTORS, t_end * per * fmt.GRAIN_SECTORS)
        tasks.append((begin, stop, t * per, gt[t * per : t_end * per].tobytes(), lbas))
    return tasks


def _walk_in_parallel(
    walk: _Walk, start: int, workers: int | None, cancel: CancelToken | None
) -> bool:
    """Walk the grains from ``start`` on worker processes, segment by segment, with the same
    faults, in the same order, as the serial walk; False when this walk is not one for them
    (one core, structure only, strict, a stream without a file descriptor, a small file, grain
    tables that cannot place the segments, or segments the file's markers do not fit): the
    caller then walks serially."""
    from .checkers import Crew, worker_count

    win = walk.win
    count = worker_count(workers)
    if (
        count < 2
        or not walk.inflate
        or walk.faults.strict
        or win.fd is None
        or win.size - start * fmt.SECTOR < _MIN_PARALLEL_BYTES
    ):
        return False
    tasks = _segments(walk, start, count)
    if tasks is None:
        return False
    job: Job = (win.fd, win.base, win.size, win.read(0, fmt.SECTOR), walk.has_eos)
    results: list[Result] = []
    with Crew(min(count, len(tasks))) as crew:
        for k, result in enumerate(crew.run(job, tasks, cancel)):
            _, _, found, end_pos, foreign, _ = result
            if any(fault in _FATAL for fault, _ in found):
                results.append(result)
                break  # the walk stops there, as the serial one would
            if foreign or (k + 1 < len(tasks) and end_pos != tasks[k][1]):
                return False  # the markers and the tables disagree: the serial walk says how
            results.append(result)
    for grains, walked, faults, _, _, complete in results:
        walk.grains += grains
        walk.walked_gt_entries += walked
        walk.complete = complete
        for fault, details in faults:
            walk.faults.add(fault, details)  # raises _Stop at a fatal one
    walk.check_gt_count()
    return True


def inspect_vmdk(
    src: VmdkSource,
    *,
    strict: bool = False,
    check_data: bool = True,
    workers: int | None = 1,
    cancel: CancelToken | None = None,
) -> VmdkInfo:
    """Check a streamOptimized VMDK. ``strict``: raise the first fault as VmdkFormatError;
    otherwise return every fault found in VmdkInfo.faults. ``check_data``: inflate every grain
    (slower, finds corrupt grains). ``workers``: processes that walk and inflate the grains of
    a file large enough to be worth it (None = one per core; see ovfkit.vmdk.checkers), with
    the same result as one. NotFoundError / OvfkitIOError when the file cannot be read;
    OperationCancelledError when ``cancel`` is set while workers run."""
    faults = _Faults(strict)
    with ExitStack() as stack:
        win = _open(src, stack)
        walk: _Walk | None = None
        try:
            walk = _Walk(win, faults, check_data)
            walk.descriptor_and_footer()
            start = walk.walk_start()
            if not _walk_in_parallel(walk, start, workers, cancel):
                for _ in walk.grains_iter(start, win.size // fmt.SECTOR):
                    pass
                walk.check_gt_count()
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
            yield from walk.walk_all()
        except _Stop:
            return
