"""What ``ovfkit export``, ``descriptor`` and ``inventory`` read: a VM from one of three inputs,
told apart by their content (or named with ``--from``):

- ``vm``: ovfkit's neutral VM JSON (``"format": "ovfkit.vm/1"``, :mod:`ovfkit.model_json`);
- ``ovf``: an OVF descriptor (XML) whose files sit beside it: a re-pack. Its disks are read
  from those files (qemu-img reads VMDK and the other formats), its ISO images packed again;
- ``zstack``: a ZStack VmInstanceInventory (a QueryVmInstance reply or a bare inventory).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..errors import InvalidArgumentError
from ..model import DiskSource, VirtualMachine
from ._files import read_input

__all__ = [
    "INPUT_KINDS",
    "InputKind",
    "LoadedVm",
    "add_input_arguments",
    "add_zstack_arguments",
    "detect_kind",
    "load_vm",
]

InputKind = Literal["vm", "ovf", "zstack"]
INPUT_KINDS: tuple[InputKind, ...] = ("vm", "ovf", "zstack")


@dataclass(frozen=True)
class LoadedVm:
    """The VM read, the kind of input it came from and, for ZStack, the inventory itself."""

    vm: VirtualMachine
    kind: InputKind
    zstack: Mapping[str, Any] | None = None


def add_input_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The INPUT argument and ``--from``."""
    parser.add_argument(
        "input", metavar="INPUT", nargs=None if required else "?",
        help="neutral VM JSON, .ovf (its files beside it) or ZStack inventory; - for stdin",
    )
    parser.add_argument(
        "--from", dest="input_kind", choices=INPUT_KINDS, default=None,
        help="what INPUT is (default: told from its content)",
    )


def add_zstack_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The group of options that apply to a ZStack inventory only (its --system-tag here)."""
    group = parser.add_argument_group(
        "ZStack inventory input", "options for a ZStack VmInstanceInventory INPUT only"
    )
    group.add_argument("--system-tag", action="append", default=[], metavar="TAG",
                       help="a ZStack system tag of the VM, e.g. bootMode::UEFI (repeatable)")
    return group


def detect_kind(data: bytes) -> InputKind:
    """XML is an OVF descriptor; a JSON object with ovfkit's ``format`` is the neutral VM; any
    other JSON is taken for a ZStack inventory (whose own checks then name what is wrong)."""
    from ..model_json import FORMAT

    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<"):
        return "ovf"
    doc = _json(data, "input")
    if isinstance(doc, dict) and "format" in doc:
        if doc["format"] != FORMAT:
            raise InvalidArgumentError(
                f"input format {doc['format']!r} is not {FORMAT!r} (ovfkit inventory --schema)"
            )
        return "vm"
    return "zstack"


def _json(data: bytes, what: str) -> Any:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"{what} is not UTF-8 text: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidArgumentError(
            f"{what} is not JSON (a VM or a ZStack inventory) nor XML (an OVF): {exc}"
        ) from None
    except RecursionError:  # 200,000 nested "[" (issue 12 #5)
        raise InvalidArgumentError(f"{what} nests JSON too deeply") from None


def load_vm(
    path: str, kind: InputKind | None = None, *, system_tags: tuple[str, ...] = ()
) -> LoadedVm:
    """Read ``path`` (``-`` for stdin; an .ovf must be a file, its disks are beside it)."""
    data = read_input(path, what="input")
    kind = kind or detect_kind(data)
    if system_tags and kind != "zstack":
        raise InvalidArgumentError("--system-tag applies to a ZStack inventory only")
    if kind == "vm":
        from ..model_json import vm_from_json

        return LoadedVm(vm_from_json(data), "vm")
    if kind == "ovf":
        return LoadedVm(_repack_source(path), "ovf")
    from ..zstack import vm_from_zstack
    from ..zstack.adapter import decode_inventory
    from ..zstack.catalog import unwrap_vm_inventory

    doc = decode_inventory(data)  # the inventory's own caps (size, numbers, nesting)
    vm = vm_from_zstack(doc, system_tags=list(system_tags))  # checks the inventory first
    return LoadedVm(vm, "zstack", unwrap_vm_inventory(doc))


def _repack_source(path: str) -> VirtualMachine:
    """The VM of an .ovf with each disk's source and each CD's ISO set to the files beside it.

    Only whole, uncompressed files can be read in place: a chunked File (``ovf:chunkSize``) or a
    compressed one is refused, as is a File whose size differs from its ``ovf:size``."""
    from ..ova.reader import open_package

    if path == "-":
        raise InvalidArgumentError("an OVF descriptor is read from a file: its disks sit beside it")
    package = open_package(path)
    parsed = package.parsed
    formats = dict(parsed.formats)

    def local_file(href: str, size: int | None, what: str) -> str:
        member = package.member(href)
        if member is None:
            chunked = package.member(f"{href}.000000000") is not None
            raise InvalidArgumentError(
                f"{what} {href!r} is chunked (ovf:chunkSize): join the chunks first"
                if chunked else f"{what} {href!r} is not beside {os.path.basename(path)}"
            )
        if size is not None and size != member.size:
            raise InvalidArgumentError(
                f"{what} {href!r} is {member.size} bytes; the descriptor says {size}"
            )
        assert member.path is not None  # an .ovf opened by path: its files are paths beside it
        return member.path

    disks = []
    for disk in package.vm.disks:
        df = parsed.layout.disk_file(disk.id)
        if df is None:
            raise InvalidArgumentError(f"disk {disk.id!r} of {path!r} has no file to read")
        fmt = "vmdk" if "vmdk" in formats.get(disk.id, "").lower() else None
        source = DiskSource(local_file(df.file.href, df.file.size, "disk file"), fmt)
        disks.append(replace(disk, source=source))
    cds = []
    for cd in package.vm.cd_drives:
        iso = parsed.layout.iso_file(cd.id)
        if iso is None:
            cds.append(cd)
        else:
            cds.append(replace(cd, iso=local_file(iso.href, iso.size, "ISO file")))
    return replace(package.vm, disks=tuple(disks), cd_drives=tuple(cds))
