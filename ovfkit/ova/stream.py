"""Streaming mode: a package written in one forward pass to a sink that cannot seek (a pipe, a
socket, an HTTP upload).

A tar header carries its member's size and precedes its data, and a compressed disk's size is
known only at its end, so each disk is cut into ``ovf:chunkSize`` pieces (DSP0243 §5.3 "chunked
files": members ``<href>.000000000``, ``<href>.000000001``, ...), each buffered in memory until it
is full: memory stays at one chunk plus the compressor's batches. The order is the other one
DSP0243 2.x allows: descriptor, files, then manifest and certificate at the end, since the
digests are known last. The descriptor cannot know File sizes or populated sizes before the data
is written, so it leaves out those optional attributes (DSP0243 §7.1, §9.1) and declares
``ovf:chunkSize`` instead. ISO files, whose sizes are known, are written whole with their size.
The whole-stream MD5 and xxh128 are computed on the way out.

Importers: vSphere handles chunked files (its OvfFile/OvfFileItem API carries ``chunkSize`` and
names chunks ``<path>.000000000``, ...); VirtualBox is not known to reassemble chunks (not tested
here: treat as unsupported); virt-v2v reads only the last chunk of a chunked disk (virt-v2v#189),
so a package for virt-v2v or Proxmox must be written to a path (:func:`ovfkit.ova.write_ova`
with a path target), never streamed. Cancellation or an error leaves the receiver with a
truncated archive (no end-of-archive blocks), which every tar reader reports as such.
"""

from __future__ import annotations

import time
from typing import IO

from ..errors import InvalidArgumentError, OvfkitIOError
from ..model import VirtualMachine
from ..progress import CancelToken, ProgressCallback, check_cancel
from ..vmdk.hashing import DigestTee, new_hash
from . import tar
from .members import check_call, measure_isos, resolve_capacities, write_files
from .plan import (
    OvaOptions,
    PackageFile,
    PackageResult,
    build_package_descriptor,
    digest_all,
    manifest_members,
    plan_package,
)

__all__ = ["DEFAULT_CHUNK_SIZE", "write_ova_stream"]

DEFAULT_CHUNK_SIZE = 64 << 20  # memory held per disk: one chunk


class _Wire:
    """The target with the whole-stream digests and a byte count."""

    def __init__(self, target: IO[bytes], tee: DigestTee) -> None:
        self.target = target
        self.tee = tee
        self.count = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self.tee.update(data if isinstance(data, bytes) else bytes(data))
        view = memoryview(data)
        try:
            while view:
                n = self.target.write(view)
                if n is None:  # non-blocking raw sink: try again
                    continue
                view = view[n:]
        except OSError as exc:
            raise OvfkitIOError(
                f"writing the package stream failed: {exc.strerror or exc}"
            ) from exc
        self.count += len(data)

    def member(self, name: str, data: bytes | bytearray | memoryview, mtime: int) -> None:
        self.write(tar.encode_member(name, data, mtime))


