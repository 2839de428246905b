"""streamOptimized VMDK wire format: pure encoders and decoders, no I/O.

Source: VMware, "Virtual Disk Format 5.0" technote (vmdk_50_technote.pdf), sections "Hosted Sparse
Extent Header", "Stream-Optimized Compressed Sparse Extents" (markers, footer, end-of-stream) and
"The Descriptor File". Importer rules on top of it (version 3, last three sectors, toolsVersion)
come from docs/interop-rules.md, which names their sources.

Units follow the technote: every offset and size in the header, markers, grain directory and grain
tables is in 512-byte sectors, except a grain marker's ``size`` (bytes of compressed data).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import InvalidArgumentError, VmdkFormatError
from .grains import GRAIN_SECTORS, GRAIN_SIZE, MARKER_HEADER_SIZE, SECTOR, zlib_stored
from .grains import grain_marker_frame as _grain_marker_frame

__all__ = [
    "ADAPTER_TYPES",
    "COMPRESSION_DEFLATE",
    "DESCRIPTOR_OFFSET",
    "DESCRIPTOR_SECTORS",
    "FLAG_COMPRESSED",
    "FLAG_MARKERS",
    "FLAG_REDUNDANT_GT",
    "FLAG_VALID_NEWLINE",
    "GD_AT_END",
    "GRAIN_SECTORS",
    "GRAIN_SIZE",
    "GTES_PER_GT",
    "GT_COVERAGE",
    "GT_SECTORS",
    "MAGIC",
    "MARKER_EOS",
    "MARKER_FOOTER",
    "MARKER_GD",
    "MARKER_GT",
    "MARKER_HEADER_SIZE",
    "OVERHEAD_SECTORS",
    "SECTOR",
    "VERSION",
    "Descriptor",
    "ExtentLine",
    "Marker",
    "SparseHeader",
    "TableBuilder",
    "decode_descriptor",
    "decode_header",
    "decode_marker",
    "decode_table",
    "encode_descriptor",
    "encode_grain_marker",
    "encode_header",
    "encode_metadata_marker",
    "encode_table",
    "gd_entries",
    "geometry",
    "grain_marker_frame",
    "grain_marker_sectors",
    "sectors_for",
    "stream_optimized_header",
    "zlib_stored",
]

MAGIC = b"KDMV"  # SPARSE_MAGICNUMBER 0x564d444b, little endian
VERSION = 3  # streamOptimized must be version 3: ESXi rejects older (COT#65)

# Header flags (technote, "Hosted Sparse Extent Header").
FLAG_VALID_NEWLINE = 1 << 0  # bit 0: the newline-detection characters are valid
FLAG_REDUNDANT_GT = 1 << 1  # bit 1: a redundant grain directory exists (qemu sets it)
FLAG_COMPRESSED = 1 << 16  # bit 16: grains are compressed
FLAG_MARKERS = 1 << 17  # bit 17: there are markers

GTES_PER_GT = 512  # numGTEsPerGT: fixed at 512 by the technote
GT_SECTORS = GTES_PER_GT * 4 // SECTOR
GT_COVERAGE = GTES_PER_GT * GRAIN_SIZE  # bytes of virtual disk one grain table maps (32 MiB)
DESCRIPTOR_OFFSET = 1
DESCRIPTOR_SECTORS = 20
OVERHEAD_SECTORS = 128  # first grain at sector 128, as VMware and qemu lay it out
GD_AT_END = 0xFFFFFFFFFFFFFFFF  # gdOffset in a streamOptimized header: read it from the footer
COMPRESSION_DEFLATE = 1  # compressAlgorithm: each grain is an RFC 1950 zlib stream

MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3

# ddb.adapterType values VMware and qemu know (technote, "The Disk Database").
ADAPTER_TYPES = ("ide", "buslogic", "lsilogic", "legacyESX")

# SparseExtentHeader, packed, little endian; 512 bytes with its pad.
_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH433x")
_MARKER = struct.Struct("<QII")  # a grain marker's u64 val + u32 size, then u32 type
_NEWLINE_CHECK = b"\n \r\n"

assert _HEADER.size == SECTOR


def sectors_for(nbytes: int) -> int:
    """Sectors needed to hold ``nbytes``."""
    return -(-nbytes // SECTOR)


def gd_entries(capacity_sectors: int) -> int:
    """Grain directory entries needed for a capacity (one per grain table)."""
    grains = -(-capacity_sectors // GRAIN_SECTORS)
    return -(-grains // GTES_PER_GT)


@dataclass(frozen=True)
class SparseHeader:
    """SparseExtentHeader (technote, "Hosted Sparse Extent Header"); sizes in sectors."""

    capacity: int
    version: int = VERSION
    flags: int = FLAG_VALID_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS
    grain_size: int = GRAIN_SECTORS
    descriptor_offset: int = DESCRIPTOR_OFFSET
    descriptor_size: int = DESCRIPTOR_SECTORS
    num_gtes_per_gt: int = GTES_PER_GT
    rgd_offset: int = 0
    gd_offset: int = GD_AT_END
    overhead: int = OVERHEAD_SECTORS
    unclean_shutdown: int = 0
    newline_check: bytes = _NEWLINE_CHECK  # singleEndLineChar, nonEndLineChar, doubleEndLine 1/2
    compress_algorithm: int = COMPRESSION_DEFLATE
    magic: bytes = MAGIC

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_COMPRESSED)

    @property
    def has_markers(self) -> bool:
        return bool(self.flags & FLAG_MARKERS)


def stream_optimized_header(capacity_sectors: int, gd_offset: int = GD_AT_END) -> SparseHeader:
    """The header a streamOptimized writer puts first (gd_offset at end) and in the footer."""
    return SparseHeader(capacity=capacity_sectors, gd_offset=gd_offset)


def encode_header(header: SparseHeader) -> bytes:
    if len(header.magic) != 4 or len(header.newline_check) != 4:
        raise InvalidArgumentError("VMDK header magic and newline check must be 4 bytes each")
    try:
        return _HEADER.pack(
            header.magic,
            header.version,
            header.flags,
            header.capacity,
            header.grain_size,
            header.descriptor_offset,
            header.descriptor_size,
            header.num_gtes_per_gt,
            header.rgd_offset,
            header.gd_offset,
            header.overhead,
            header.unclean_shutdown,
            header.newline_check,
            header.compress_algorithm,
        )
    except struct.error as e:
        raise InvalidArgumentError(f"VMDK header field out of range: {e}") from None


def decode_header(data: bytes | memoryview) -> SparseHeader:
    """Decode a header or footer sector. Only the magic is checked here (bad-magic, truncated);
    whether the other fields make sense is the reader's business."""
    if len(data) < SECTOR:
        raise VmdkFormatError("truncated", f"header needs {SECTOR} bytes, got {len(data)}")
    (magic, version, flags, capacity, grain_size, doff, dsize, ngte, rgd, gd, overhead, unclean,
     newline, algo) = _HEADER.unpack_from(data, 0)  # fmt: skip
    if magic != MAGIC:
        raise VmdkFormatError("bad-magic", f"expected {MAGIC!r}, found {bytes(magic)!r}")
    return SparseHeader(
        capacity=capacity,
        version=version,
        flags=flags,
        grain_size=grain_size,
        descriptor_offset=doff,
        descriptor_size=dsize,
        num_gtes_per_gt=ngte,
        rgd_offset=rgd,
        gd_offset=gd,
        overhead=overhead,
        unclean_shutdown=unclean,
        newline_check=bytes(newline),
        compress_algorithm=algo,
        magic=bytes(magic),
    )


