"""Pure VMDK encoders/decoders: round trips (hypothesis) and the bytes the technote fixes."""

from __future__ import annotations

import uuid as uuidlib
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from isal import isal_zlib

from ovfkit.errors import InvalidArgumentError, VmdkFormatError
from ovfkit.vmdk import format as fmt

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)


@given(
    capacity=u64,
    version=u32,
    flags=u32,
    grain=u64,
    doff=u64,
    dsize=u64,
    ngte=u32,
    rgd=u64,
    gd=u64,
    overhead=u64,
    unclean=st.integers(0, 255),
    newline=st.binary(min_size=4, max_size=4),
    algo=st.integers(0, 65535),
)
def test_header_round_trip(
    capacity: int, version: int, flags: int, grain: int, doff: int, dsize: int, ngte: int,
    rgd: int, gd: int, overhead: int, unclean: int, newline: bytes, algo: int,
) -> None:  # fmt: skip
    h = fmt.SparseHeader(
        capacity=capacity, version=version, flags=flags, grain_size=grain,
        descriptor_offset=doff, descriptor_size=dsize, num_gtes_per_gt=ngte, rgd_offset=rgd,
        gd_offset=gd, overhead=overhead, unclean_shutdown=unclean, newline_check=newline,
        compress_algorithm=algo,
    )  # fmt: skip
    raw = fmt.encode_header(h)
    assert len(raw) == 512
    assert fmt.decode_header(raw) == h


def test_header_bytes_match_technote() -> None:
    raw = fmt.encode_header(fmt.stream_optimized_header(10240))
    assert raw[:4] == b"KDMV"
    assert int.from_bytes(raw[4:8], "little") == 3
    assert int.from_bytes(raw[8:12], "little") == 1 | 1 << 16 | 1 << 17
    assert int.from_bytes(raw[12:20], "little") == 10240
    assert int.from_bytes(raw[20:28], "little") == 128
    assert int.from_bytes(raw[28:36], "little") == 1
    assert int.from_bytes(raw[36:44], "little") == 20
    assert int.from_bytes(raw[44:48], "little") == 512
    assert raw[56:64] == b"\xff" * 8
    assert raw[73:77] == b"\n \r\n"
    assert int.from_bytes(raw[77:79], "little") == 1
    assert raw[79:] == bytes(433)


def test_header_errors() -> None:
    with pytest.raises(VmdkFormatError) as e:
        fmt.decode_header(b"COWD" + bytes(508))
    assert e.value.fault == "bad-magic"
    with pytest.raises(VmdkFormatError) as e:
        fmt.decode_header(b"KDMV")
    assert e.value.fault == "truncated"
    with pytest.raises(InvalidArgumentError):
        fmt.encode_header(fmt.SparseHeader(capacity=-1))


@given(lba=u64, data=st.binary(min_size=1, max_size=3000))
def test_grain_marker_round_trip(lba: int, data: bytes) -> None:
    raw = fmt.encode_grain_marker(lba, data)
    assert len(raw) % 512 == 0
    assert len(raw) == fmt.grain_marker_sectors(len(data)) * 512
    m = fmt.decode_marker(raw)
    assert m.is_grain and m.val == lba and m.size == len(data)
    assert raw[12 : 12 + len(data)] == data
    assert raw[12 + len(data) :] == bytes(len(raw) - 12 - len(data))


