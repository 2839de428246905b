"""POSIX tar headers for OVA packages: a pure encoder and a hardened decoder.

An OVA is a plain tar archive (DSP0243 §5.3). Importers are strict about its shape, so the encoder
writes exactly one 512-byte header per member and nothing else:

* POSIX.1-1988 ustar headers (magic ``"ustar\\0"`` version ``"00"``); a member of 8 GiB or more has
  a size that overflows the 11-digit octal field, so its header carries the size in GNU base-256
  (first byte 0x80, big-endian binary; GNU tar manual "Extensions to the Archive Format", as
  VirtualBox ``tarvfswriter.cpp`` and open-vmdk ``tar --format=gnu`` do) and therefore the GNU
  magic ``"ustar  \\0"`` (xen-orchestra#7183).
* Never a PAX ``x``/``g`` extended header or a GNU ``@LongLink`` entry: virt-v2v computes a member's
  data offset as (header block + 1) × 512 and VMware refuses them (COT#82).
* Names ≤ 100 bytes of ASCII in the ``name`` field, uid/gid 0, mode 0644, integer mtime.
* Data padded with zeros to a 512-byte boundary; the archive ends with two zero blocks.

The decoder reads both octal and base-256 sizes, checks the header checksum and refuses what an
OVA never needs and an attacker would use: links, devices, FIFOs, absolute names, ``..`` and
extension headers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidArgumentError, OperationFailedError

__all__ = [
    "BLOCK",
    "END_OF_ARCHIVE",
    "MAX_NAME",
    "OCTAL_SIZE_LIMIT",
    "TarFormatError",
    "TarHeader",
    "decode_header",
    "encode_header",
    "padding",
    "validate_name",
]

BLOCK = 512
MAX_NAME = 100
# Largest size the 12-byte field holds as 11 octal digits + NUL: 8 GiB - 1 (POSIX ustar).
OCTAL_SIZE_LIMIT = 8**11
END_OF_ARCHIVE = bytes(2 * BLOCK)

_USTAR_MAGIC = b"ustar\x0000"  # POSIX.1-1988: magic "ustar\0", version "00"
_GNU_MAGIC = b"ustar  \x00"  # GNU tar "oldgnu"/"gnu": magic "ustar " + version " \0"
_REGULAR = (b"0", b"\x00")  # '\0' is the pre-POSIX spelling of a regular file
_DIRECTORY = b"5"
_TYPE_NAMES = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"6": "FIFO",
    b"7": "contiguous file",
    b"x": "PAX extended header",
    b"g": "PAX global header",
    b"L": "GNU long name",
    b"K": "GNU long link name",
    b"S": "GNU sparse file",
    b"V": "GNU volume header",
    b"M": "GNU multi-volume continuation",
}


class TarFormatError(OperationFailedError):
    """An archive that is not a well-formed, safe OVA tar (SYS.1006)."""


@dataclass(frozen=True)
class TarHeader:
    """One decoded member header. ``data_offset`` is set by the caller that knows where the
    header sat (the header's own offset + 512)."""

    name: str
    size: int
    mtime: int
    is_dir: bool = False
    gnu: bool = False
    data_offset: int = 0

    @property
    def padded_size(self) -> int:
        return self.size + padding(self.size)


def padding(size: int) -> int:
    """Zero bytes that follow ``size`` bytes of data to reach the next 512-byte boundary."""
    return -size % BLOCK


def validate_name(name: str) -> bytes:
    """The member name as stored, or InvalidArgumentError: 1..100 bytes of printable ASCII, no
    ``/`` or ``\\`` (OVA members are flat, DSP0243 §5.3), not ``.`` or ``..``."""
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"tar member name {name!r} is not ASCII") from None
    if not 0 < len(raw) <= MAX_NAME:
        raise InvalidArgumentError(
            f"tar member name {name!r} is {len(raw)} bytes; it must be 1..{MAX_NAME} bytes"
        )
    if name in (".", "..") or any(c in name for c in "/\\") or not name.isprintable():
        raise InvalidArgumentError(
            f"tar member name {name!r} must be a flat file name of printable ASCII"
        )
    return raw


def _octal(value: int, width: int) -> bytes:
    """``width - 1`` zero-padded octal digits and a NUL terminator (POSIX ustar numeric field)."""
    return b"%0*o\x00" % (width - 1, value)


def _base256(value: int, width: int) -> bytes:
    """GNU base-256: 0x80 marker then the value big-endian in the remaining bytes."""
    return b"\x80" + value.to_bytes(width - 1, "big")


