"""Which package member carries which disk or ISO, and the members' names (pure).

Member names follow the tar rules of the OVA (docs/interop-rules.md "Tar container"): flat,
ASCII, at most 100 bytes (ustar ``name`` field, no PAX/GNU long names), unique. DSP0243 1.1 §7.1
makes ``ovf:href`` a relative URI, so the names also avoid ``/``, ``..``, spaces and anything a
URI would escape.

The packer gets a layout from :func:`plan_layout`, writes the members, fills in the sizes with
:meth:`PackageLayout.with_sizes` (or ``dataclasses.replace``) and passes the layout back to
``build_descriptor`` so that ``ovf:size`` and ``ovf:populatedSize`` are exact.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError
from ..model import VirtualMachine

if TYPE_CHECKING:
    from .options import DescriptorOptions

__all__ = ["DiskFile", "FileRef", "IsoFile", "PackageLayout", "plan_layout", "safe_basename"]

#: ustar ``name`` field (POSIX.1-1988); longer names need PAX/GNU headers, which break virt-v2v.
MAX_MEMBER_NAME = 100
#: longest suffix plan_layout appends to the base name: "-disk" + 4 digits + ".vmdk"
_LONGEST_SUFFIX = len("-disk9999.vmdk")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class FileRef:
    """A ``References/File``: ``ovf:id``, ``ovf:href``, ``ovf:size`` and ``ovf:chunkSize``.

    ``size`` is None until the packer knows the member's exact byte count (DSP0243 1.1 §7.1: the
    attribute is optional, but VMware checks it when present, so it is never guessed).
    """

    id: str
    href: str
    size: int | None = None
    chunk_size: int | None = None


@dataclass(frozen=True)
class DiskFile:
    """The file carrying model disk ``disk_id`` and the disk's populated size, when known."""

    disk_id: str
    file: FileRef
    populated_size: int | None = None


@dataclass(frozen=True)
class IsoFile:
    """The ISO file a CD drive (``cd_id``) holds; two drives with the same ISO share a file."""

    cd_id: str
    file: FileRef


@dataclass(frozen=True)
class PackageLayout:
    """The File references of one package.

    ``base`` names the descriptor, manifest and certificate (``<base>.ovf`` ...). ``env_iso``
    is the OVF environment ISO (DSP0243 1.1 §11, DSP8027), carried by an empty CD drive.
    """

    base: str
    disks: tuple[DiskFile, ...] = ()
    isos: tuple[IsoFile, ...] = ()
    env_iso: FileRef | None = None

    @property
    def files(self) -> tuple[FileRef, ...]:
        """Distinct files in ``References`` order: disks, ISOs, then the environment ISO."""
        out: dict[str, FileRef] = {}
        for f in (
            *(d.file for d in self.disks),
            *(i.file for i in self.isos),
            *((self.env_iso,) if self.env_iso is not None else ()),
        ):
            out.setdefault(f.id, f)
        return tuple(out.values())

    def disk_file(self, disk_id: str) -> DiskFile | None:
        for d in self.disks:
            if d.disk_id == disk_id:
                return d
        return None

    def iso_file(self, cd_id: str) -> FileRef | None:
        for i in self.isos:
            if i.cd_id == cd_id:
                return i.file
        return None

    def with_sizes(
        self,
        sizes: Mapping[str, int],
        populated: Mapping[str, int] | None = None,
    ) -> PackageLayout:
        """A copy with ``ovf:size`` set from ``sizes`` (file id -> bytes) and populated sizes
        from ``populated`` (disk id -> bytes); ids not mentioned keep their values."""
        populated = populated or {}

        def sized(f: FileRef) -> FileRef:
            return replace(f, size=sizes[f.id]) if f.id in sizes else f

        return replace(
            self,
            disks=tuple(
                replace(
                    d,
                    file=sized(d.file),
                    populated_size=populated.get(d.disk_id, d.populated_size),
                )
                for d in self.disks
            ),
            isos=tuple(replace(i, file=sized(i.file)) for i in self.isos),
            env_iso=sized(self.env_iso) if self.env_iso is not None else None,
        )


def safe_basename(vm_name: str, max_len: int = MAX_MEMBER_NAME - _LONGEST_SUFFIX) -> str:
    """An ASCII file base name from a VM name: deterministic, never empty, no ``/``, no ``..``,
    no control characters, at most ``max_len`` bytes.

    Accents are folded (NFKD); other characters become ``-``. When anything had to be replaced
    or cut, 8 hex digits of the name's SHA-256 are appended so that different VM names keep
    different package names (``测试`` -> ``vm-6c7e5f2a``).
    """
    if max_len < 12:
        raise InvalidArgumentError(f"max_len {max_len} is too small for a member base name")
    folded = unicodedata.normalize("NFKD", vm_name).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE.sub("-", folded)
    cleaned = re.sub(r"\.{2,}", ".", cleaned).strip(".-_")
    cleaned = re.sub(r"-{2,}", "-", cleaned)
    if cleaned and cleaned == vm_name and len(cleaned) <= max_len:
        return cleaned
    digest = hashlib.sha256(vm_name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stem = cleaned[: max_len - 9].rstrip(".-_") or "vm"
    return f"{stem}-{digest}"


def plan_layout(vm: VirtualMachine, options: DescriptorOptions | None = None) -> PackageLayout:
    """Member names for ``vm``'s disks (``<base>-disk<n>.vmdk``, n from 1 in model order), the
    ISOs in its CD drives when ``options.include_iso`` (``<base>-iso<n>.iso``, one per distinct
    ISO path) and the OVF environment ISO when ``options.ovf_env`` (``<base>-ovf-env.iso``).

    File ids are ``file<n>`` in References order (VMware's convention). Sizes are left None.
    """
    include_iso = options.include_iso if options is not None else False
    ovf_env = options.ovf_env if options is not None else False
    if len(vm.disks) > 9999:
        raise InvalidArgumentError(f"VM {vm.name!r} has {len(vm.disks)} disks; at most 9999")
    base = safe_basename(vm.name)
    counter = 0

    def next_id() -> str:
        nonlocal counter
        counter += 1
        return f"file{counter}"

    disks = tuple(
        DiskFile(d.id, FileRef(next_id(), f"{base}-disk{n}.vmdk"))
        for n, d in enumerate(vm.disks, 1)
    )
    isos: list[IsoFile] = []
    if include_iso:
        by_path: dict[str, FileRef] = {}
        for cd in vm.cd_drives:
            if cd.iso is None:
                continue
            if cd.iso not in by_path:
                by_path[cd.iso] = FileRef(next_id(), f"{base}-iso{len(by_path) + 1}.iso")
            isos.append(IsoFile(cd.id, by_path[cd.iso]))
    env = FileRef(next_id(), f"{base}-ovf-env.iso") if ovf_env else None
    return PackageLayout(base=base, disks=disks, isos=tuple(isos), env_iso=env)
