"""The OVF manifest (``.mf``): one ``ALGO(name)= hexdigest`` line per file (DSP0243 §5.1).

Format as VMware's ovftool writes it and virt-v2v parses it
(``^(SHA1|SHA256)\\((.*)\\)= ([0-9a-fA-F]+)\\r?$``, virt-v2v ``input/OVA.ml``): the algorithm in
upper case with no space before ``(``, ``)= `` then the lower-case hex digest and ``\\n``. Other
tools shipped forms importers refuse, which the parser rejects too: ``SHA256 (f) = h``
(home-assistant/operating-system#826), OpenSSL 3's ``SHA2-256(f)=`` (refused by vCenter 8), blank
lines (packetfence#2306). SHA256 is the default (ovftool ≥ 4.2); SHA1 for old vCenter/Workstation
(vSphere 8 refuses it); SHA512 is accepted by ovftool but virt-v2v does not check it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InvalidArgumentError, OperationFailedError

__all__ = [
    "ALGORITHMS",
    "ManifestEntry",
    "ManifestError",
    "encode_line",
    "encode_manifest",
    "line_length",
    "parse_manifest",
]

# hashlib name -> (manifest spelling, hex digest length)
ALGORITHMS: dict[str, tuple[str, int]] = {
    "sha1": ("SHA1", 40),
    "sha256": ("SHA256", 64),
    "sha512": ("SHA512", 128),
}
_BY_TAG = {tag: (name, length) for name, (tag, length) in ALGORITHMS.items()}
_LINE = re.compile(r"(SHA1|SHA256|SHA512)\((.+)\)= ([0-9a-fA-F]+)\r?")


class ManifestError(OperationFailedError):
    """A manifest line that importers would refuse (SYS.1006)."""


@dataclass(frozen=True)
class ManifestEntry:
    algorithm: str  # hashlib name: sha1, sha256, sha512
    name: str
    digest: str  # lower-case hex


def _check(algorithm: str, name: str, digest: str) -> tuple[str, int]:
    try:
        tag, length = ALGORITHMS[algorithm]
    except KeyError:
        raise InvalidArgumentError(
            f"manifest algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}"
        ) from None
    if not name or any(c in name for c in "\r\n") or not name.isprintable():
        raise InvalidArgumentError(f"manifest file name {name!r} is not a printable one-line name")
    if len(digest) != length or not all(c in "0123456789abcdefABCDEF" for c in digest):
        raise InvalidArgumentError(f"{tag} digest of {name!r} must be {length} hex digits")
    return tag, length


def encode_line(algorithm: str, name: str, digest: str) -> bytes:
    """``SHA256(name)= digest\\n`` (digest written in lower case)."""
    tag, _ = _check(algorithm, name, digest)
    return f"{tag}({name})= {digest.lower()}\n".encode()


def line_length(algorithm: str, name: str) -> int:
    """Byte length of a line, known before the digest is: lets the packer reserve room."""
    tag, length = ALGORITHMS[algorithm]
    return len(f"{tag}({name})= ".encode()) + length + 1


def encode_manifest(algorithm: str, entries: Iterable[tuple[str, str]]) -> bytes:
    """The whole manifest for ``(name, digest)`` pairs, in the given order; names unique."""
    seen: set[str] = set()
    out = bytearray()
    for name, digest in entries:
        if name in seen:
            raise InvalidArgumentError(f"file {name!r} listed twice in the manifest")
        seen.add(name)
        out += encode_line(algorithm, name, digest)
    return bytes(out)


def parse_manifest(data: bytes) -> tuple[ManifestEntry, ...]:
    """Parse a manifest, refusing any line virt-v2v or VMware would refuse, duplicate names and
    digests of the wrong length. CRLF line ends are accepted, as virt-v2v does."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError("manifest is not UTF-8 text") from None
    if not text:
        raise ManifestError("manifest is empty")
    if not text.endswith("\n"):
        text += "\n"  # ovftool accepts a missing final newline; so do we
    entries: list[ManifestEntry] = []
    seen: set[str] = set()
    for number, line in enumerate(text[:-1].split("\n"), start=1):
        match = _LINE.fullmatch(line)
        if match is None:
            raise ManifestError(
                f"manifest line {number} {line!r} is not of the form 'SHA256(name)= hexdigest'"
            )
        tag, name, digest = match.groups()
        algorithm, length = _BY_TAG[tag]
        if len(digest) != length:
            raise ManifestError(
                f"manifest line {number}: {tag} digest of {name!r} has {len(digest)} hex digits,"
                f" not {length}"
            )
        if name in seen:
            raise ManifestError(f"manifest lists {name!r} twice")
        seen.add(name)
        entries.append(ManifestEntry(algorithm, name, digest.lower()))
    return tuple(entries)
