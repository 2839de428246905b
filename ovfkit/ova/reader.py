"""Reading packages back: open_package, verify_package, extract_package.

A package is an ``.ova`` (one tar: a path, or a seekable binary file object) or an ``.ovf``
with its files in the same folder. Members are found by offset from their tar headers and read
in place, never extracted to look at them. Any member order DSP0243 §5.3 allows is read: the
manifest (and certificate) right after the descriptor, or at the end of the archive.

Packages come from anywhere, so the tar walk refuses (TarFormatError, SYS.1006) what an attacker
would use and an OVA never needs: links, devices, FIFOs, absolute names, ``..``, duplicate names,
extension headers, members that claim to run past the end of the file, more than
``MAX_MEMBERS`` members, and a descriptor over ``MAX_DESCRIPTOR`` bytes (it is read into memory).
``extract_package`` writes only plain files directly inside the target folder, refusing to
follow or replace a symbolic link there.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, cast

from .. import limits
from ..errors import (
    InvalidArgumentError,
    NotFoundError,
    OperationCancelledError,
    OperationTimeoutError,
    OvfkitError,
    OvfkitIOError,
    ToolMissingError,
)
from ..model import VirtualMachine
from ..ovf.layout import FileRef
from ..ovf.reader import ParsedDescriptor, parse_package_descriptor
from ..progress import CancelToken, Progress, ProgressCallback, check_cancel
from . import tar
from .manifest import ManifestError, parse_manifest
from .signing import verify_certificate_file
from .tar import TarFormatError

__all__ = [
    "MAX_DESCRIPTOR",
    "MAX_MEMBERS",
    "Member",
    "Package",
    "Report",
    "extract_package",
    "open_package",
    "verify_package",
]

MAX_DESCRIPTOR = limits.MAX_DESCRIPTOR_SIZE  # VMware Cloud Director's default; real ones: KiB
MAX_MEMBERS = limits.MAX_PACKAGE_FILES
_READ_CHUNK = 4 << 20
_ENV_ISO_MAX = 16 << 20  # environment ISOs are a few blocks; larger ones are CD images
_CHUNK_NAME = re.compile(r"(.+)\.(\d{9})")

PackageSource = str | os.PathLike[str] | BinaryIO
"""A package: the path of an .ova or .ovf, or a seekable binary file object holding an .ova."""
_Pread = Callable[[int, int], bytes]  # (offset in the file, length) -> bytes


class _FileObject:
    """A caller's binary file object holding an .ova, read at offsets from any thread: pread on
    its descriptor when it is a plain file, else seek + read under a lock (a BytesIO)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.lock = threading.Lock()
        self.fd: int | None = None
        if isinstance(f, (io.FileIO, io.BufferedReader, io.BufferedRandom)):
            with contextlib.suppress(OSError, ValueError):
                f.flush()
                self.fd = f.fileno()
        try:
            self.size = f.seek(0, io.SEEK_END)
        except (OSError, ValueError, AttributeError) as exc:
            raise InvalidArgumentError(f"a package file object must be seekable: {exc}") from None
        self.name = getattr(f, "name", None)

    def pread(self, offset: int, n: int) -> bytes:
        if self.fd is not None:
            return os.pread(self.fd, n, offset)
        with self.lock:
            self.f.seek(offset)
            return self.f.read(n)