class _Chunker:
    """What write_files writes into: cuts the current file into chunk members, or passes a
    file of known size (``whole``) straight through after its header."""

    def __init__(self, wire: _Wire, chunk_size: int, mtime: int, algorithm: str | None) -> None:
        self.wire = wire
        self.chunk_size = chunk_size
        self.mtime = mtime
        self.algorithm = algorithm
        self.count = 0
        self.buf = bytearray()
        self.name = ""
        self.index = 0
        self.whole: int | None = None
        self.chunks: list[tuple[str, str]] = []  # (member name, manifest digest)
        self.whole_hash = new_hash(algorithm) if algorithm else None

    def begin(self, name: str, whole: int | None) -> None:
        self.name, self.index, self.whole = name, 0, whole
        if whole is not None:
            self.wire.write(tar.encode_header(name, whole, self.mtime))
            self.whole_hash = new_hash(self.algorithm) if self.algorithm else None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        self.count += n
        if self.whole is not None:
            if self.whole_hash is not None:
                self.whole_hash.update(bytes(data))
            self.wire.write(data)
            return n
        view = memoryview(data)
        while view:
            room = self.chunk_size - len(self.buf)
            self.buf += view[:room]
            view = view[room:]
            if len(self.buf) == self.chunk_size:
                self._emit()
        return n

    def _emit(self) -> None:
        name = f"{self.name}.{self.index:09d}"
        if self.algorithm:
            h = new_hash(self.algorithm)
            h.update(bytes(self.buf))
            self.chunks.append((name, h.hexdigest()))
        self.wire.member(name, self.buf, self.mtime)
        self.buf = bytearray()
        self.index += 1

    def end(self, size: int) -> None:
        if self.whole is not None:
            if size != self.whole:
                raise OvfkitIOError(f"{self.name} changed while it was packed")
            self.wire.write(bytes(tar.padding(size)))
            if self.whole_hash is not None:
                self.chunks.append((self.name, self.whole_hash.hexdigest()))
            return
        if self.buf or self.index == 0:
            self._emit()

    def flush(self) -> None:
        pass


def write_ova_stream(
    vm: VirtualMachine,
    target: IO[bytes],
    options: OvaOptions = OvaOptions(),  # noqa: B008 - frozen, safe as a default
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> PackageResult:
    """Write ``vm`` as a chunked OVA to ``target`` (only ``write()`` is used). See the module
    docstring for the layout and which importers read it."""
    check_call(vm, target, options, progress, cancel)
    vm = resolve_capacities(vm)  # the descriptor goes out before the disks
    chunk_size = options.chunk_size or DEFAULT_CHUNK_SIZE
    if chunk_size < tar.BLOCK or chunk_size % tar.BLOCK:
        raise InvalidArgumentError(f"chunk_size {chunk_size} must be a multiple of 512")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    mtime = int(time.time()) if options.mtime is None else options.mtime
    plan = plan_package(vm, options, measure_isos(vm, options), chunk_size=chunk_size)
    algorithm = options.manifest if options.manifest != "none" else None
    with DigestTee(("md5", "xxh128")) as tee:
        wire = _Wire(target, tee)
        known = {f.href: plan.iso_sizes[f.id] for f in plan.layout.files if f.id in plan.iso_sizes}
        # Descriptor first, without the sizes of the disks: they are not known yet.
        descriptor = build_package_descriptor(plan, plan.iso_sizes, {}, {})
        descriptor_digests = digest_all(descriptor, plan.algorithms)
        wire.member(plan.descriptor_name, descriptor, mtime)
        chunker = _Chunker(wire, chunk_size, mtime, algorithm)
        written = write_files(
            plan,
            chunker,
            options,
            progress,
            cancel,
            lambda name: chunker.begin(name, known.get(name)),
            lambda _name, size: chunker.end(size),
            timings,
        )
        check_cancel(cancel, "package")
        files = [PackageFile(plan.descriptor_name, len(descriptor), descriptor_digests)]
        files += written.files
        if algorithm is not None:
            entries = [(plan.descriptor_name, descriptor_digests[algorithm]), *chunker.chunks]
            for name, data in manifest_members(plan, options, entries):
                wire.member(name, data, mtime)
                files.append(PackageFile(name, len(data), {}))
        wire.write(tar.END_OF_ARCHIVE)
        try:
            target.flush()
        except (AttributeError, ValueError):
            pass
        except OSError as exc:
            raise OvfkitIOError(
                f"flushing the package stream failed: {exc.strerror or exc}"
            ) from exc
        digests = tee.hexdigests()
    timings["total"] = time.perf_counter() - t0
    return PackageResult(
        path=None,
        size=wire.count,
        md5=digests["md5"],
        xxh128=digests["xxh128"],
        files=tuple(files),
        timings=timings,
    )
