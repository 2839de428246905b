"""Manifest lines: encoder/parser round trips and the forms importers refuse."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovfkit.errors import InvalidArgumentError
from ovfkit.ova.manifest import (
    ALGORITHMS,
    ManifestEntry,
    ManifestError,
    encode_line,
    encode_manifest,
    line_length,
    parse_manifest,
)

# virt-v2v input/OVA.ml: the regex its manifest check uses.
VIRT_V2V = re.compile(r"^(SHA1|SHA256)\((.*)\)= ([0-9a-fA-F]+)\r?$")
NAMES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=100)


@st.composite
def entries(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    algorithm = draw(st.sampled_from(sorted(ALGORITHMS)))
    length = ALGORITHMS[algorithm][1]
    names = draw(st.lists(NAMES, min_size=1, max_size=5, unique=True))
    digests = [draw(st.text("0123456789abcdef", min_size=length, max_size=length)) for _ in names]
    return algorithm, list(zip(names, digests, strict=True))


@given(entries())
def test_round_trip(case: tuple[str, list[tuple[str, str]]]) -> None:
    algorithm, pairs = case
    data = encode_manifest(algorithm, pairs)
    assert parse_manifest(data) == tuple(ManifestEntry(algorithm, n, d) for n, d in pairs)
    lines = data.decode().split("\n")
    assert lines[-1] == ""  # one newline per line, none extra
    for line, (name, digest) in zip(lines, pairs, strict=False):
        assert len(line) + 1 == line_length(algorithm, name)
        if algorithm != "sha512":
            match = VIRT_V2V.match(line)
            assert match is not None and match.group(2) == name and match.group(3) == digest


def test_exact_form() -> None:
    assert encode_line("sha256", "vm.ovf", "AB" * 32) == b"SHA256(vm.ovf)= " + b"ab" * 32 + b"\n"
    assert encode_line("sha1", "vm.ovf", "0" * 40) == b"SHA1(vm.ovf)= " + b"0" * 40 + b"\n"


@pytest.mark.parametrize(
    "bad",
    [
        b"SHA256 (vm.ovf) = " + b"a" * 64 + b"\n",  # home-assistant/operating-system#826
        b"SHA2-256(vm.ovf)= " + b"a" * 64 + b"\n",  # OpenSSL 3, refused by vCenter 8
        b"SHA256(vm.ovf)= " + b"a" * 64 + b"\n\n",  # stray newline (packetfence#2306)
        b"SHA256(vm.ovf)=" + b"a" * 64 + b"\n",
        b"sha256(vm.ovf)= " + b"a" * 64 + b"\n",
        b"SHA256(vm.ovf)= " + b"a" * 63 + b"\n",
        b"MD5(vm.ovf)= " + b"a" * 32 + b"\n",
        b"SHA256(vm.ovf)= " + b"a" * 64 + b"\nSHA256(vm.ovf)= " + b"b" * 64 + b"\n",
        b"",
        b"\xff\xfe",
    ],
)
def test_parser_refuses_known_bad_forms(bad: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(bad)


def test_encoder_refuses_bad_input() -> None:
    with pytest.raises(InvalidArgumentError):
        encode_line("md5", "a", "0" * 32)
    with pytest.raises(InvalidArgumentError):
        encode_line("sha256", "a\nb", "0" * 64)
    with pytest.raises(InvalidArgumentError):
        encode_line("sha256", "a", "xyz")
    with pytest.raises(InvalidArgumentError):
        encode_manifest("sha256", [("a", "0" * 64), ("a", "1" * 64)])
