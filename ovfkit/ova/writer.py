"""write_ova: the package as one tar, written once, appearing atomically.

Member order (DSP0243 §5.3, docs/interop-rules.md "Tar container"): descriptor, manifest,
certificate, then the files in ``References`` order; VMware wants the ``.ovf`` first.

The descriptor carries each File's exact size and each Disk's populated size, known only once a
disk is compressed. For a path target the package is therefore written out of order into a
temporary file in the target's folder:

1. The front region (descriptor + manifest + certificate, with their headers) is reserved: the
   descriptor is built with placeholder sizes of the widest possible value (2^64 - 1) and
   measured; the manifest's length depends only on names and the algorithm, an RSA
   certificate's only on the key size.
2. Each file is streamed right after the front, its data directly behind a 512-byte header slot
   (the VMDK from ``ovfkit.vmdk.write_vmdk``, which hands back size, populated size and digests
   computed on the way out); headers are written afterwards with ``pwrite``.
3. The real descriptor is built, padded with trailing XML whitespace (allowed after the root
   element: XML 1.0 ``document ::= prolog element Misc*``) to exactly the reserved length; the
   manifest and certificate follow, and the front is written with ``pwrite``.
4. The whole-package MD5 (ZStack's md5Sum) and xxh128 need the front's bytes first, and MD5 cannot
   be resumed from a later point, so they cannot be computed while the disks stream. The package
   is hashed once more, in one sequential pass over the finished file: the bytes were just
   written and are read back from the page cache (never recompressed), mapped window by window;
   fsync runs in a second thread at the same time, so the pass overlaps the flush to disk
   instead of adding to it. Cost: one MD5 of the package's compressed bytes (3.3 s for the
   1.34 GB package of the reference disk on the 2-core test machine, a quarter of the export).
5. fsync, rename over the target, fsync the folder. On any failure, cancellation or
   KeyboardInterrupt the temporary file is removed and the target is left untouched. The
   temporary file is locked while it is written (:mod:`.tempfiles`): if the process is killed
   outright, the next export to the folder removes it.

For a target that cannot seek (a pipe, socket or upload stream) see :mod:`.stream`.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING, BinaryIO, Literal, NamedTuple, Protocol, cast

import xxhash
from lxml import etree

from .._args import require, require_hooks
from ..errors import (
    InvalidArgumentError,
    NotFoundError,
    OvfkitError,
    OvfkitIOError,
)
from ..model import ControllerType, VirtualMachine
from ..ovf.descriptor import DescriptorOptions, build_descriptor
from ..ovf.layout import PackageLayout, plan_layout
from ..progress import CancelToken, Progress, ProgressCallback, check_cancel
from . import tar, tempfiles
from .manifest import ALGORITHMS, encode_manifest, line_length

if TYPE_CHECKING:  # signing and ISO code load only for packages that use them
    from .signing import Signer

__all__ = ["OvaOptions", "PackageFile", "PackageResult", "write_ova"]

ManifestAlgorithm = Literal["sha1", "sha256", "sha512", "none"]
_PLACEHOLDER = 2**64 - 1  # widest value an xs:unsignedLong size attribute can take
_COPY_CHUNK = 4 << 20
_SMALL_WRITES = 256 << 10  # writes smaller than this are gathered into one pwritev
_IOV_MAX = 1024  # Linux UIO_MAXIOV: pieces per pwritev call
_HASH_WINDOW = 32 << 20  # a multiple of mmap.ALLOCATIONGRANULARITY


@dataclass(frozen=True)
class OvaOptions:
    """How to write a package.

    ``ovf_version``: "1.0" (envelope/1, the only namespace virt-v2v, Proxmox and vdsm read) or
    "2.0" (VirtualBox and Glance import it; see :class:`ovfkit.ovf.DescriptorOptions`).
    ``manifest``: digest of the ``.mf`` lines, or "none" for no manifest (then no signing).
    ``engine``: VMDK engine, "native" or "qemu-img". ``signer``: sign the manifest
    (:func:`ovfkit.ova.signing.load_signer`). ``include_iso``: pack the ISO images of the CD
    drives (else the drives stay empty). ``ovf_env``: property values for an OVF environment ISO
    (DSP0243 §11; ``{}`` = the defaults), None for none. ``mtime``: tar member times (None =
    now). ``threads``/``compress_level`` go to the VMDK writer. ``fsync``: flush to stable storage
    before the rename (off only for tests and benchmarks of the pipeline itself).
    ``chunk_size``: ``ovf:chunkSize`` of disks in streaming mode (a non-seekable target; None =
    64 MiB); a path target never chunks (virt-v2v reads only the last chunk, virt-v2v#189).
    ``force_shared``: read disks that a running VM holds locked instead of refusing them.
    """

    ovf_version: Literal["1.0", "2.0"] = "1.0"
    manifest: ManifestAlgorithm = "sha256"
    engine: Literal["native", "qemu-img"] = "native"
    signer: Signer | None = None
    include_iso: bool = False
    ovf_env: Mapping[str, str] | None = None
    hardware_version: str = "vmx-13"
    mtime: int | None = None
    threads: int | None = None
    compress_level: int = 2
    fsync: bool = True
    chunk_size: int | None = None
    force_shared: bool = False

    def __post_init__(self) -> None:
        if self.ovf_version not in ("1.0", "2.0"):
            raise InvalidArgumentError(f"ovf_version {self.ovf_version!r}: use '1.0' or '2.0'")
        if self.manifest != "none" and self.manifest not in ALGORITHMS:
            raise InvalidArgumentError(
                f"manifest {self.manifest!r}: use sha1, sha256, sha512 or none"
            )
        if self.engine not in ("native", "qemu-img"):
            raise InvalidArgumentError(f"engine {self.engine!r}: use 'native' or 'qemu-img'")
        if self.signer is not None and self.manifest == "none":
            raise InvalidArgumentError("signing needs a manifest: the certificate signs the .mf")
        if self.mtime is not None and not 0 <= self.mtime < 8**11:
            raise InvalidArgumentError(f"mtime {self.mtime} is out of the tar range")


class PackageFile(NamedTuple):
    """A member of the package: name, byte size, digests (lower-case hex by algorithm)."""

    name: str
    size: int
    digests: Mapping[str, str]


@dataclass(frozen=True)
class PackageResult:
    """The written package: ``md5``/``xxh128`` of the whole .ova, ``files`` in tar order,
    ``timings`` seconds per stage."""

    path: str
    size: int
    md5: str
    xxh128: str
    files: tuple[PackageFile, ...]
    timings: Mapping[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Planning (pure)
# ---------------------------------------------------------------------------------------------


def _vmdk_adapter(vm: VirtualMachine, controller_id: str) -> str:
    """ddb.adapterType for a disk's controller (VMDK 5.0 descriptor: ide, buslogic, lsilogic,
    legacyESX). ovftool writes lsilogic for every SCSI kind but BusLogic, and ide for IDE/SATA."""
    ctrl = vm.controller(controller_id)
    if ctrl.type is ControllerType.IDE or ctrl.type is ControllerType.SATA:
        return "ide"
    if (ctrl.subtype or "").lower() == "buslogic":
        return "buslogic"
    return "lsilogic"


def _hw_version(name: str) -> int:
    digits = name.rsplit("-", 1)[-1]
    return int(digits) if digits.isdigit() else 13


def pad_descriptor(descriptor: bytes, length: int) -> bytes:
    """``descriptor`` grown to ``length`` bytes with whitespace after the root element (XML 1.0
    §2.1 ``Misc*``), ending with a newline."""
    body = descriptor.rstrip(b"\n")
    if len(body) > length:
        raise InvalidArgumentError(
            f"descriptor of {len(body)} bytes does not fit its {length}-byte slot"
        )
    extra = length - len(body)
    return body + (b" " * (extra - 1) + b"\n" if extra else b"")


def virtual_system_id(descriptor: bytes) -> str:
    """The VirtualSystem's ``ovf:id`` (the OVF environment's ``ovfenv:id``, DSP8027)."""
    root = etree.fromstring(descriptor, etree.XMLParser(resolve_entities=False, no_network=True))
    for el in root.iter():
        if isinstance(el.tag, str) and etree.QName(el).localname == "VirtualSystem":
            for name, value in el.attrib.items():
                if etree.QName(name).localname == "id":
                    return str(value)
    raise InvalidArgumentError("descriptor has no VirtualSystem with an ovf:id")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _report(progress: ProgressCallback | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(Progress(stage, done, total))


def _digest_all(data: bytes, algorithms: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in algorithms:
        if name == "xxh128":
            out[name] = xxhash.xxh128_hexdigest(data)
        else:
            out[name] = hashlib.new(name, data).hexdigest()
    return out


class _ChunkSink(Protocol):
    count: int

    def write(self, data: bytes | memoryview) -> int: ...
    def flush(self) -> None: ...


class _Sink:
    """Writes the temporary file at ``count`` with pwritev: small writes (markers, grain tables,
    tar padding) are gathered and go out with the next large one, and ``writev`` takes the
    VMDK writer's pieces uncopied (the kernel gathers them without the GIL)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.count = 0
        self._small: list[bytes | memoryview] = []
        self._small_bytes = 0

    def seek(self, position: int) -> None:
        self.flush()
        self.count = position

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        if n < _SMALL_WRITES:
            self._small.append(bytes(data))
            self._small_bytes += n
            self.count += n
            if self._small_bytes >= _SMALL_WRITES:
                self.flush()
        else:
            self.writev([data])
        return n

    def writev(self, pieces: Sequence[bytes | memoryview]) -> None:
        size = sum(map(len, pieces))
        self.count += size
        self._pwritev([*self._small, *pieces], self.count - size - self._small_bytes)
        self._small.clear()
        self._small_bytes = 0

    def flush(self) -> None:
        if self._small:
            self._pwritev(self._small, self.count - self._small_bytes)
            self._small.clear()
            self._small_bytes = 0

    def _pwritev(self, pieces: Sequence[bytes | memoryview], offset: int) -> None:
        for start in range(0, len(pieces), _IOV_MAX):
            batch = pieces[start : start + _IOV_MAX]
            want = sum(map(len, batch))
            n = os.pwritev(self.fd, batch, offset)
            if n != want:  # rare (a signal, a full disk): write the rest piece by piece
                self._rest(batch, n, offset)
            offset += want

    def _rest(self, pieces: Sequence[bytes | memoryview], done: int, offset: int) -> None:
        for piece in pieces:
            view = memoryview(piece).cast("B")
            if done >= len(view):
                done -= len(view)
                offset += len(view)
                continue
            view = view[done:]
            offset += done
            done = 0
            while view:
                n = os.pwrite(self.fd, view, offset)
                if n <= 0:
                    raise OvfkitIOError(f"writing the package at byte {offset} made no progress")
                view = view[n:]
                offset += n