# --- markers (technote, "Stream-Optimized Compressed Sparse Extents") -------------------------


@dataclass(frozen=True)
class Marker:
    """A marker's first 16 bytes. ``size`` > 0: a grain marker, ``val`` is the grain's LBA in
    sectors and ``size`` the compressed bytes that follow the 12-byte marker. ``size`` == 0: a
    metadata marker, ``val`` is the number of metadata sectors after this one and ``type`` says
    which (EOS 0, GT 1, GD 2, footer 3)."""

    val: int
    size: int
    type: int

    @property
    def is_grain(self) -> bool:
        return self.size != 0


def grain_marker_sectors(compressed_size: int) -> int:
    """Sectors a grain marker with ``compressed_size`` bytes of data occupies (padded)."""
    return sectors_for(MARKER_HEADER_SIZE + compressed_size)


def grain_marker_frame(lba: int, size: int) -> tuple[bytes, bytes]:
    """The bytes before and after ``size`` bytes of compressed grain: (lba u64 + size u32, zero
    padding to the sector); ``ovfkit.vmdk.grains`` holds the grain-level encoders."""
    if size <= 0:
        raise InvalidArgumentError("a grain marker needs at least one byte of data")
    return _grain_marker_frame(lba, size)


def encode_grain_marker(lba: int, data: bytes | memoryview) -> bytes:
    """Grain marker: lba u64, size u32, then the compressed grain, zero padded to a sector."""
    head, pad = grain_marker_frame(lba, len(data))
    return b"".join((head, data, pad))


