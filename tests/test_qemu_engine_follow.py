"""Copying qemu-img's output while it grows: the walker takes only grains that are final.

Pure tests (no qemu-img): a model of how qemu 7.2's vmdk driver writes a streamOptimized file
(block/vmdk.c: each new grain's cluster is first allocated, extending the file with zeros past
the previous grain, then its marker is written there with one pwritev, which a reader can see
half copied) is replayed step by step while ``walk_grains`` reads it; whatever it saw on the way,
it must hand out exactly the grains of the finished file, and mark those it took early.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovfkit.errors import VmdkFormatError
from ovfkit.vmdk import format as fmt
from ovfkit.vmdk.qemu_engine import (
    FinishedFile,
    QemuGrain,
    early_digest,
    verify_early_grains,
    walk_grains,
)

G = fmt.GRAIN_SIZE
S = fmt.SECTOR


def _grain_bytes(kind: str, seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(size)
    if kind == "zeros-tail":
        return rng.randbytes(size // 3) + bytes(size - size // 3)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"\n", b"kernel:", b"eth0", b"1234"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def _marker(lba: int, data: bytes) -> bytes:
    stream = zlib.compress(data, 6)
    head, _pad = fmt.grain_marker_frame(lba, len(stream))
    return head + stream


class _QemuLikeFile:
    """The file as qemu writes it, one step per ``advance``; a GrainFile for walk_grains."""

    def __init__(self, steps: list[tuple[int, bytes]], draw_advance: st.DataObject) -> None:
        self.file = bytearray(fmt.OVERHEAD_SECTORS * S)
        self.steps = steps  # (offset, bytes): writes, in order; zero bytes extend the file
        self.done = 0
        self.data = draw_advance

    def advance(self) -> None:
        if self.done < len(self.steps):
            off, b = self.steps[self.done]
            if len(self.file) < off + len(b):
                self.file.extend(bytes(off + len(b) - len(self.file)))
            self.file[off : off + len(b)] = b
            self.done += 1

    def finished(self) -> bool:
        return self.done == len(self.steps)

    def read(self, pos: int, n: int) -> bytes:
        if self.data.draw(st.booleans(), label="writer moves before this read"):
            self.advance()
        while len(self.file) < pos + n and not self.finished():
            self.advance()  # a read waits for the file to grow
        return bytes(self.file[pos : pos + n])

    def pause(self) -> None:
        self.advance()


@settings(max_examples=60, deadline=None)
@given(
    grains=st.lists(
        st.tuples(
            st.integers(0, 40),
            st.sampled_from(["random", "text", "zeros-tail"]),
            st.integers(0, 2**16),
            st.lists(st.integers(1, 70_000), max_size=3),
        ),
        max_size=6,
        unique_by=lambda g: g[0],
    ),
    partial_last=st.booleans(),
    data=st.data(),
)
def test_walker_takes_only_final_grains_of_a_growing_file(
    grains: list[tuple[int, str, int, list[int]]], partial_last: bool, data: st.DataObject
) -> None:
    grains.sort()
    capacity = 41 * G - (G // 2 if partial_last else 0)
    header = fmt.decode_header(fmt.encode_header(fmt.stream_optimized_header(capacity // S)))
    steps: list[tuple[int, bytes]] = []
    expected: list[tuple[int, bytes]] = []
    pos = header.overhead * S
    for index, kind, seed, cuts in grains:
        lba = index * fmt.GRAIN_SECTORS
        marker = _marker(lba, _grain_bytes(kind, seed, min(G, capacity - index * G)))
        steps.append((pos, bytes(G)))  # the cluster allocated: zeros past the last grain
        done = 0
        for cut in [*sorted({c for c in cuts if c < len(marker)}), len(marker)]:
            steps.append((pos + done, marker[done:cut]))  # a write seen half copied
            done = cut
        _head, pad = fmt.grain_marker_frame(lba, len(marker) - fmt.MARKER_HEADER_SIZE)
        expected.append((lba, marker + pad))
        pos += len(marker) + len(pad)
    steps.append((pos, bytes(S)))  # the final padding: read as an end-of-stream marker

    f = _QemuLikeFile(steps, data)
    walked = list(walk_grains(f, header))
    assert [(g.lba, bytes(g.data) + g.pad) for g in walked] == expected
    early = [g for g in walked if g.early]
    assert walked[: len(early)] == early  # early grains come first, then the rest
    with _finished(bytes(f.file)) as final:
        verify_early_grains(final, header, len(early), early_digest(early))


@contextlib.contextmanager
def _finished(data: bytes) -> Iterator[FinishedFile]:
    """The engine's own FinishedFile over ``data`` in an anonymous temporary file."""
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        yield FinishedFile(f.fileno())


def test_early_grains_are_checked_against_the_finished_file() -> None:
    """What the head re-read cannot exclude (a head seen half written twice, its writer
    preempted in mid-copy) is caught at the end: a grain copied early that differs from the
    finished file fails the copy instead of reaching the package."""
    header = fmt.decode_header(fmt.encode_header(fmt.stream_optimized_header(8 * G // S)))
    file = bytearray(header.overhead * S)
    for index in (0, 3, 5):
        lba = index * fmt.GRAIN_SECTORS
        marker = _marker(lba, _grain_bytes("text", index, G))
        _head, pad = fmt.grain_marker_frame(lba, len(marker) - fmt.MARKER_HEADER_SIZE)
        file += marker + pad
    with _finished(bytes(file)) as final:
        grains = list(walk_grains(final, header))
        assert [g.lba for g in grains] == [0, 384, 640] and not any(g.early for g in grains)
        verify_early_grains(final, header, 2, early_digest(grains[:2]))  # as copied: fine
        torn = QemuGrain(grains[1].lba, bytes(grains[1].data)[:100], b"", early=True)
        with pytest.raises(VmdkFormatError) as err:
            verify_early_grains(final, header, 2, early_digest([grains[0], torn]))
    assert err.value.fault == "copy-raced"