def _copy_file(
    path: str,
    sink: _Sink | _ChunkSink,
    algorithms: tuple[str, ...],
    stage: str,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> dict[str, str]:
    from ..vmdk.hashing import DigestTee

    total = os.path.getsize(path)
    done = 0
    with open(path, "rb") as src, DigestTee(algorithms) as tee:
        while True:
            check_cancel(cancel, stage)
            chunk = src.read(_COPY_CHUNK)
            if not chunk:
                break
            tee.update(chunk)
            sink.write(chunk)
            done += len(chunk)
            _report(progress, stage, done, total)
        return tee.hexdigests()


def _hash_file(
    fd: int, size: int, progress: ProgressCallback | None, cancel: CancelToken | None
) -> tuple[str, str]:
    """MD5 and xxh128 of the first ``size`` bytes of ``fd`` in one sequential pass.

    The file is mapped ``_HASH_WINDOW`` bytes at a time and each window unmapped before the next:
    no copy into Python buffers (10% faster than pread here), while RSS stays bounded (mapped
    page-cache pages count in RSS, so one whole-file map would grow with the package). xxh128
    runs in a second thread beside MD5 (both release the GIL). pread where mmap is refused.
    """
    md5 = hashlib.md5(usedforsecurity=False)
    xxh = xxhash.xxh128()
    with ThreadPoolExecutor(1, thread_name_prefix="ovfkit-xxh128") as pool:

        def feed(part: bytes | memoryview, end: int) -> None:
            check_cancel(cancel, "checksum")
            beside = pool.submit(xxh.update, part)
            md5.update(part)
            beside.result()
            _report(progress, "checksum", end, size)

        for start in range(0, size, _HASH_WINDOW):
            length = min(_HASH_WINDOW, size - start)
            try:
                mm: mmap.mmap | None = mmap.mmap(fd, length, prot=mmap.PROT_READ, offset=start)
            except (OSError, ValueError):
                mm = None
            if mm is None:
                data = os.pread(fd, length, start)
                if len(data) != length:
                    raise OvfkitIOError(f"the package shrank while it was hashed (at byte {start})")
                feed(data, start + length)
                continue
            with mm:
                with contextlib.suppress(AttributeError, OSError):
                    mm.madvise(mmap.MADV_SEQUENTIAL)
                with memoryview(mm) as window:
                    feed(window, start + length)
    return md5.hexdigest(), xxh.hexdigest()


def _check_target(target: str, vm: VirtualMachine) -> str:
    path = os.path.abspath(os.fspath(target))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise NotFoundError(f"target folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise InvalidArgumentError(f"target {path!r} is a directory")
    if os.path.exists(path):
        _refuse_own_image(path, vm)
    return path


def _refuse_own_image(path: str, vm: VirtualMachine) -> None:
    """The package is renamed over ``path`` at the end: if that is one of the VM's own images
    (a disk, a file of its backing chain, a packed ISO; under any name, hard links included)
    the export would destroy its source. Only an existing target can be one."""
    from ..qemu import img  # lazy: the qemu-img edge, needed only when the target exists

    sources: list[str] = [cd.iso for cd in vm.cd_drives if cd.iso is not None]
    for disk in vm.disks:
        if disk.source is None:
            continue
        sources.append(disk.source.path)
        with contextlib.suppress(OvfkitError):  # an unreadable image fails later, clearly
            info = img.info(disk.source.path, disk.source.format, force_share=True)
            sources += [layer.filename for layer in info.backing_chain]
    for source in sources:
        with contextlib.suppress(OSError):
            if os.path.samefile(path, source):
                raise InvalidArgumentError(
                    f"target {path!r} is {source!r}, an image of VM {vm.name!r}: writing the"
                    " package there would destroy it; choose another target"
                )


def write_ova(
    vm: VirtualMachine,
    target: str | os.PathLike[str] | IO[bytes],
    options: OvaOptions = OvaOptions(),
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> PackageResult:
    """Write ``vm`` as an OVA package to ``target``.

    ``target`` is a path (written atomically, see the module docstring) or a writable binary
    stream, possibly not seekable (written in streaming order, :func:`ovfkit.ova.stream.
    write_ova_stream`). Raises InvalidArgumentError for a VM or options no package can express,
    NotFoundError for a missing disk image or folder, OvfkitIOError when writing fails (disk
    full...), OperationCancelledError when ``cancel`` is set; nothing is left at the target path
    then.
    """
    if not isinstance(target, (str, os.PathLike)):
        from .stream import write_ova_stream  # checks the arguments itself

        return write_ova_stream(vm, target, options, progress=progress, cancel=cancel)
    check_call(vm, target, options, progress, cancel)
    vm = resolve_capacities(vm)
    path = _check_target(os.fspath(target), vm)
    folder = os.path.dirname(path)
    tempfiles.sweep(folder)  # what exports killed outright left here (SIGKILL, OOM, power)
    fd, tmp = tempfiles.create(folder, os.path.basename(path))  # locked while it is written
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a package is meant to be shared
        with os.fdopen(fd, "w+b", buffering=0) as raw:
            result = _write_seekable(vm, raw, tmp, options, progress, cancel)
            os.replace(tmp, path)
        if options.fsync:
            _fsync_dir(folder)
        return replace(result, path=path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, KeyboardInterrupt):
            raise
        if isinstance(exc, OvfkitError):
            raise
        if isinstance(exc, OSError):
            raise OvfkitIOError(
                f"writing {path!r} failed: {exc.strerror or exc}",
                elaboration=f"errno {exc.errno}",
            ) from exc
        raise


def check_call(
    vm: object, target: object, options: object, progress: object, cancel: object
) -> None:
    """InvalidArgumentError for arguments of the wrong type (see ovfkit._args)."""
    require(vm, VirtualMachine, "vm")
    if not isinstance(target, str | os.PathLike) and not callable(getattr(target, "write", None)):
        raise InvalidArgumentError(
            f"target must be a path or a writable binary file object, not {type(target).__name__}"
        )
    require(options, OvaOptions, "options")
    require_hooks(progress, cancel)


def resolve_capacities(vm: VirtualMachine) -> VirtualMachine:
    """``vm`` with each disk's capacity the VMDK's (the image's virtual size in whole sectors),
    read with ``qemu-img info`` before anything is written: the streaming layout writes the
    descriptor first. The Disk.capacity rule (see ovfkit.model.Disk): None takes the image's
    size, a capacity given must be it."""
    from ..disk import check_image

    disks = []
    for disk in vm.disks:
        if disk.source is None:
            disks.append(disk)  # plan_package refuses it
            continue
        info = check_image(disk.source, force_shared=True)  # locks: checked when it is read
        image = -(-info.virtual_size // 512) * 512
        if disk.capacity is not None and -(-disk.capacity // 512) * 512 != image:
            raise InvalidArgumentError(
                f"disk {disk.id!r} has capacity {disk.capacity} but its image"
                f" {disk.source.path} holds {info.virtual_size} bytes: leave capacity None to"
                " take the image's size, or resize the image (qemu-img resize)"
            )
        disks.append(replace(disk, capacity=image))
    return replace(vm, disks=tuple(disks))


def _fsync_dir(folder: str) -> None:
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass
class _Plan:
    """Everything about a package that is known before any disk is read."""

    vm: VirtualMachine
    layout: PackageLayout
    descriptor_options: DescriptorOptions
    descriptor_name: str
    manifest_name: str | None
    cert_name: str | None
    descriptor_room: int
    manifest_room: int
    cert_room: int
    env_iso: bytes | None
    iso_paths: dict[str, str]  # file id -> local ISO path
    iso_sizes: dict[str, int]
    algorithms: tuple[str, ...]  # per-file digests: the manifest algorithm (or none)

    @property
    def front(self) -> int:
        rooms = [self.descriptor_room]
        if self.manifest_name is not None:
            rooms.append(self.manifest_room)
        if self.cert_name is not None:
            rooms.append(self.cert_room)
        return sum(tar.BLOCK + r + tar.padding(r) for r in rooms)


def plan_package(vm: VirtualMachine, options: OvaOptions) -> _Plan:
    """Names, ISO media and the room of the front members; reads only ISO sizes."""
    for disk in vm.disks:
        if disk.source is None:
            raise InvalidArgumentError(f"disk {disk.id!r} of VM {vm.name!r} has no source image")
    dopts = DescriptorOptions(
        ovf_version=options.ovf_version,
        hardware_version=options.hardware_version,
        include_iso=options.include_iso,
        ovf_env=options.ovf_env is not None,
    )
    layout = plan_layout(vm, dopts)
    iso_paths: dict[str, str] = {}
    iso_sizes: dict[str, int] = {}
    for iso in layout.isos:
        cd = next(c for c in vm.cd_drives if c.id == iso.cd_id)
        assert cd.iso is not None
        if iso.file.id not in iso_paths:
            from .iso import check_iso_image

            iso_sizes[iso.file.id] = check_iso_image(cd.iso)
            iso_paths[iso.file.id] = cd.iso
    # Placeholder sizes and capacities of the widest value: the real descriptor is never longer.
    widest_vm = replace(vm, disks=tuple(replace(d, capacity=_PLACEHOLDER) for d in vm.disks))
    widest = layout.with_sizes(
        {f.id: _PLACEHOLDER for f in layout.files}, {d.id: _PLACEHOLDER for d in vm.disks}
    )
    draft = build_descriptor(widest_vm, dopts, widest)
    env_iso: bytes | None = None
    if options.ovf_env is not None and layout.env_iso is not None:
        from .iso import build_ovf_env, environment_properties, make_env_iso

        props = environment_properties(vm, options.ovf_env)
        env_iso = make_env_iso(build_ovf_env(virtual_system_id(draft), props))
        iso_sizes[layout.env_iso.id] = len(env_iso)
    base = layout.base
    descriptor_name = f"{base}.ovf"
    manifest_name = f"{base}.mf" if options.manifest != "none" else None
    cert_name = f"{base}.cert" if options.signer is not None else None
    names = [descriptor_name, *(f.href for f in layout.files)]
    for name in (descriptor_name, manifest_name, cert_name, *names[1:]):
        if name is not None:
            tar.validate_name(name)
    manifest_room = 0
    if options.manifest != "none":
        manifest_room = sum(line_length(options.manifest, n) for n in names)
    cert_room = 0
    if options.signer is not None and manifest_name is not None:
        cert_room = options.signer.certificate_length(manifest_name)
    # Per-file digests are only what the manifest needs: hashing each disk member again for
    # md5/xxh128 costs ~20% of an export, and the whole-package md5 is taken separately.
    algorithms: tuple[str, ...] = (options.manifest,) if options.manifest != "none" else ()
    return _Plan(
        vm=vm,
        layout=layout,
        descriptor_options=dopts,
        descriptor_name=descriptor_name,
        manifest_name=manifest_name,
        cert_name=cert_name,
        descriptor_room=len(draft),
        manifest_room=manifest_room,
        cert_room=cert_room,
        env_iso=env_iso,
        iso_paths=iso_paths,
        iso_sizes=iso_sizes,
        algorithms=algorithms,
    )


def stream_files(
    plan: _Plan,
    sink: _Sink | _ChunkSink,
    options: OvaOptions,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    begin_member: Callable[[str], None],
    end_member: Callable[[str, int], None],
    timings: dict[str, float],
) -> tuple[dict[str, tuple[int, dict[str, str]]], dict[str, int], dict[str, int]]:
    """Write every file's data in References order through ``sink``; returns name -> (size,
    digests), file id -> size, disk id -> populated size. ``begin_member``/``end_member`` let the
    caller place tar headers and padding."""
    from ..vmdk import VmdkOptions, write_vmdk

    layout = plan.layout
    vm = plan.vm
    written: dict[str, tuple[int, dict[str, str]]] = {}
    sizes: dict[str, int] = {}
    populated: dict[str, int] = {}
    capacities: dict[str, int] = {}
    for ref in layout.files:
        check_cancel(cancel, "package")
        started = time.perf_counter()
        begin_member(ref.href)
        before = sink.count
        disk_file = next((d for d in layout.disks if d.file.id == ref.id), None)
        if disk_file is not None:
            disk = next(d for d in vm.disks if d.id == disk_file.disk_id)
            assert disk.source is not None
            vopts = VmdkOptions(
                engine=options.engine,
                adapter_type=_vmdk_adapter(vm, disk.controller),
                hw_version=_hw_version(options.hardware_version),
                digests=plan.algorithms,
                threads=options.threads,
                filename=ref.href,
                compress_level=options.compress_level,
                force_shared=options.force_shared,
            )
            result = write_vmdk(
                disk.source, cast(BinaryIO, sink), vopts, progress=progress, cancel=cancel
            )
            digests = dict(result.digests)
            populated[disk.id] = result.populated_size
            capacities[disk.id] = result.capacity
            if sink.count - before != result.size:
                raise OvfkitIOError(
                    f"VMDK writer reported {result.size} bytes for {ref.href},"
                    f" {sink.count - before} reached the package"
                )
        elif ref.id in plan.iso_paths:
            digests = _copy_file(
                plan.iso_paths[ref.id], sink, plan.algorithms, f"iso {ref.href}", progress, cancel
            )
        else:
            assert plan.env_iso is not None
            sink.write(plan.env_iso)
            digests = _digest_all(plan.env_iso, plan.algorithms)
        size = sink.count - before
        expected = plan.iso_sizes.get(ref.id)
        if expected is not None and size != expected:
            raise OvfkitIOError(
                f"ISO {ref.href} changed while it was packed ({expected} -> {size})"
            )
        end_member(ref.href, size)
        written[ref.href] = (size, digests)
        sizes[ref.id] = size
        timings[f"file {ref.href}"] = time.perf_counter() - started
    plan.vm = replace(
        vm, disks=tuple(replace(d, capacity=capacities.get(d.id, d.capacity)) for d in vm.disks)
    )
    return written, sizes, populated


def front_members(
    plan: _Plan,
    options: OvaOptions,
    sizes: Mapping[str, int],
    populated: Mapping[str, int],
    written: Mapping[str, tuple[int, dict[str, str]]],
    *,
    pad: bool,
) -> list[tuple[str, bytes, dict[str, str]]]:
    """(name, bytes, digests) of the descriptor, manifest and certificate, with the real sizes.
    ``pad``: grow the descriptor to its reserved room."""
    layout = plan.layout.with_sizes(sizes, populated)
    descriptor = build_descriptor(plan.vm, plan.descriptor_options, layout)
    if pad:
        descriptor = pad_descriptor(descriptor, plan.descriptor_room)
    out = [(plan.descriptor_name, descriptor, _digest_all(descriptor, plan.algorithms))]
    if plan.manifest_name is not None and options.manifest != "none":
        entries = [(plan.descriptor_name, out[0][2][options.manifest])]
        entries += [(name, d[options.manifest]) for name, (_, d) in written.items()]
        manifest = encode_manifest(options.manifest, entries)
        out.append((plan.manifest_name, manifest, _digest_all(manifest, plan.algorithms)))
        if options.signer is not None and plan.cert_name is not None:
            cert = options.signer.sign(plan.manifest_name, manifest)
            out.append((plan.cert_name, cert, _digest_all(cert, plan.algorithms)))
    return out


def _write_seekable(
    vm: VirtualMachine,
    raw: BinaryIO,
    tmp: str,
    options: OvaOptions,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> PackageResult:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    mtime = int(time.time()) if options.mtime is None else options.mtime
    plan = plan_package(vm, options)
    timings["plan"] = time.perf_counter() - t0
    fd = raw.fileno()
    headers: list[tuple[int, bytes]] = []
    sink = _Sink(fd)
    position = plan.front
    current: dict[str, int] = {}

    def begin(name: str) -> None:
        current[name] = position
        sink.seek(position + tar.BLOCK)

    def end(name: str, size: int) -> None:
        nonlocal position
        sink.write(bytes(tar.padding(size)))
        headers.append((current[name], tar.encode_header(name, size, mtime)))
        position = sink.count

    sink.seek(position)
    written, sizes, populated = stream_files(
        plan, sink, options, progress, cancel, begin, end, timings
    )
    sink.write(tar.END_OF_ARCHIVE)
    sink.flush()
    total = sink.count
    t1 = time.perf_counter()
    front = bytearray()
    members = front_members(plan, options, sizes, populated, written, pad=True)
    for name, data, _ in members:
        front += tar.encode_header(name, len(data), mtime) + data + bytes(tar.padding(len(data)))
    if len(front) != plan.front:
        raise OvfkitIOError(f"front region is {len(front)} bytes, {plan.front} were reserved")
    os.pwrite(fd, bytes(front), 0)
    for offset, header in headers:
        os.pwrite(fd, header, offset)
    timings["descriptor"] = time.perf_counter() - t1
    check_cancel(cancel, "package")
    # Hash from the page cache while the kernel writes the file back (see module docstring).
    t2 = time.perf_counter()
    sync_error: list[BaseException] = []

    def sync() -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            sync_error.append(exc)

    syncer = threading.Thread(target=sync, name="ovfkit-fsync") if options.fsync else None
    if syncer is not None:
        syncer.start()
    try:
        md5, xxh = _hash_file(fd, total, progress, cancel)
    finally:
        if syncer is not None:
            syncer.join()
    if sync_error:
        raise sync_error[0]
    timings["checksum+sync"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    files = tuple(PackageFile(n, len(d), dg) for n, d, dg in members) + tuple(
        PackageFile(n, s, d) for n, (s, d) in written.items()
    )
    return PackageResult(
        path=tmp, size=total, md5=md5, xxh128=xxh, files=files, timings=timings
    )