def encode_header(name: str, size: int, mtime: int = 0) -> bytes:
    """The 512-byte header of a regular file ``name`` of ``size`` bytes modified at ``mtime``
    (integer seconds since the epoch). Pure; raises InvalidArgumentError for what cannot be
    encoded in one header."""
    raw_name = validate_name(name)
    if not isinstance(size, int) or size < 0 or size >= 1 << (8 * 11):
        raise InvalidArgumentError(f"tar member {name!r}: size {size!r} cannot be encoded")
    if not isinstance(mtime, int) or not 0 <= mtime < OCTAL_SIZE_LIMIT:
        raise InvalidArgumentError(f"tar member {name!r}: mtime {mtime!r} must be an integer")
    big = size >= OCTAL_SIZE_LIMIT
    header = bytearray(BLOCK)
    header[0:100] = raw_name.ljust(100, b"\x00")
    header[100:108] = _octal(0o644, 8)  # mode
    header[108:116] = _octal(0, 8)  # uid
    header[116:124] = _octal(0, 8)  # gid
    header[124:136] = _base256(size, 12) if big else _octal(size, 12)
    header[136:148] = _octal(mtime, 12)
    header[148:156] = b" " * 8  # checksum is computed with its own field as spaces
    header[156:157] = b"0"  # typeflag: regular file
    header[257:265] = _GNU_MAGIC if big else _USTAR_MAGIC
    header[265:269] = b"root"  # uname
    header[297:301] = b"root"  # gname
    if not big:  # ustar devmajor/devminor; GNU tar leaves them empty for regular files
        header[329:337] = _octal(0, 8)
        header[337:345] = _octal(0, 8)
    # Checksum: six octal digits, NUL, space (POSIX; what GNU tar and tarfile write).
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


def _parse_number(field: bytes, what: str) -> int:
    if field[:1] == b"\x80":  # GNU base-256, positive
        return int.from_bytes(field[1:], "big")
    if field[:1] == b"\xff":
        raise TarFormatError(f"tar header {what} is negative (base-256)")
    text = field.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarFormatError(f"tar header {what} {bytes(field)!r} is not an octal number") from None


def _safe_member_name(raw: bytes) -> str:
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise TarFormatError(f"tar member name {raw!r} is not ASCII") from None
    stripped = name
    while stripped.startswith("./"):
        stripped = stripped[2:]
    stripped = stripped.rstrip("/") if stripped.endswith("/") else stripped
    parts = stripped.split("/")
    if (
        not stripped
        or name.startswith("/")
        or "\\" in name
        or not name.isprintable()
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise TarFormatError(f"tar member name {name!r} is unsafe (absolute, '..' or malformed)")
    return stripped


def encode_member(name: str, data: bytes | bytearray | memoryview, mtime: int = 0) -> bytes:
    """A whole member of known bytes: its header, the data, the padding to the next block."""
    return encode_header(name, len(data), mtime) + bytes(data) + bytes(padding(len(data)))


def is_zero_block(block: bytes) -> bool:
    return block.count(0) == len(block)


def decode_header(block: bytes) -> TarHeader:
    """Decode one 512-byte header block (not a zero block: check :func:`is_zero_block` first).

    Raises TarFormatError for a bad checksum, a member type an OVA never holds, or an unsafe name.
    """
    if len(block) != BLOCK:
        raise TarFormatError(f"truncated tar header ({len(block)} of {BLOCK} bytes)")
    stored = _parse_number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b >= 0x80)
    if stored not in (unsigned, signed):
        raise TarFormatError(
            f"tar header checksum mismatch (stored {stored:o}, computed {unsigned:o}):"
            " not a tar archive or a corrupted header"
        )
    magic = block[257:265]
    typeflag = block[156:157]
    if typeflag not in _REGULAR and typeflag != _DIRECTORY:
        kind = _TYPE_NAMES.get(typeflag, f"type {typeflag!r}")
        member = block[:100].split(b"\x00", 1)[0]
        raise TarFormatError(f"tar member {member!r} is a {kind}; an OVA holds only regular files")
    raw_name = block[0:100].split(b"\x00", 1)[0]
    if magic == _USTAR_MAGIC or magic[:6] == b"ustar\x00":
        prefix = block[345:500].split(b"\x00", 1)[0]
        if prefix:
            raw_name = prefix + b"/" + raw_name
    name = _safe_member_name(raw_name)
    return TarHeader(
        name=name,
        size=_parse_number(block[124:136], "size"),
        mtime=_parse_number(block[136:148], "mtime"),
        is_dir=typeflag == _DIRECTORY,
        gnu=magic == _GNU_MAGIC,
    )
