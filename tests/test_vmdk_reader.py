"""inspect_vmdk and read_vmdk_data: every fault by name, hostile files, qemu-img's output."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import MakeImage, MiB, random_bytes, text_like

from ovfkit.disk import MemorySource
from ovfkit.errors import NotFoundError, VmdkFormatError
from ovfkit.vmdk import VmdkOptions, inspect_vmdk, read_vmdk_data, write_vmdk
from ovfkit.vmdk import format as fmt

G = fmt.GRAIN_SIZE
S = fmt.SECTOR


def build(
    grains: Sequence[tuple[int, bytes]],
    capacity_sectors: int,
    *,
    header: fmt.SparseHeader | None = None,
    eos: bool = True,
    footer: bool = True,
    gt_patch: dict[int, int] | None = None,
) -> bytes:
    """A streamOptimized file from (lba, compressed payload) grains, in the given order, with
    correct grain tables (all in one group per table, written after the grains), GD, footer and
    EOS; ``gt_patch`` overrides grain table entries (grain index -> sector)."""
    out = bytearray()
    h = header or fmt.stream_optimized_header(capacity_sectors)
    out += fmt.encode_header(h)
    out += fmt.encode_descriptor(
        capacity_sectors, "t.vmdk", long_content_id="0" * 32, uuid=bytes(16)
    )
    out += bytes(fmt.OVERHEAD_SECTORS * S - len(out))
    n_gd = fmt.gd_entries(capacity_sectors)
    gt = [0] * (max(n_gd, 1) * fmt.GTES_PER_GT)
    for lba, payload in grains:
        idx = lba // fmt.GRAIN_SECTORS
        if idx < len(gt):
            gt[idx] = len(out) // S
        out += fmt.encode_grain_marker(lba, payload)
    for k, v in (gt_patch or {}).items():
        gt[k] = v
    gd = [0] * n_gd
    for t in range(n_gd):
        table = gt[t * fmt.GTES_PER_GT : (t + 1) * fmt.GTES_PER_GT]
        if any(table):
            out += fmt.encode_metadata_marker(fmt.MARKER_GT, fmt.GT_SECTORS)
            gd[t] = len(out) // S
            out += fmt.encode_table(table)
    out += fmt.encode_metadata_marker(fmt.MARKER_GD, fmt.sectors_for(4 * n_gd))
    gd_offset = len(out) // S
    out += fmt.encode_table(gd)
    if footer:
        out += fmt.encode_metadata_marker(fmt.MARKER_FOOTER, 1)
        out += fmt.encode_header(fmt.stream_optimized_header(h.capacity, gd_offset))
    if eos:
        out += fmt.encode_metadata_marker(fmt.MARKER_EOS, 0)
    return bytes(out)


def grain(fill: int = 1, size: int = G) -> bytes:
    return zlib.compress(bytes([fill]) * size)


CAP = 4 * MiB // S  # 64 grains


def faults(data: bytes) -> tuple[str, ...]:
    return inspect_vmdk(io.BytesIO(data)).fault_names


def test_good_hand_built_file() -> None:
    data = build([(0, grain(1)), (128, grain(2)), (128 * 63, grain(3))], CAP)
    info = inspect_vmdk(io.BytesIO(data), strict=True)
    assert info.ok and info.grains == 3 and info.populated_size == 3 * G
    assert info.capacity == 4 * MiB
    got = dict(read_vmdk_data(io.BytesIO(data)))
    assert got == {0: b"\1" * G, G: b"\2" * G, 63 * G: b"\3" * G}



def test_zero_capacity_is_a_fault() -> None:
    # qemu ("Unsupported image type 'streamOptimized'") and vmdkinfo refuse a 0-sector disk,
    # so verify must not call such a package valid.
    assert "zero-capacity" in faults(build([], 0))

@pytest.mark.parametrize(
    ("name", "mutate", "fault"),
    [
        ("magic", lambda d: b"KDMW" + d[4:], "bad-magic"),
        ("version", lambda d: d[:4] + struct.pack("<I", 1) + d[8:], "bad-version"),
        ("no-eos", lambda d: d[:-S], "missing-eos"),
        ("no-footer", lambda d: d[: -3 * S] + bytes(S), "missing-footer"),
        ("truncated-grain", lambda d: d[: 128 * S + 700], "truncated"),
        ("newline", lambda d: d[:73] + b"\n \n\n" + d[77:], "bad-newline"),
        ("compression", lambda d: d[:77] + b"\x02\x00" + d[79:], "bad-compression"),
        ("flags", lambda d: d[:8] + struct.pack("<I", 1) + d[12:], "not-stream-optimized"),
        ("grain-size", lambda d: d[:20] + struct.pack("<Q", 1 << 40) + d[28:], "bad-grain-size"),
        ("create-type", lambda d: d.replace(b'"streamOptimized"', b'"monolithicSparse"'),
         "bad-create-type"),
        ("extent", lambda d: d.replace(b"RW 8192 ", b"RW 8193 "), "capacity-mismatch"),
        ("zero-gap", lambda d: d[: 257 * S] + bytes(S) + d[257 * S :], "zero-gap"),
        ("eos-early", lambda d: d + bytes(4 * S), "early-eos"),
        ("footer", lambda d: d[:-1012] + struct.pack("<Q", 1) + d[-1004:], "footer-mismatch"),
        ("unaligned", lambda d: d + b"x", "unaligned-size"),
        ("overhead", lambda d: d[:64] + struct.pack("<Q", 10**9) + d[72:], "bad-overhead"),
        ("footer-last", lambda d: d[:-S] + fmt.encode_metadata_marker(2, 0) + d[-S:],
         "footer-not-last"),
        ("no-descriptor", lambda d: d[:28] + bytes(8) + d[36:], "missing-descriptor"),
        ("gtes", lambda d: d[:44] + struct.pack("<I", 1024) + d[48:], "bad-gt-size"),
        ("odd-grain", lambda d: d[:20] + struct.pack("<Q", 256) + d[28:], "odd-grain-size"),
        ("descriptor-text", lambda d: d.replace(b"version=1", b"\xff\xfe=1"), "bad-descriptor"),
    ],
)
def test_each_fault_is_named(name: str, mutate: object, fault: str) -> None:
    good = build([(0, zlib.compress(random_bytes(G))), (128, grain(2))], CAP)
    assert fmt.grain_marker_sectors(len(zlib.compress(random_bytes(G)))) == 129
    assert faults(good) == ()
    bad = mutate(good)  # type: ignore[operator]
    found = faults(bad)
    assert fault in found, found
    with pytest.raises(VmdkFormatError) as e:
        inspect_vmdk(io.BytesIO(bad), strict=True)
    assert e.value.code == "SYS.1006"
    assert e.value.fault == found[0]


def test_grain_faults() -> None:
    ok = grain(1)
    cases = {
        "grain-overlap": build([(0, ok), (0, ok)], CAP),
        "unsorted-grains": build([(256, ok), (0, ok)], CAP),
        "lba-beyond-capacity": build([(0, ok), (CAP, ok)], CAP),
        "misaligned-grain": build([(64, ok)], CAP),
        "grain-inflate": build([(0, b"not zlib at all")], CAP),
        "bad-gt": build([(0, ok), (128, ok)], CAP, gt_patch={1: 5}),
    }
    for fault, data in cases.items():
        assert fault in faults(data), (fault, faults(data))


def test_decompression_bomb_is_bounded() -> None:
    bomb = zlib.compress(bytes(80 * MiB), 1)  # ~350 KB that inflates to 80 MiB
    data = build([(0, bomb[: G])], CAP)  # fits the size limit, still a bomb
    assert "grain-inflate" in faults(data)
    big = build([(0, bomb)], CAP)  # larger than any deflated 64 KiB grain can be
    assert "bad-grain-size" in faults(big)
    with pytest.raises(VmdkFormatError):
        list(read_vmdk_data(io.BytesIO(big)))


def test_short_grain_inflate_and_trailing_garbage() -> None:
    assert "grain-inflate" in faults(build([(0, grain(1, 1000))], CAP))
    assert "grain-inflate" in faults(build([(0, grain(1) + b"junk")], CAP))
    # The last grain of a disk that ends mid-grain may be short (qemu writes it so).
    cap = 128 + 8
    data = build([(128, grain(7, 8 * S))], cap)
    assert inspect_vmdk(io.BytesIO(data)).ok
    assert dict(read_vmdk_data(io.BytesIO(data))) == {G: b"\7" * 8 * S}


def test_hostile_headers_do_not_exhaust_memory() -> None:
    huge = fmt.SparseHeader(capacity=2**62)
    data = build([(0, grain(1))], CAP, header=huge)
    found = faults(data)
    assert "bad-gd" in found or "missing-gd" in found or "capacity-mismatch" in found
    # A metadata marker claiming more sectors than the file has.
    bad = bytearray(build([(0, grain(1))], CAP))
    gt_marker = bytes(bad).index(fmt.encode_metadata_marker(fmt.MARKER_GT, fmt.GT_SECTORS))
    bad[gt_marker : gt_marker + 8] = struct.pack("<Q", 2**60)
    assert "truncated" in faults(bytes(bad))
    # Unknown marker type.
    bad[gt_marker : gt_marker + 16] = struct.pack("<QII", 4, 0, 99)
    assert "bad-marker" in faults(bytes(bad))
    # Garbage and tiny files.
    for junk in (b"", b"KDMV", random_bytes(5000)):
        assert faults(junk)


def test_window_inside_a_larger_file(tmp_path: Path) -> None:
    body = io.BytesIO()
    write_vmdk(MemorySource(text_like(3 * MiB + 5)), body)
    vmdk = body.getvalue()
    path = tmp_path / "container"
    path.write_bytes(b"x" * 1536 + vmdk + b"y" * 1024)
    with path.open("rb") as f:
        info = inspect_vmdk((f, 1536, len(vmdk)), strict=True)
        assert info.ok and info.size == len(vmdk)
        disk = bytearray(info.capacity)
        for off, chunk in read_vmdk_data((f, 1536, len(vmdk))):
            disk[off : off + len(chunk)] = chunk
    assert bytes(disk[: 3 * MiB + 5]) == text_like(3 * MiB + 5)


def test_missing_file() -> None:
    with pytest.raises(NotFoundError):
        inspect_vmdk("no/such/file.vmdk")


def test_reads_qemu_img_stream_optimized(make_image: MakeImage) -> None:
    img = make_image("vmdk-stream", size=3 * MiB + 512)
    info = inspect_vmdk(img.path)
    assert info.capacity == 3 * MiB + 512
    assert info.grains > 0
    # What qemu-img 7.x leaves out is reported, not a crash.
    assert set(info.fault_names) <= {"missing-footer", "missing-eos", "early-eos"}
    disk = bytearray(info.capacity)
    for off, chunk in read_vmdk_data(img.path):
        disk[off : off + len(chunk)] = chunk
    assert bytes(disk) == img.read_raw()


def test_reader_agrees_with_writer_result() -> None:
    out = io.BytesIO()
    res = write_vmdk(
        MemorySource(random_bytes(MiB) + bytes(MiB) + text_like(MiB)), out, VmdkOptions()
    )
    info = inspect_vmdk(io.BytesIO(out.getvalue()), strict=True)
    assert (info.grains, info.populated_size, info.capacity, info.size) == (
        res.grains, res.populated_size, res.capacity, res.size
    )  # fmt: skip


def test_zero_padding_before_grains_still_reads() -> None:
    """Some writers pad with zero sectors (overHead short of the first grain): the data still
    reads back, the padding is reported as a layout-only fault."""
    good = build([(0, grain(1)), (128, grain(2))], CAP)
    h = fmt.decode_header(good)
    padded = fmt.encode_header(fmt.SparseHeader(capacity=h.capacity, overhead=21)) + good[S:]
    assert "zero-gap" in faults(padded)
    assert dict(read_vmdk_data(io.BytesIO(padded))) == {0: b"\1" * G, G: b"\2" * G}
