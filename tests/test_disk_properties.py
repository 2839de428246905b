"""Property: any read from any source is the bytes qemu itself reads there.

One image per source kind (module scope, real qemu-img and qemu-nbd), then Hypothesis picks
offsets and lengths, including ones that cross cluster, extent, map-window and request
boundaries and the end of the disk.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import KiB, MiB, qemu_img, random_bytes, text_like, write_raw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovfkit.disk import ImageSource, MappedSource, NbdSource, mapped, open_source
from ovfkit.disk.nbd import READ_REQUEST
from ovfkit.model import DiskSource

SIZE = 3 * MiB + 512
CHUNKS = [
    (0, random_bytes(100 * KiB)),  # random clusters stay uncompressed in a compressed qcow2
    (300 * KiB + 7, text_like(700 * KiB)),  # text clusters get compressed
    (2 * MiB + 5, random_bytes(3000, seed=9)),
    (SIZE - 512, b"tail" * 128),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str, bytes]]:
    where = tmp_path_factory.mktemp("props")
    raw = where / "disk.raw"
    write_raw(raw, SIZE, CHUNKS)
    out = {"raw": (raw, "raw", raw.read_bytes())}
    plain, packed = where / "plain.qcow2", where / "packed.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, plain)
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", raw, packed)
    # A chain: the base has the data, the top overwrites one range and zeroes another.
    top = where / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", packed.name, "-F", "qcow2", top)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {64 * KiB} {128 * KiB}",
         "-c", f"write -z {MiB} {256 * KiB}", str(top)],
        check=True, capture_output=True,
    )  # fmt: skip
    top_raw = where / "top.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", top, top_raw)
    out["qcow2"] = (plain, "qcow2", raw.read_bytes())
    out["qcow2-compressed"] = (packed, "qcow2", raw.read_bytes())
    out["qcow2-chain"] = (top, "qcow2", top_raw.read_bytes())
    return out


@pytest.fixture(scope="module")
def opened(
    images: dict[str, tuple[Path, str, bytes]],
) -> Iterator[list[tuple[str, ImageSource, bytes]]]:
    saved = mapped.WINDOW
    mapped.WINDOW = 256 * KiB  # many map windows in a small disk
    sources: list[tuple[str, ImageSource, bytes]] = []
    contexts = []
    try:
        for kind, (path, fmt, expected) in images.items():
            ctx = open_source(DiskSource(str(path), fmt))
            contexts.append(ctx)
            sources.append((kind, ctx.__enter__(), expected))
            if fmt != "raw":
                nbd = NbdSource.open(str(path), fmt)
                sources.append((f"{kind} (nbd only)", nbd, expected))
        yield sources
    finally:
        mapped.WINDOW = saved
        for kind, source, _ in sources:
            if kind.endswith("(nbd only)"):
                source.close()
        for ctx in contexts:
            ctx.__exit__(None, None, None)


def test_every_kind_is_opened_as_expected(opened: list[tuple[str, ImageSource, bytes]]) -> None:
    kinds = {kind: type(source).__name__ for kind, source, _ in opened}
    assert kinds["raw"] == "RawSource"
    assert kinds["qcow2"] == kinds["qcow2-chain"] == kinds["qcow2-compressed"] == "MappedSource"
    assert all(v == "NbdSource" for k, v in kinds.items() if k.endswith("(nbd only)"))
    assert all(isinstance(s, MappedSource | NbdSource) for k, s, _ in opened if k != "raw")


reads = st.tuples(
    st.integers(0, SIZE + 1000),
    st.one_of(
        st.integers(0, 4096),
        st.integers(0, 3 * READ_REQUEST),
        st.sampled_from([1, 511, 512, 65535, 65536, 65537, 256 * KiB + 1, SIZE]),
    ),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(read=reads)
def test_any_read_matches_qemu(
    opened: list[tuple[str, ImageSource, bytes]], read: tuple[int, int]
) -> None:
    offset, length = read
    for kind, source, expected in opened:
        buf = bytearray(b"\xcc" * length)
        n = source.readinto(offset, memoryview(buf))
        want = expected[offset : offset + length]
        assert n == len(want), kind
        assert buf[:n] == want, kind


def test_extents_cover_and_zero_extents_are_zero(
    opened: list[tuple[str, ImageSource, bytes]],
) -> None:
    for kind, source, expected in opened:
        pos = 0
        for e in source.extents():
            assert e.start == pos and e.length > 0, kind
            if e.zero:
                assert not any(expected[e.start : e.start + e.length]), kind
            pos += e.length
        assert pos == SIZE, kind