@dataclass(frozen=True)
class Member:
    """A file of the package: ``size`` bytes at ``offset`` of ``path`` (the .ova, or the file
    itself beside an .ovf; None in an .ova opened from a file object). ``header_offset`` is
    the tar header's position (None beside .ovf)."""

    name: str
    path: str | None
    offset: int
    size: int
    header_offset: int | None = None
    fileobj: _FileObject | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Package:
    """An opened package: its members in archive order and its parsed descriptor. ``path`` is
    None for a package opened from a file object."""

    path: str | None
    kind: Literal["ova", "ovf"]
    members: tuple[Member, ...]
    descriptor_name: str
    descriptor: bytes
    parsed: ParsedDescriptor
    end_of_archive: bool = True
    directories: tuple[str, ...] = ()

    @property
    def vm(self) -> VirtualMachine:
        return self.parsed.vm

    @functools.cached_property
    def _by_name(self) -> dict[str, Member]:
        return {m.name: m for m in self.members}

    def member(self, name: str) -> Member | None:
        # A lookup, not a scan: verify asks for every chunk of every File (one File of 10,000
        # chunks was 10^8 comparisons, 6 s of CPU).
        return self._by_name.get(name)

    def file_members(self, ref: FileRef) -> tuple[Member, ...]:
        """The member(s) holding a References/File: itself, or its chunks in order."""
        whole = self.member(ref.href)
        if whole is not None:
            return (whole,)
        chunks = []
        for index in range(len(self.members)):
            m = self.member(f"{ref.href}.{index:09d}")
            if m is None:
                break
            chunks.append(m)
        return tuple(chunks)

    def read_member(self, member: Member, limit: int = MAX_DESCRIPTOR) -> bytes:
        if member.size > limit:
            raise TarFormatError(
                f"member {member.name!r} is {member.size} bytes; refusing to read more than {limit}"
            )
        with _reader(member) as pread:
            try:
                data = pread(member.offset, member.size)
            except OSError as exc:
                raise _read_error(member, exc) from None
        if len(data) != member.size:
            raise TarFormatError(f"member {member.name!r} is truncated")
        return data

    @contextlib.contextmanager
    def open_stream(self, members: tuple[Member, ...]) -> Iterator[BinaryIO]:
        """A seekable read-only stream over the concatenated members (a File's chunks)."""
        with contextlib.ExitStack() as stack:
            readers: dict[object, _Pread] = {}  # one open file per path, however many chunks
            for m in members:
                key = m.fileobj if m.fileobj is not None else m.path
                if key not in readers:
                    readers[key] = stack.enter_context(_reader(m))
            segments = [
                (readers[m.fileobj if m.fileobj is not None else m.path], m.offset, m.size)
                for m in members
            ]
            yield cast(BinaryIO, _Concat(segments))


