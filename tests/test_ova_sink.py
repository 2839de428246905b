"""The package file's writer (pwritev of gathered small writes and the VMDK writer's pieces),
on real files, against a model of what the file must hold."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovfkit.ova.seekable import _IOV_MAX, _SMALL_WRITES, _Sink

small = st.binary(max_size=600)
large = st.integers(_SMALL_WRITES, _SMALL_WRITES + 70_000).map(lambda n: os.urandom(n))
piece = st.one_of(small, small.map(memoryview))
ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.one_of(small, large)),
        st.tuples(st.just("writev"), st.lists(piece, max_size=8)),
        st.tuples(st.just("seek"), st.integers(0, 2 * _SMALL_WRITES)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops)
def test_file_holds_what_was_written_where(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, object]]
) -> None:
    path = tmp_path_factory.getbasetemp() / "sink.bin"
    model = bytearray()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        sink = _Sink(fd)
        for op, arg in ops:
            at = sink.count
            if op == "seek":
                assert isinstance(arg, int)
                sink.seek(arg)
                continue
            if op == "write":
                assert isinstance(arg, bytes)
                data = arg
                assert sink.write(arg) == len(arg)
            else:
                assert isinstance(arg, list)
                data = b"".join(bytes(p) for p in arg)
                sink.writev(arg)
            if data and len(model) < at + len(data):  # an empty write does not grow a file
                model.extend(bytes(at + len(data) - len(model)))
            model[at : at + len(data)] = data
            assert sink.count == at + len(data)
        sink.flush()
        got = path.read_bytes()
        assert got == bytes(model)  # holes the seeks left read as zeros, like the model
    finally:
        os.close(fd)
        path.unlink()


def test_more_pieces_than_one_pwritev_takes(tmp_path: Path) -> None:
    pieces = [bytes([i % 251]) * (i % 7 + 1) for i in range(3 * _IOV_MAX + 5)]
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        sink = _Sink(fd)
        sink.write(b"head")
        sink.writev(pieces)
        sink.flush()
    finally:
        os.close(fd)
    assert path.read_bytes() == b"head" + b"".join(pieces)


def test_rest_of_a_short_pwritev(tmp_path: Path) -> None:
    """Whatever a pwritev left unwritten, at any byte of any piece, is written after it."""
    pieces: list[bytes | memoryview] = [b"abc", memoryview(b"defgh"), b"", b"ij", b"k"]
    whole = b"abcdefghijk"
    path = tmp_path / "f"
    for done in range(len(whole) + 1):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.pwrite(fd, b"x" * 10, 0)
            os.pwrite(fd, whole[:done], 10)  # what the short pwritev wrote
            _Sink(fd)._rest(pieces, done, 10)
        finally:
            os.close(fd)
        assert path.read_bytes() == b"x" * 10 + whole, done
