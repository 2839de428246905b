"""The tar header encoder/decoder, judged by Python's tarfile and GNU tar."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovfkit.errors import InvalidArgumentError
from ovfkit.ova.tar import (
    BLOCK,
    END_OF_ARCHIVE,
    OCTAL_SIZE_LIMIT,
    TarFormatError,
    decode_header,
    encode_header,
    encode_member,
    padding,
)

NAME_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="/\\")
NAMES = st.text(NAME_CHARS, min_size=1, max_size=100).filter(lambda n: n not in (".", ".."))
SIZES = st.one_of(
    st.sampled_from([0, 1, 511, 512, 513, OCTAL_SIZE_LIMIT - 1, OCTAL_SIZE_LIMIT,
                     OCTAL_SIZE_LIMIT + 1, 1 << 40, (1 << 88) - 1]),
    st.integers(min_value=0, max_value=1 << 45),
)
MTIMES = st.integers(min_value=0, max_value=8**11 - 1)


class _Fake(io.RawIOBase):
    """A header followed by a huge member whose data is never read: lets tarfile parse headers
    of 8 GiB members without 8 GiB of bytes."""

    def __init__(self, header: bytes) -> None:
        self._header = header
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else self._pos + pos
        return self._pos

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._header[self._pos : self._pos + len(buf)]
        n = len(buf)
        buf[: len(data)] = data
        buf[len(data) : n] = bytes(n - len(data))  # zeros after the header: end of archive
        self._pos += n
        return n


@settings(max_examples=300)
@given(name=NAMES, size=SIZES, mtime=MTIMES)
def test_header_read_back_by_tarfile_and_decoder(name: str, size: int, mtime: int) -> None:
    header = encode_header(name, size, mtime)
    assert len(header) == BLOCK
    info = tarfile.TarInfo.frombuf(header, "ascii", "strict")
    assert (info.name, info.size, info.mtime, info.mode, info.uid, info.gid) == (
        name, size, mtime, 0o644, 0, 0)
    assert info.type == tarfile.REGTYPE
    decoded = decode_header(header)
    assert (decoded.name, decoded.size, decoded.mtime) == (name, size, mtime)
    assert decoded.gnu == (size >= OCTAL_SIZE_LIMIT)
    # Exactly one header: no PAX or GNU long-name member precedes the real one.
    with tarfile.open(fileobj=io.BufferedReader(_Fake(header)), mode="r:") as archive:
        first = archive.next()
    assert first is not None and first.offset == 0 and first.offset_data == BLOCK
    assert first.name == name and first.size == size and not first.pax_headers


@settings(max_examples=50, deadline=None)
@given(members=st.lists(st.tuples(NAMES, st.binary(max_size=1500)), min_size=1, max_size=4,
                        unique_by=lambda m: m[0]))
def test_archive_round_trip_through_tarfile(members: list[tuple[str, bytes]]) -> None:
    out = bytearray()
    for name, data in members:
        member = encode_member(name, data, 1_700_000_000)
        assert member == encode_header(name, len(data), 1_700_000_000) + data + bytes(
            padding(len(data)))
        assert decode_header(member[:BLOCK]).size == len(data)
        out += member
    out += END_OF_ARCHIVE
    assert len(out) % BLOCK == 0
    with tarfile.open(fileobj=io.BytesIO(bytes(out)), mode="r:") as archive:
        got = [(m.name, archive.extractfile(m).read()) for m in archive]  # type: ignore[union-attr]
    assert got == members


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_gnu_tar_lists_members_and_big_size(tmp_path: Path) -> None:
    data = b"x" * 700
    out = encode_header("vm.ovf", len(data), 1_600_000_000) + data + bytes(padding(len(data)))
    out += encode_header("vm-disk1.vmdk", 0, 1_600_000_000)
    out += END_OF_ARCHIVE
    path = tmp_path / "a.ova"
    path.write_bytes(out)
    listing = subprocess.run(["tar", "tvf", str(path)], check=True, capture_output=True,
                             text=True).stdout.splitlines()
    assert [line.split()[-1] for line in listing] == ["vm.ovf", "vm-disk1.vmdk"]
    assert listing[0].split()[:3] == ["-rw-r--r--", "root/root", "700"]
    extracted = tmp_path / "x"
    extracted.mkdir()
    subprocess.run(["tar", "xf", str(path), "-C", str(extracted)], check=True)
    assert (extracted / "vm.ovf").read_bytes() == data
    # A member of 8 GiB + 1 (base-256 size), as a sparse file: GNU tar reads the size right.
    big = tmp_path / "big.ova"
    with big.open("wb") as f:
        f.write(encode_header("big.vmdk", OCTAL_SIZE_LIMIT + 1, 0))
        f.truncate(BLOCK + OCTAL_SIZE_LIMIT + 1 + padding(OCTAL_SIZE_LIMIT + 1) + 2 * BLOCK)
    listing = subprocess.run(["tar", "tvf", str(big)], check=True, capture_output=True,
                             text=True).stdout.split()
    assert str(OCTAL_SIZE_LIMIT + 1) in listing and listing[-1] == "big.vmdk"


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "/abs", "x" * 101, "caf\u00e9", "tab\there", "back\\slash"]
)
def test_encoder_refuses_bad_names(name: str) -> None:
    with pytest.raises(InvalidArgumentError):
        encode_header(name, 1)


def test_encoder_refuses_bad_numbers() -> None:
    with pytest.raises(InvalidArgumentError):
        encode_header("a", -1)
    with pytest.raises(InvalidArgumentError):
        encode_header("a", 1, -5)
    with pytest.raises(InvalidArgumentError):
        encode_header("a", 1, 1.5)  # type: ignore[arg-type]


def _tarfile_header(name: str, type_: bytes, linkname: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    return info.tobuf(format=tarfile.USTAR_FORMAT)


@pytest.mark.parametrize(
    ("name", "type_"),
    [
        ("link", tarfile.SYMTYPE),
        ("hard", tarfile.LNKTYPE),
        ("dev", tarfile.CHRTYPE),
        ("blk", tarfile.BLKTYPE),
        ("fifo", tarfile.FIFOTYPE),
        ("/etc/passwd", tarfile.REGTYPE),
        ("../escape", tarfile.REGTYPE),
        ("a/../../b", tarfile.REGTYPE),
    ],
)
def test_decoder_refuses_hostile_headers(name: str, type_: bytes) -> None:
    with pytest.raises(TarFormatError):
        decode_header(_tarfile_header(name, type_, "target"))


def test_decoder_refuses_pax_and_bad_checksum() -> None:
    info = tarfile.TarInfo("a" * 150)
    pax = info.tobuf(format=tarfile.PAX_FORMAT)
    with pytest.raises(TarFormatError, match="PAX"):
        decode_header(pax[:BLOCK])
    header = bytearray(encode_header("a.ovf", 10))
    header[0] ^= 1
    with pytest.raises(TarFormatError, match="checksum"):
        decode_header(bytes(header))


def test_decoder_reads_tarfile_gnu_base256() -> None:
    info = tarfile.TarInfo("big.vmdk")
    info.size = 20 << 30
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    assert decode_header(header).size == 20 << 30