@contextlib.contextmanager
def _reader(member: Member) -> Iterator[_Pread]:
    """pread over the file holding ``member``, open for the ``with`` block."""
    if member.fileobj is not None:
        yield member.fileobj.pread
        return
    assert member.path is not None
    try:
        f = open(member.path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise _read_error(member, exc) from None
    with f:
        fd = f.fileno()
        yield lambda offset, n: os.pread(fd, n, offset)


class _Concat(io.RawIOBase):
    """Segments of files (pread, offset, size) read as one stream (read/seek/tell only)."""

    def __init__(self, segments: list[tuple[_Pread, int, int]]) -> None:
        self.segments = segments
        self.size = sum(s for _, _, s in segments)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        out = bytearray()
        start = 0
        for pread, offset, size in self.segments:
            end = start + size
            if self.pos < end and n > len(out):
                rel = self.pos - start if self.pos > start else 0
                want = min(size - rel, n - len(out))
                if self.pos >= start:
                    chunk = pread(offset + rel, want)
                    out += chunk
                    self.pos += len(chunk)
                    if len(chunk) < want:
                        break
            start = end
        return bytes(out)

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


# ---------------------------------------------------------------------------------------------
# Opening
# ---------------------------------------------------------------------------------------------


def scan_tar(
    source: str | _FileObject, directories: list[str] | None = None
) -> tuple[list[Member], bool]:
    """Members of the tar at ``source`` (a path, or a file object) by offset, and whether the
    end-of-archive blocks are there; directory entries, which an OVA should not hold, are
    appended to ``directories``. Raises TarFormatError for anything hostile or malformed (see
    the module docstring)."""
    if isinstance(source, _FileObject):
        return _scan(source.pread, source.size, None, source, "the package", directories)
    try:
        f = open(source, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise NotFoundError(f"package {source!r} does not exist") from None
    except OSError as exc:
        raise OvfkitIOError(f"cannot open package {source!r}: {exc.strerror}") from None
    with f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        return _scan(
            lambda offset, n: os.pread(fd, n, offset), size, source, None, repr(source),
            directories,
        )  # fmt: skip


def _scan(
    pread: _Pread,
    file_size: int,
    path: str | None,
    fileobj: _FileObject | None,
    what: str,
    directories: list[str] | None,
) -> tuple[list[Member], bool]:
    members: list[Member] = []
    seen: set[str] = set()
    pos = 0
    while True:
        block = pread(pos, tar.BLOCK)
        if len(block) < tar.BLOCK:
            if block.strip(b"\x00"):
                raise TarFormatError(f"package {what} ends inside a tar header")
            return members, False
        if tar.is_zero_block(block):
            second = pread(pos + tar.BLOCK, tar.BLOCK)
            return members, len(second) == tar.BLOCK and tar.is_zero_block(second)
        header = tar.decode_header(block)
        data = pos + tar.BLOCK
        if data + header.size > file_size:
            raise TarFormatError(
                f"tar member {header.name!r} claims {header.size} bytes at offset {data},"
                f" past the end of the {file_size}-byte file"
            )
        if header.is_dir:
            if directories is not None and len(directories) < MAX_MEMBERS:
                directories.append(header.name)
        else:
            if header.name in seen:
                raise TarFormatError(f"tar member {header.name!r} appears twice")
            seen.add(header.name)
            members.append(Member(header.name, path, data, header.size, pos, fileobj))
            if len(members) > MAX_MEMBERS:
                raise TarFormatError(f"package has more than {MAX_MEMBERS} members")
        pos = data + header.padded_size


def open_package(source: PackageSource) -> Package:
    """Open an ``.ova`` (a tar, by path or as a seekable binary file object) or an ``.ovf``
    whose files sit beside it, and parse the descriptor into the model. Nothing is extracted;
    a file object is read in place, at offsets, and must stay open while the package is used."""
    directories: list[str] = []
    if isinstance(source, (str, os.PathLike)):
        path: str | None = os.fspath(source)
        assert path is not None
        if not os.path.exists(path):
            raise NotFoundError(f"package {path!r} does not exist")
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            # Reading a FIFO waits for a writer for ever; a directory is no package.
            raise InvalidArgumentError(f"package {path!r} is not a regular file")
        if path.lower().endswith(".ovf"):
            return _open_ovf(path)
        members, end = scan_tar(path, directories)
        what = repr(path)
    elif hasattr(source, "read") and hasattr(source, "seek"):
        path = None
        members, end = scan_tar(_FileObject(source), directories)
        what = "file object"
    else:
        raise InvalidArgumentError(
            f"a package is a path or a binary file object, not {type(source).__name__}"
        )
    descriptor = next((m for m in members if m.name.lower().endswith(".ovf")), None)
    if descriptor is None:
        raise InvalidArgumentError(f"package {what} holds no .ovf descriptor")
    package = Package(
        path=path,
        kind="ova",
        members=tuple(members),
        descriptor_name=descriptor.name,
        descriptor=b"",
        parsed=cast(ParsedDescriptor, None),
        end_of_archive=end,
    )
    data = package.read_member(descriptor)
    return Package(
        path=path,
        kind="ova",
        members=package.members,
        descriptor_name=descriptor.name,
        descriptor=data,
        parsed=parse_package_descriptor(data),
        end_of_archive=end,
        directories=tuple(directories),
    )


def _open_ovf(path: str) -> Package:
    size = os.path.getsize(path)
    if size > MAX_DESCRIPTOR:
        raise TarFormatError(f"descriptor {path!r} is {size} bytes; more than {MAX_DESCRIPTOR}")
    with open(path, "rb") as f:
        data = f.read()
    parsed = parse_package_descriptor(data)
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    stem = name[:-4]
    members = [Member(name, path, 0, size)]
    wanted = [f"{stem}.mf", f"{stem}.cert"]
    for ref in parsed.files:
        wanted.append(ref.href)
        wanted += [f"{ref.href}.{i:09d}" for i in range(_count_chunks(folder, ref.href))]
    for member in wanted:
        _check_relative(member)
        full = os.path.join(folder, member)
        if os.path.isfile(full) and not os.path.islink(full):
            members.append(Member(member, full, 0, os.path.getsize(full)))
    return Package(path, "ovf", tuple(members), name, data, parsed)


def _count_chunks(folder: str, href: str) -> int:
    n = 0
    while os.path.isfile(os.path.join(folder, f"{href}.{n:09d}")):
        n += 1
    return n


def _check_relative(name: str) -> None:
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
        raise TarFormatError(f"file reference {name!r} is not a safe relative name")


# ---------------------------------------------------------------------------------------------
# Verifying
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """What verify_package found: ``problems`` with the package (empty = valid as far as
    checked), ``checked`` (what passed) and ``errors``: checks that could not run (the package
    or one of its files missing or unreadable, a tool missing), which say nothing of the
    package itself. ``path`` is None for a package given as a file object."""

    path: str | None
    problems: tuple[str, ...]
    checked: tuple[str, ...] = ()
    vm: VirtualMachine | None = None
    members: tuple[Member, ...] = field(default_factory=tuple)
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and not self.errors


def _digest(
    package: Package,
    member: Member,
    algorithm: str,
    cancel: CancelToken | None,
    progress: ProgressCallback | None,
) -> str:
    h = hashlib.new(algorithm)
    done = 0
    for chunk in _member_chunks(member, "verify", cancel):
        h.update(chunk)
        done += len(chunk)
        if progress is not None:
            progress(Progress(f"verify {member.name}", done, member.size))
    return h.hexdigest()


def _member_chunks(member: Member, what: str, cancel: CancelToken | None) -> Iterator[bytes]:
    """A member's bytes in bounded chunks, read straight from the package at its offset."""
    with _reader(member) as pread:
        pos, left = member.offset, member.size
        while left:
            check_cancel(cancel, what)
            try:
                chunk = pread(pos, min(_READ_CHUNK, left))
            except OSError as exc:
                raise _read_error(member, exc) from None
            if not chunk:
                raise TarFormatError(f"member {member.name!r} is truncated")
            pos += len(chunk)
            left -= len(chunk)
            yield chunk


def _read_error(member: Member, exc: OSError) -> OvfkitIOError:
    where = repr(member.path) if member.path is not None else "the package file object"
    return OvfkitIOError(f"cannot read {member.name!r} from {where}: {exc.strerror or exc}")


def verify_package(
    source: PackageSource,
    *,
    check_data: bool = True,
    strict_schema: bool = False,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Report:
    """Check a package (a path, or a seekable binary file object holding an .ova) and list
    every problem found: tar layout and member order (DSP0243 §5.3, either order it allows),
    descriptor schema, manifest format and every digest, certificate signature, File sizes
    and chunking, each VMDK's structure (and, with ``check_data``, every grain) through
    ``ovfkit.vmdk.inspect_vmdk``, disk capacities and populated sizes.

    Every core works: the manifest digests are taken in a thread (hashlib releases the GIL)
    while ``workers`` processes (None = one per core) inflate the grains of each large VMDK
    (``ovfkit.vmdk.checkers``). ``progress`` may be called from that thread."""
    path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    findings = _Findings()
    try:
        if path is not None and (not os.path.exists(path) or os.path.isdir(path)):
            raise NotFoundError(f"package {path!r} does not exist or is a folder")
        package = open_package(source)
    except OvfkitError as exc:
        findings.failed("cannot open", exc)
        return findings.report(path)
    problems, checked = findings.problems, findings.checked
    if package.kind == "ova" and not package.end_of_archive:
        problems.append("tar archive does not end with two zero blocks")
    _check_schema(package, strict_schema, problems, checked)
    refs = package.parsed.files
    stem = package.descriptor_name[:-4]
    mf_name, cert_name = f"{stem}.mf", f"{stem}.cert"
    mf = package.member(mf_name)
    cert = package.member(cert_name)
    file_members = {ref.id: package.file_members(ref) for ref in refs}
    _check_directories(package, refs, problems)
    _check_order(package, refs, file_members, mf, cert, problems, checked)
    _check_sizes(refs, file_members, problems, checked)
    mf_bytes = None
    if mf is not None:
        mf_bytes = findings.read(package, mf, limits.MAX_MANIFEST_SIZE, "a manifest")
    digests = _Findings()  # the manifest's digests, in a thread beside the disks' grains
    disks = _Findings()
    with ThreadPoolExecutor(1, thread_name_prefix="ovfkit-verify") as pool:
        running = None
        if mf is not None and mf_bytes is not None:
            listed, manifest = mf, mf_bytes

            def check_digests() -> None:
                with digests.stage(f"{mf_name}: digests"):
                    _check_manifest(
                        package, listed, manifest, file_members, digests.problems,
                        digests.checked, progress, cancel,
                    )  # fmt: skip

            running = pool.submit(check_digests)
        try:
            with disks.stage("disks"):
                _check_disks(
                    package, file_members, check_data, workers, disks.problems, disks.checked,
                    cancel,
                )  # fmt: skip
        finally:
            if running is not None:
                running.result()
    findings.add(digests)
    if mf is not None:
        cert_bytes = (
            findings.read(package, cert, limits.MAX_CERTIFICATE_SIZE, "a certificate file")
            if cert is not None
            else None
        )
        if cert_bytes is not None and mf_bytes is not None:
            cert_problems = verify_certificate_file(cert_bytes, mf_name, mf_bytes)
            problems += [f"{cert_name}: {p}" for p in cert_problems]
            if not cert_problems:
                checked.append(f"{cert_name}: signature of {mf_name} verifies")
    elif cert is not None:
        problems.append(f"{cert_name} present without a manifest")
    else:
        checked.append("no manifest (digests not checked)")
    findings.add(disks)
    with findings.stage("ISO images"):
        _check_isos(package, file_members, problems, checked)
    return findings.report(path, package)


# Not the package's fault: the check could not run (``ovfkit verify`` exits 2, not 1).
_CANNOT_CHECK = (NotFoundError, OvfkitIOError, ToolMissingError, OperationTimeoutError)


@dataclass
class _Findings:
    """What verify_package found so far; an error of one stage is recorded and the other
    stages still run (a hostile .mf does not hide a broken disk)."""

    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def failed(self, what: str, exc: OvfkitError) -> None:
        if isinstance(exc, OperationCancelledError):
            raise exc
        where = self.errors if isinstance(exc, _CANNOT_CHECK) else self.problems
        where.append(f"{what}: {exc.details}")

    @contextlib.contextmanager
    def stage(self, what: str) -> Iterator[None]:
        try:
            yield
        except OvfkitError as exc:
            self.failed(what, exc)

    def read(self, package: Package, member: Member, limit: int, what: str) -> bytes | None:
        if member.size > limit:
            self.problems.append(
                f"{member.name} is {member.size} bytes, more than the {limit} bytes {what} may"
                " have (not read)"
            )
            return None
        with self.stage(member.name):
            return package.read_member(member, limit)
        return None

    def add(self, other: _Findings) -> None:
        """Append what another stage (run in another thread) found."""
        self.problems += other.problems
        self.checked += other.checked
        self.errors += other.errors

    def report(self, path: str | None, package: Package | None = None) -> Report:
        return Report(
            path,
            tuple(self.problems),
            tuple(self.checked),
            package.vm if package is not None else None,
            package.members if package is not None else (),
            tuple(self.errors),
        )


def _check_directories(
    package: Package, refs: tuple[FileRef, ...], problems: list[str]
) -> None:
    """An OVA holds the package's files only (DSP0243 §5.3); a directory entry named like one
    of them would make an extracting tool create a folder where the disk should be."""
    hrefs = {ref.href for ref in refs} | {package.descriptor_name}
    for name in package.directories:
        bare = name.rstrip("/")
        if bare in hrefs or any(bare.startswith(h + ".") for h in hrefs):
            problems.append(f"tar member {name!r} is a directory named like a package file")
        else:
            problems.append(f"tar member {name!r} is a directory; an OVA holds only files")


def _check_schema(package: Package, strict: bool, problems: list[str], checked: list[str]) -> None:
    from ..ovf.validate import validate_descriptor

    try:
        validate_descriptor(package.descriptor, strict=strict)
        checked.append(f"{package.descriptor_name}: valid against the DMTF schema")
    except OvfkitError as exc:
        problems.append(f"{package.descriptor_name}: {exc.details}")


def _check_order(
    package: Package,
    refs: tuple[FileRef, ...],
    file_members: dict[str, tuple[Member, ...]],
    mf: Member | None,
    cert: Member | None,
    problems: list[str],
    checked: list[str],
) -> None:
    if package.kind != "ova":
        return
    names = [m.name for m in package.members]
    in_order: dict[str, None] = {}  # ordered and unique, linear however many members
    for ref in refs:
        members = file_members[ref.id]
        if not members:
            problems.append(f"File {ref.id!r} ({ref.href}) is not in the package")
        in_order.update(dict.fromkeys(m.name for m in members))
    files = list(in_order)
    meta = [m.name for m in (mf, cert) if m is not None]
    head = [package.descriptor_name]
    allowed = (head + meta + files, head + files + meta)
    listed = {*head, *meta, *files}
    extra = [n for n in names if n not in listed]
    if extra:
        more = f" and {len(extra) - 20} more" if len(extra) > 20 else ""
        problems.append(f"members not listed in References: {', '.join(extra[:20])}{more}")
    known = [n for n in names if n in listed]
    if names[0] != package.descriptor_name:
        problems.append(f"the descriptor is not the first member (found {names[0]!r})")
    elif known not in allowed:
        problems.append(
            "member order is not descriptor, manifest, certificate, files in References order"
            " (or descriptor, files, manifest, certificate): " + ", ".join(known)
        )
    else:
        checked.append("member order follows DSP0243 §5.3")


def _check_sizes(
    refs: tuple[FileRef, ...],
    file_members: dict[str, tuple[Member, ...]],
    problems: list[str],
    checked: list[str],
) -> None:
    for ref in refs:
        members = file_members[ref.id]
        if not members:
            continue
        total = sum(m.size for m in members)
        if ref.size is not None and ref.size != total:
            problems.append(f"File {ref.href}: ovf:size {ref.size} but the package holds {total}")
        elif ref.size is not None:
            checked.append(f"File {ref.href}: size {total} matches")
        if len(members) > 1 or ref.chunk_size is not None:
            if ref.chunk_size is None:
                problems.append(f"File {ref.href} is chunked but declares no ovf:chunkSize")
            elif any(m.size != ref.chunk_size for m in members[:-1]) or (
                members[-1].size > ref.chunk_size
            ):
                problems.append(f"File {ref.href}: chunks do not match ovf:chunkSize")


def _check_manifest(
    package: Package,
    mf: Member,
    mf_bytes: bytes,
    file_members: dict[str, tuple[Member, ...]],
    problems: list[str],
    checked: list[str],
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> None:
    try:
        entries = parse_manifest(mf_bytes)
    except ManifestError as exc:
        problems.append(f"{mf.name}: {exc.details}")
        return
    listed = {e.name: e for e in entries}
    expected = dict.fromkeys([package.descriptor_name])  # ordered and unique
    for members in file_members.values():
        expected.update(dict.fromkeys(m.name for m in members))
    for name in expected:
        if name not in listed:
            problems.append(f"{mf.name} does not list {name}")
    for entry in entries:
        member = package.member(entry.name)
        if member is None or entry.name not in expected:
            problems.append(f"{mf.name} lists {entry.name!r}, which is not a package file")
            continue
        actual = _digest(package, member, entry.algorithm, cancel, progress)
        if actual != entry.digest:
            problems.append(
                f"{entry.name}: {entry.algorithm.upper()} digest {actual} does not match the"
                f" manifest ({entry.digest})"
            )
        else:
            checked.append(f"{entry.name}: {entry.algorithm.upper()} digest matches")


def _check_disks(
    package: Package,
    file_members: dict[str, tuple[Member, ...]],
    check_data: bool,
    workers: int | None,
    problems: list[str],
    checked: list[str],
    cancel: CancelToken | None,
) -> None:
    from ..vmdk.reader import inspect_vmdk

    parsed = package.parsed
    capacities = dict(parsed.capacities)
    formats = dict(parsed.formats)
    for disk_file in parsed.layout.disks:
        check_cancel(cancel, "verify")
        members = file_members.get(disk_file.file.id, ())
        if not members:
            continue
        fmt_uri = formats.get(disk_file.disk_id, "")
        if "vmdk" not in fmt_uri.lower():
            checked.append(f"{disk_file.file.href}: format {fmt_uri!r} not inspected")
            continue
        name = disk_file.file.href
        try:
            with contextlib.ExitStack() as stack:
                info = inspect_vmdk(
                    _vmdk_source(package, members, stack),
                    check_data=check_data,
                    workers=workers,
                    cancel=cancel,
                )
        except OperationCancelledError:
            raise
        except OvfkitError as exc:
            problems.append(f"{name}: {exc.details}")
            continue
        for fault in info.faults:
            problems.append(f"{name}: {fault.details}")
        capacity = capacities.get(disk_file.disk_id)
        if capacity is not None and info.faults == () and capacity != info.capacity:
            problems.append(
                f"{name}: ovf:capacity {capacity} but the VMDK holds {info.capacity} bytes"
            )
        populated = disk_file.populated_size
        if populated is not None and not info.faults and populated != info.populated_size:
            problems.append(
                f"{name}: ovf:populatedSize {populated} but the VMDK stores"
                f" {info.populated_size} bytes of grains"
            )
        if not info.faults:
            what = "structure and every grain" if check_data else "structure"
            checked.append(f"{name}: VMDK {what} valid ({info.grains} grains)")


def _vmdk_source(
    package: Package, members: tuple[Member, ...], stack: contextlib.ExitStack
) -> tuple[BinaryIO, int, int] | BinaryIO:
    """A disk member as inspect_vmdk reads it: an open file with the member's offset and size
    (worker processes can then read it too), or a stream over its chunks."""
    if len(members) == 1:
        member = members[0]
        if member.fileobj is not None:
            if member.fileobj.fd is not None:
                return (member.fileobj.f, member.offset, member.size)
        elif member.path is not None:
            try:
                f = stack.enter_context(open(member.path, "rb"))  # noqa: SIM115 - the stack closes it
            except OSError as exc:
                raise _read_error(member, exc) from None
            return (f, member.offset, member.size)
    return stack.enter_context(package.open_stream(members))


def _check_isos(
    package: Package,
    file_members: dict[str, tuple[Member, ...]],
    problems: list[str],
    checked: list[str],
) -> None:
    """ISO files carried by CD drives start with an ISO 9660 volume descriptor ("CD001" at
    byte 32769, ECMA-119 §8.1); an OVF environment ISO holds a schema-valid ovf-env.xml."""
    from ..ovf.validate import validate_environment
    from .iso import read_env_iso

    layout = package.parsed.layout
    refs = {i.file.id: i.file for i in layout.isos}
    if layout.env_iso is not None:
        refs[layout.env_iso.id] = layout.env_iso
    for file_id, ref in refs.items():
        members = file_members.get(file_id, ())
        if not members:
            continue
        with package.open_stream(members) as stream:
            stream.seek(16 * 2048 + 1)
            magic = stream.read(5)
        if magic != b"CD001":
            problems.append(f"{ref.href}: not an ISO 9660 image (no CD001 volume descriptor)")
            continue
        # The reader cannot tell an environment ISO from a CD image by the descriptor alone:
        # a small ISO holding ovf-env.xml at its root is taken for one (DSP0243 §11).
        env_xml: bytes | None = None
        if sum(m.size for m in members) <= _ENV_ISO_MAX:
            data = b"".join(package.read_member(m, _ENV_ISO_MAX) for m in members)
            with contextlib.suppress(OvfkitError):
                env_xml = read_env_iso(data)
        if env_xml is None:
            checked.append(f"{ref.href}: ISO 9660 image")
            continue
        try:
            validate_environment(env_xml)
            checked.append(f"{ref.href}: ovf-env.xml valid against DSP8027")
        except OvfkitError as exc:
            problems.append(f"{ref.href}: {exc.details}")


# ---------------------------------------------------------------------------------------------
# Extracting
# ---------------------------------------------------------------------------------------------


def extract_package(
    path: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    cancel: CancelToken | None = None,
) -> tuple[str, ...]:
    """Copy the package's files into ``folder`` (created if missing) as plain files; returns
    their paths. Never writes outside ``folder``: names are flat or safe relative paths,
    existing symbolic links are refused, nothing is overwritten.

    All or nothing: every destination is checked first (``folder`` or a folder a member needs
    being a file is InvalidArgumentError, SYS.1007, naming it), the files are written into a
    temporary folder beside ``folder`` (same file system) and moved in only once all are
    complete. On any error or cancellation the temporary folder is removed and ``folder`` is
    left as it was.
    """
    package = open_package(path)
    target = os.path.abspath(os.fspath(folder))
    if os.path.lexists(target) and not os.path.isdir(target):
        raise InvalidArgumentError(f"extract target {target!r} exists and is not a folder")
    root = os.path.realpath(target)
    names = [m.name for m in package.members]
    _plan_extract(root, names)
    # Beside a new folder (renamed into place at the end), inside an existing one: either way
    # on the file system of the final names, so that moving a file in is a rename or a link.
    where = root if os.path.isdir(root) else os.path.dirname(root)
    try:
        os.makedirs(where, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.extract-", dir=where)
    except OSError as exc:
        raise OvfkitIOError(
            f"cannot create a temporary folder in {where!r}: {exc.strerror}"
        ) from None
    try:
        for member in package.members:
            check_cancel(cancel, "extract")
            _extract_member(package, member, staging, cancel)
        return _publish(staging, root, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _plan_extract(root: str, names: list[str]) -> None:
    """Refuse, before anything is written, a member that cannot land in ``root``: an unsafe
    name, one under another member (``a`` and ``a/b``), one whose folder exists as a file or
    leads out of ``root``, or one whose file exists (a symbolic link included)."""
    files = set(names)
    for name in names:
        _check_relative(name)
        parts = name.split("/")
        here = root
        for i, part in enumerate(parts[:-1]):
            if "/".join(parts[: i + 1]) in files:
                raise TarFormatError(
                    f"member {name!r} lies under member {'/'.join(parts[: i + 1])!r}, a file"
                )
            here = os.path.join(here, part)
            if os.path.lexists(here) and not os.path.isdir(here):
                raise InvalidArgumentError(
                    f"cannot extract {name!r}: {here!r} exists and is not a folder"
                )
        real = os.path.realpath(here)
        if real != root and not real.startswith(root + os.sep):
            raise TarFormatError(f"member {name!r} would land outside {root!r}")
        dest = os.path.join(root, name)
        if os.path.lexists(dest):
            raise InvalidArgumentError(f"{dest!r} already exists; not overwritten")


def _extract_member(
    package: Package, member: Member, staging: str, cancel: CancelToken | None
) -> None:
    dest = os.path.join(staging, member.name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        fd = os.open(dest, flags, 0o644)
    except OSError as exc:
        raise OvfkitIOError(f"cannot create {dest!r}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as dst:
        for chunk in _member_chunks(member, "extract", cancel):
            try:
                dst.write(chunk)
            except OSError as exc:
                raise OvfkitIOError(f"writing {dest!r} failed: {exc.strerror}") from None


def _publish(staging: str, root: str, names: list[str]) -> tuple[str, ...]:
    """Move the complete files from ``staging`` into ``root``: one rename when ``root`` does
    not exist yet, else a hard link per file (link(2) never replaces an existing name) with
    every link undone if one fails."""
    out = tuple(os.path.join(root, name) for name in names)
    if not os.path.lexists(root):
        try:
            os.chmod(staging, 0o755)  # mkdtemp makes 0700; the folder was asked for as usual
            os.rename(staging, root)
            return out
        except OSError:
            pass  # made meanwhile: merge below, still without replacing anything
    linked: list[str] = []
    made: list[str] = []
    try:
        for name in names:
            dest = os.path.join(root, name)
            folder = os.path.dirname(dest)
            missing: list[str] = []
            while not os.path.isdir(folder):
                missing.append(folder)
                folder = os.path.dirname(folder)
            for d in reversed(missing):
                os.mkdir(d)
                made.append(d)
            _move_new(os.path.join(staging, name), dest)
            linked.append(dest)
    except OSError as exc:
        for dest in reversed(linked):
            with contextlib.suppress(OSError):
                os.unlink(dest)
        for d in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(d)
        if isinstance(exc, FileExistsError | NotADirectoryError):
            raise InvalidArgumentError(
                f"cannot extract into {root!r}: {exc.filename!r} appeared meanwhile"
            ) from None
        raise OvfkitIOError(
            f"cannot move the extracted files into {root!r}: {exc.strerror}"
        ) from None
    return out


def _move_new(src: str, dest: str) -> None:
    """``src`` to the name ``dest``, which must not exist: link(2) refuses an existing name
    atomically; where the file system has no hard links, a checked rename."""
    try:
        os.link(src, dest, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dest) from None
        os.rename(src, dest)