def encode_metadata_marker(marker_type: int, num_sectors: int) -> bytes:
    """A metadata marker sector: val = sectors of metadata following, size 0, type."""
    return _MARKER.pack(num_sectors, 0, marker_type) + bytes(SECTOR - _MARKER.size)


def decode_marker(data: bytes | memoryview) -> Marker:
    if len(data) < _MARKER.size:
        raise VmdkFormatError("truncated", f"a marker needs {_MARKER.size} bytes, got {len(data)}")
    val, size, mtype = _MARKER.unpack_from(data, 0)
    return Marker(val=val, size=size, type=mtype if size == 0 else 0)


# --- grain directory and grain tables ----------------------------------------------------------


def encode_table(entries: Sequence[int]) -> bytes:
    """A grain table or grain directory: u32 sector offsets, zero padded to whole sectors."""
    try:
        raw = struct.pack(f"<{len(entries)}I", *entries)
    except struct.error as e:
        raise InvalidArgumentError(f"grain table entry out of range (u32 sectors): {e}") from None
    return raw + bytes(sectors_for(len(raw)) * SECTOR - len(raw))


def decode_table(data: bytes | memoryview, count: int) -> tuple[int, ...]:
    if len(data) < 4 * count:
        raise VmdkFormatError("truncated", f"table of {count} entries needs {4 * count} bytes")
    return struct.unpack_from(f"<{count}I", data, 0)


# --- embedded descriptor (technote, "The Descriptor File") ------------------------------------