@settings(max_examples=60)
@given(data=st.one_of(st.binary(max_size=3000), st.integers(0, 200_000).map(bytes)))
def test_zlib_stored_round_trip(data: bytes) -> None:
    """Any length, including 0 and more than one stored block (65535 bytes): zlib and isal
    inflate it back, and the stream is exactly head + 5 bytes per block + data + Adler-32."""
    stream = b"".join(fmt.zlib_stored(data, zlib.adler32(data)))
    assert zlib.decompress(stream) == data
    assert isal_zlib.decompress(stream) == data
    blocks = max(1, -(-len(data) // 65535))
    assert len(stream) == 2 + 5 * blocks + len(data) + 4
    with pytest.raises(zlib.error):  # the Adler-32 is checked: a wrong one is refused
        zlib.decompress(b"".join(fmt.zlib_stored(data, zlib.adler32(data) ^ 1)))


@given(mtype=st.sampled_from([0, 1, 2, 3]), n=u64)
def test_metadata_marker_round_trip(mtype: int, n: int) -> None:
    raw = fmt.encode_metadata_marker(mtype, n)
    assert len(raw) == 512
    m = fmt.decode_marker(raw)
    assert not m.is_grain and m.val == n and m.type == mtype and m.size == 0


def test_eos_marker_is_a_zero_sector() -> None:
    assert fmt.encode_metadata_marker(fmt.MARKER_EOS, 0) == bytes(512)


@given(st.lists(u32, max_size=1200))
def test_table_round_trip(entries: list[int]) -> None:
    raw = fmt.encode_table(entries)
    assert len(raw) % 512 == 0 and len(raw) == fmt.sectors_for(4 * len(entries)) * 512
    assert fmt.decode_table(raw, len(entries)) == tuple(entries)


def test_table_rejects_out_of_range() -> None:
    with pytest.raises(InvalidArgumentError):
        fmt.encode_table([2**32])


names = st.text(
    alphabet=st.characters(blacklist_characters='"', blacklist_categories=("Cc", "Cs")),
    min_size=1,
    max_size=60,
).filter(lambda s: s.strip() == s and s != "")


@given(
    capacity=st.integers(0, 2**40),
    name=names,
    adapter=st.sampled_from(fmt.ADAPTER_TYPES),
    hw=st.integers(1, 21),
    ident=st.binary(min_size=16, max_size=16),
    uid=st.binary(min_size=16, max_size=16),
)
def test_descriptor_round_trip(
    capacity: int, name: str, adapter: str, hw: int, ident: bytes, uid: bytes
) -> None:
    raw = fmt.encode_descriptor(
        capacity, name, adapter_type=adapter, hw_version=hw, long_content_id=ident.hex(), uuid=uid
    )
    assert len(raw) == 20 * 512
    d = fmt.decode_descriptor(raw)
    assert d.create_type == "streamOptimized"
    assert d.header["parentCID"] == "ffffffff"
    assert d.cid == ident.hex()[-8:]
    assert d.extents == (fmt.ExtentLine("RW", capacity, "SPARSE", name),)
    assert d.ddb["ddb.adapterType"] == adapter
    assert d.ddb["ddb.virtualHWVersion"] == str(hw)
    assert d.ddb["ddb.toolsVersion"] == "2147483647"
    assert d.ddb["ddb.toolsInstallType"] == "4"
    assert d.ddb["ddb.longContentID"] == ident.hex()
    assert bytes.fromhex(d.ddb["ddb.uuid"].replace(" ", "")) == uid
    cyl, heads, secs = fmt.geometry(capacity, adapter)
    assert d.ddb["ddb.geometry.heads"] == str(heads) == ("16" if adapter == "ide" else "255")
    assert d.ddb["ddb.geometry.cylinders"] == str(cyl)
    assert secs == 63
    assert raw.rstrip(b"\0").count(b"\0") == 0
    assert len(raw.rstrip(b"\0")) < 20 * 512 // 2  # spare room


def test_descriptor_refuses_bad_input() -> None:
    good = {"long_content_id": "0" * 32, "uuid": uuidlib.uuid4().bytes}
    with pytest.raises(InvalidArgumentError):
        fmt.encode_descriptor(8, 'a"b.vmdk', **good)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        fmt.encode_descriptor(8, "a.vmdk", adapter_type="virtio", **good)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        fmt.encode_descriptor(8, "a.vmdk", long_content_id="xyz", uuid=bytes(16))
    with pytest.raises(InvalidArgumentError):
        fmt.encode_descriptor(8, "a" * 20000, long_content_id="0" * 32, uuid=bytes(16))


def test_parse_qemu_style_descriptor() -> None:
    text = (
        b"# Disk DescriptorFile\nversion=1\nCID=a28b127d\nparentCID=ffffffff\n"
        b'createType="streamOptimized"\n\n# Extent description\nRW 10240 SPARSE "q.vmdk"\n\n'
        b'# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = "4"\nddb.adapterType = "ide"\n'
    )
    d = fmt.decode_descriptor(text + bytes(100))
    assert d.cid == "a28b127d"
    assert d.extents[0].sectors == 10240 and d.extents[0].filename == "q.vmdk"
    assert d.ddb["ddb.adapterType"] == "ide"
    with pytest.raises(VmdkFormatError) as e:
        fmt.decode_descriptor(b"garbage line here\n")
    assert e.value.fault == "bad-descriptor"


def test_geometry_caps() -> None:
    assert fmt.geometry(2**40, "ide") == (16383, 16, 63)
    assert fmt.geometry(2**40, "lsilogic") == (65535, 255, 63)
    assert fmt.geometry(10240, "ide") == (10, 16, 63)


def test_gd_entries() -> None:
    assert fmt.gd_entries(0) == 0
    assert fmt.gd_entries(1) == 1
    assert fmt.gd_entries(512 * 128) == 1
    assert fmt.gd_entries(512 * 128 + 1) == 2


def test_table_builder_layout() -> None:
    """Tables follow their grains, empty tables are skipped (GD entry 0), and the tail ends with
    footer marker, footer (real gdOffset) and EOS."""
    cap = 3 * fmt.GTES_PER_GT * fmt.GRAIN_SECTORS  # three grain tables' worth
    tb = fmt.TableBuilder(cap)
    assert tb.enter(0, 128) == b""  # the first table opens: nothing to write yet
    tb.place(0, 128)
    # a grain in the third table closes the first; the second (empty) is never written
    closing = tb.enter(2 * fmt.GTES_PER_GT + 5, 130)
    assert len(closing) == (1 + fmt.GT_SECTORS) * fmt.SECTOR
    assert fmt.decode_marker(closing[: fmt.SECTOR]).type == fmt.MARKER_GT
    assert fmt.decode_table(closing[fmt.SECTOR :], fmt.GTES_PER_GT)[0] == 128
    tb.place(2 * fmt.GTES_PER_GT + 5, 135)
    at = 140
    tail = tb.finish(at)
    sectors = [tail[i : i + fmt.SECTOR] for i in range(0, len(tail), fmt.SECTOR)]
    assert fmt.decode_marker(sectors[0]).type == fmt.MARKER_GT  # the third table
    gd_marker = 1 + fmt.GT_SECTORS
    assert fmt.decode_marker(sectors[gd_marker]).type == fmt.MARKER_GD
    gd = fmt.decode_table(tail[(gd_marker + 1) * fmt.SECTOR :], 3)
    assert gd == (131, 0, at + 1)
    assert fmt.decode_marker(sectors[-3]).type == fmt.MARKER_FOOTER
    footer = fmt.decode_header(sectors[-2])
    assert footer.gd_offset == at + gd_marker + 1
    assert fmt.decode_marker(sectors[-1]).type == fmt.MARKER_EOS
