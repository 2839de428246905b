"""What a package will hold, decided before any disk is read, and the metadata members' bytes.

Pure: no files, no subprocesses. :func:`plan_package` fixes the member names, the ISO media,
the room the seekable layout reserves for the front members and the per-file digests; the
metadata encoders build the descriptor, manifest and certificate from what the writers report.
The seekable writer (:mod:`.seekable`, behind :func:`ovfkit.ova.write_ova` for a path) and the
streaming writer (:mod:`.stream`) both drive a :class:`PackagePlan`; neither imports the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, NamedTuple

import xxhash
from lxml import etree

from ..errors import InvalidArgumentError
from ..model import ControllerType, Disk, VirtualMachine
from ..ovf.descriptor import DescriptorOptions, build_descriptor
from ..ovf.layout import FileRef, PackageLayout, plan_layout, safe_basename
from ..vmdk.options import VmdkOptions
from . import tar
from .manifest import ALGORITHMS, encode_manifest, line_length

if TYPE_CHECKING:  # signing code loads only for packages that use it
    from .signing import Signer

__all__ = [
    "CHUNK_SUFFIX",
    "LayoutName",
    "ManifestAlgorithm",
    "OvaOptions",
    "PackageFile",
    "PackagePlan",
    "PackageResult",
    "WrittenFiles",
    "build_package_descriptor",
    "digest_all",
    "manifest_files",
    "manifest_members",
    "pad_descriptor",
    "plan_package",
    "virtual_system_id",
]

ManifestAlgorithm = Literal["sha1", "sha256", "sha512", "none"]
LayoutName = Literal["default", "one-pass"]
_PLACEHOLDER = 2**64 - 1  # widest value an xs:unsignedLong size attribute can take
CHUNK_SUFFIX = len(".000000000")  # DSP0243 §5.3 chunk member names: <href>.000000000, ...


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
    ``layout`` (a path target; a stream is always written in one pass, chunked):
    "default" puts the descriptor with every ``ovf:size`` and ``ovf:populatedSize`` and the
    manifest (and certificate) first, then takes the whole-package MD5/xxh128 in a second pass
    over the finished file; "one-pass" writes the descriptor without the sizes of the disks
    first, the manifest (and certificate) at the end (DSP0243 §5.3 allows both), and hashes
    each member as soon as the bytes in front of it are final, while the next one is written
    (:mod:`.seekable` says what that saves and what it cannot).
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
    layout: LayoutName = "default"

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
        if self.layout not in ("default", "one-pass"):
            raise InvalidArgumentError(f"layout {self.layout!r}: use 'default' or 'one-pass'")
        if self.mtime is not None and not 0 <= self.mtime < 8**11:
            raise InvalidArgumentError(f"mtime {self.mtime} is out of the tar range")


class PackageFile(NamedTuple):
    """A member of the package: name, byte size, digests (lower-case hex by algorithm)."""

    name: str
    size: int
    digests: Mapping[str, str]


@dataclass(frozen=True)
class PackageResult:
    """The written package: ``path`` (None when it went to a stream), ``md5``/``xxh128`` of
    the whole .ova, ``files`` in tar order, ``timings`` seconds per stage."""

    path: str | None
    size: int
    md5: str
    xxh128: str
    files: tuple[PackageFile, ...]
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PackagePlan:
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
    iso_paths: Mapping[str, str]  # file id -> local ISO path
    iso_sizes: Mapping[str, int]  # file id -> bytes (CD images and the environment ISO)
    algorithms: tuple[str, ...]  # per-file digests: the manifest algorithm (or none)

    @property
    def front(self) -> int:
        """Bytes of the front region (headers, data, padding) of the seekable layout."""
        rooms = [self.descriptor_room]
        if self.manifest_name is not None:
            rooms.append(self.manifest_room)
        if self.cert_name is not None:
            rooms.append(self.cert_room)
        return sum(tar.BLOCK + r + tar.padding(r) for r in rooms)

    def vmdk_options(self, options: OvaOptions, disk: Disk, href: str) -> VmdkOptions:
        """What the VMDK writer is asked for ``disk``, stored as member ``href``."""
        return VmdkOptions(
            engine=options.engine,
            adapter_type=_vmdk_adapter(self.vm, disk.controller),
            hw_version=_hw_version(options.hardware_version),
            digests=self.algorithms,
            threads=options.threads,
            filename=href,
            compress_level=options.compress_level,
            force_shared=options.force_shared,
        )


@dataclass(frozen=True)
class WrittenFiles:
    """What writing the References files gave: ``files`` in References order (name = href),
    ``sizes`` by file id, ``populated`` sizes and ``capacities`` by disk id."""

    files: tuple[PackageFile, ...]
    sizes: Mapping[str, int]
    populated: Mapping[str, int]
    capacities: Mapping[str, int]


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


def digest_all(data: bytes, algorithms: Iterable[str]) -> dict[str, str]:
    """Hex digests of ``data`` for each algorithm (hashlib names, or xxh128)."""
    out: dict[str, str] = {}
    for name in algorithms:
        if name == "xxh128":
            out[name] = xxhash.xxh128_hexdigest(data)
        else:
            out[name] = hashlib.new(name, data).hexdigest()
    return out


def _chunked(layout: PackageLayout, vm_name: str, chunk_size: int) -> PackageLayout:
    """The streaming layout: disks declare ``ovf:chunkSize``; when a chunk name would not fit the
    100-byte ustar name field, the base of every member name is shortened (the VM and its
    VirtualSystem id stay as they are)."""
    if any(len(f.href) + CHUNK_SUFFIX > tar.MAX_NAME for f in layout.files):
        short = safe_basename(vm_name, tar.MAX_NAME - CHUNK_SUFFIX - len("-disk9999.vmdk"))

        def moved(f: FileRef) -> FileRef:
            return replace(f, href=short + f.href[len(layout.base) :])

        layout = replace(
            layout,
            base=short,
            disks=tuple(replace(d, file=moved(d.file)) for d in layout.disks),
            isos=tuple(replace(i, file=moved(i.file)) for i in layout.isos),
            env_iso=moved(layout.env_iso) if layout.env_iso is not None else None,
        )
    return replace(
        layout,
        disks=tuple(replace(d, file=replace(d.file, chunk_size=chunk_size)) for d in layout.disks),
    )


def plan_package(
    vm: VirtualMachine,
    options: OvaOptions,
    iso_sizes: Mapping[str, int],
    *,
    chunk_size: int | None = None,
) -> PackagePlan:
    """Names, ISO media and the room of the front members.

    ``iso_sizes``: byte size of each CD image the package carries, by its path (the caller
    measures them: :func:`ovfkit.ova.iso.check_iso_image`). ``chunk_size``: plan the streaming
    layout (disks in ``ovf:chunkSize`` chunks, names short enough for the chunk suffix).
    """
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
    if chunk_size is not None:
        layout = _chunked(layout, vm.name, chunk_size)
    paths: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for iso in layout.isos:
        cd = next(c for c in vm.cd_drives if c.id == iso.cd_id)
        if cd.iso is None or cd.iso not in iso_sizes:
            raise InvalidArgumentError(f"CD drive {cd.id!r}: the size of its ISO is not known")
        paths[iso.file.id] = cd.iso
        sizes[iso.file.id] = iso_sizes[cd.iso]
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
        sizes[layout.env_iso.id] = len(env_iso)
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
    return PackagePlan(
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
        iso_paths=paths,
        iso_sizes=sizes,
        algorithms=algorithms,
    )


def build_package_descriptor(
    plan: PackagePlan,
    sizes: Mapping[str, int],
    populated: Mapping[str, int],
    capacities: Mapping[str, int],
    *,
    pad: bool = False,
) -> bytes:
    """The descriptor with the File sizes (by file id), populated sizes and capacities (by disk
    id) known so far; the others are left out (optional attributes, DSP0243 §7.1, §9.1) or
    taken from the model. ``pad``: grow it to its reserved room (seekable layout)."""
    vm = plan.vm
    if capacities:
        disks = tuple(replace(d, capacity=capacities.get(d.id, d.capacity)) for d in vm.disks)
        vm = replace(vm, disks=disks)
    layout = plan.layout.with_sizes(sizes, populated)
    descriptor = build_descriptor(vm, plan.descriptor_options, layout)
    return pad_descriptor(descriptor, plan.descriptor_room) if pad else descriptor


def manifest_members(
    plan: PackagePlan, options: OvaOptions, entries: Iterable[tuple[str, str]]
) -> list[tuple[str, bytes]]:
    """(name, bytes) of the manifest listing ``entries`` (member name, digest of the manifest
    algorithm) and of the certificate signing it; empty without a manifest."""
    if plan.manifest_name is None or options.manifest == "none":
        return []
    manifest = encode_manifest(options.manifest, entries)
    out = [(plan.manifest_name, manifest)]
    if options.signer is not None and plan.cert_name is not None:
        out.append((plan.cert_name, options.signer.sign(plan.manifest_name, manifest)))
    return out


def manifest_files(
    plan: PackagePlan, options: OvaOptions, files: Iterable[PackageFile]
) -> list[tuple[PackageFile, bytes]]:
    """The manifest listing ``files`` (each by its digest of the manifest algorithm) and the
    certificate signing it, each with its PackageFile; empty without a manifest."""
    if options.manifest == "none":
        return []
    entries = [(f.name, f.digests[options.manifest]) for f in files]
    return [
        (PackageFile(name, len(data), digest_all(data, plan.algorithms)), data)
        for name, data in manifest_members(plan, options, entries)
    ]