def geometry(capacity_sectors: int, adapter_type: str) -> tuple[int, int, int]:
    """(cylinders, heads, sectors): 16 heads for IDE (cylinders capped at 16383, the ATA limit),
    255 heads x 63 sectors otherwise (capped at 65535), as VMware writes them."""
    if adapter_type == "ide":
        heads, cap = 16, 16383
    else:
        heads, cap = 255, 65535
    return min(capacity_sectors // (heads * 63), cap), heads, 63


@dataclass(frozen=True)
class ExtentLine:
    access: str
    sectors: int
    kind: str
    filename: str
    offset: int | None = None


@dataclass(frozen=True)
class Descriptor:
    """A parsed descriptor: header keys (version, CID, parentCID, createType, ...), extents and
    the disk database (``ddb.*`` keys, quotes removed)."""

    header: Mapping[str, str]
    extents: tuple[ExtentLine, ...]
    ddb: Mapping[str, str] = field(default_factory=dict)

    @property
    def create_type(self) -> str | None:
        return self.header.get("createType")

    @property
    def cid(self) -> str | None:
        return self.header.get("CID")


_SAFE_NAME = re.compile(r'[^"\x00-\x1f\x7f]+')
_HEX32 = re.compile(r"[0-9a-f]{32}")


def encode_descriptor(
    capacity_sectors: int,
    filename: str,
    *,
    adapter_type: str = "lsilogic",
    hw_version: int = 13,
    long_content_id: str,
    uuid: bytes,
    size_sectors: int = DESCRIPTOR_SECTORS,
) -> bytes:
    """The embedded descriptor, NUL padded to ``size_sectors`` (spare room for tools that edit it
    in place). CID is the last 8 hex digits of ``long_content_id`` (32 lower-case hex digits);
    ``uuid`` is 16 bytes, written as VMware does (``ddb.uuid = "60 00 C2 ..."``)."""
    if adapter_type not in ADAPTER_TYPES:
        raise InvalidArgumentError(
            f"adapter_type {adapter_type!r} is not one of {', '.join(ADAPTER_TYPES)}"
        )
    if not _SAFE_NAME.fullmatch(filename):
        raise InvalidArgumentError(f"VMDK file name {filename!r} is empty or has quotes/controls")
    if not _HEX32.fullmatch(long_content_id):
        raise InvalidArgumentError(f"long_content_id {long_content_id!r}: 32 lower-case hex")
    if len(uuid) != 16:
        raise InvalidArgumentError("VMDK uuid must be 16 bytes")
    if hw_version < 1:
        raise InvalidArgumentError(f"hw_version {hw_version} must be positive")
    cyl, heads, secs = geometry(capacity_sectors, adapter_type)
    text = (
        "# Disk DescriptorFile\n"
        "version=1\n"
        'encoding="UTF-8"\n'
        f"CID={long_content_id[-8:]}\n"
        "parentCID=ffffffff\n"
        'createType="streamOptimized"\n'
        "\n"
        "# Extent description\n"
        f'RW {capacity_sectors} SPARSE "{filename}"\n'
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        f'ddb.adapterType = "{adapter_type}"\n'
        f'ddb.geometry.cylinders = "{cyl}"\n'
        f'ddb.geometry.heads = "{heads}"\n'
        f'ddb.geometry.sectors = "{secs}"\n'
        f'ddb.longContentID = "{long_content_id}"\n'
        # Without toolsVersion vCenter blocks guest customisation (open-vm-tools#151).
        'ddb.toolsInstallType = "4"\n'
        'ddb.toolsVersion = "2147483647"\n'
        f'ddb.uuid = "{" ".join(f"{b:02x}" for b in uuid)}"\n'
        f'ddb.virtualHWVersion = "{hw_version}"\n'
    ).encode()
    room = size_sectors * SECTOR
    if len(text) > room:
        raise InvalidArgumentError(f"VMDK descriptor is {len(text)} bytes, more than {room}")
    return text + bytes(room - len(text))


_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$')
_KEY_VALUE = re.compile(r"^([A-Za-z0-9_.]+)\s*=\s*(.*?)\s*$")


def decode_descriptor(data: bytes | str) -> Descriptor:
    """Parse descriptor text (NUL padding ignored). Unknown lines are an error: the descriptor is
    short and strict parsing catches corruption early."""
    if isinstance(data, bytes):
        data = data.split(b"\x00", 1)[0]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise VmdkFormatError("bad-descriptor", f"not UTF-8: {e}") from None
    else:
        text = data
    header: dict[str, str] = {}
    ddb: dict[str, str] = {}
    extents: list[ExtentLine] = []
    for n, raw_line in enumerate(text.splitlines(), 1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        m = _EXTENT.match(line)
        if m:
            extents.append(
                ExtentLine(
                    access=m[1],
                    sectors=int(m[2]),
                    kind=m[3],
                    filename=m[4] or "",
                    offset=int(m[5]) if m[5] else None,
                )
            )
            continue
        kv = _KEY_VALUE.match(line)
        if not kv:
            raise VmdkFormatError("bad-descriptor", f"line {n} unreadable: {raw_line[:80]!r}")
        key, value = kv[1], kv[2]
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        (ddb if key.startswith("ddb.") else header)[key] = value
    return Descriptor(header=header, extents=tuple(extents), ddb=ddb)


class TableBuilder:
    """The metadata a streamOptimized writer emits after its grains, as pure bookkeeping: grain
    tables (each after the grains it maps, with a GT marker; an all-empty table is not written
    and its directory entry stays 0, as VMware's and VirtualBox's writers do), then the grain
    directory, footer and end-of-stream marker (VMware Virtual Disk Format 5.0, "Stream-
    Optimized Compressed Sparse Extents"). The caller writes the bytes and says at which sector
    it stands; both engines share it (through ovfkit.vmdk.output), so their layouts cannot
    drift apart."""

    def __init__(self, capacity_sectors: int) -> None:
        self.capacity_sectors = capacity_sectors
        self._gd: dict[int, int] = {}
        self._gt = bytearray(_GT_BYTES)
        self._group = -1

    def enter(self, grain_index: int, at_sector: int) -> bytes:
        """Call before writing grain ``grain_index`` at ``at_sector``: the finished grain table
        to write first when this grain opens a new table, else b""."""
        group = grain_index // GTES_PER_GT
        if group == self._group:
            return b""
        out = self._flush(at_sector)
        self._group = group
        return out

    def place(self, grain_index: int, sector: int) -> None:
        """Grain ``grain_index`` (inside the table last entered) starts at ``sector``."""
        try:
            _U32.pack_into(self._gt, 4 * (grain_index % GTES_PER_GT), sector)
        except struct.error as e:
            raise InvalidArgumentError(f"grain table entry {sector} out of range (u32)") from e

    def place_many(self, first_index: int, entries: bytes) -> None:
        """Entries (u32 little endian, 0 for a grain not stored) of grains from
        ``first_index`` on, all inside the table last entered."""
        at = 4 * (first_index % GTES_PER_GT)
        if at + len(entries) > _GT_BYTES:
            raise InvalidArgumentError("grain table entries run past their table")
        self._gt[at : at + len(entries)] = entries

    def finish(self, at_sector: int) -> bytes:
        """Everything after the last grain: its table, GD marker + GD, footer marker + footer
        (the header with the real gdOffset), EOS marker — the last three sectors qemu reads."""
        out = self._flush(at_sector)
        at_sector += len(out) // SECTOR
        n_gd = gd_entries(self.capacity_sectors)
        table = [0] * n_gd
        for group, sector in self._gd.items():
            table[group] = sector
        gd_offset = at_sector + 1
        return b"".join(
            (
                out,
                encode_metadata_marker(MARKER_GD, sectors_for(4 * n_gd)),
                encode_table(table),
                encode_metadata_marker(MARKER_FOOTER, 1),
                encode_header(stream_optimized_header(self.capacity_sectors, gd_offset)),
                encode_metadata_marker(MARKER_EOS, 0),
            )
        )

    def _flush(self, at_sector: int) -> bytes:
        if self._group < 0 or self._gt == _EMPTY_GT:
            self._gt[:] = _EMPTY_GT
            return b""
        self._gd[self._group] = at_sector + 1
        out = encode_metadata_marker(MARKER_GT, GT_SECTORS) + bytes(self._gt)
        self._gt[:] = _EMPTY_GT
        return out


_U32 = struct.Struct("<I")
_GT_BYTES = GTES_PER_GT * 4  # 2048: four whole sectors, no padding
_EMPTY_GT = bytes(_GT_BYTES)
