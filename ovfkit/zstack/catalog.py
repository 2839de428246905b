"""The VM catalog: where ``vmUuid`` is resolved to a VmInstanceInventory.

A resolver is any ``Callable[[str], Mapping | None]`` (None: no such VM). The embedded default,
:class:`FolderCatalog`, keeps one inventory per file in ``<data>/vms/<uuid>.json``; a ZStack
deployment would pass a resolver that calls QueryVmInstance instead.

The inventory is untrusted: :func:`confine_paths` refuses (SYS.1007) any volume or ISO path that,
after resolving symlinks (realpath), is not inside one of the configured storage roots, and gives
back the model with the resolved paths so the writer opens exactly what was checked.
:func:`confine_images` then holds every file qemu would open for a disk (backing chain, qcow2
external data file) to the same rule: an image inside a root may name any file as its backing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, NotFoundError, OvfkitIOError
from ..model import VirtualMachine
from .inventory import is_zstack_uuid

__all__ = [
    "VMS_DIR",
    "FolderCatalog",
    "VmResolver",
    "confine_images",
    "confine_paths",
    "read_vm_inventory",
    "unwrap_vm_inventory",
]

VmResolver = Callable[[str], Mapping[str, Any] | None]

VMS_DIR = "vms"


def unwrap_vm_inventory(doc: Any) -> Mapping[str, Any]:
    """A bare VmInstanceInventory, ``{"inventory": vm}`` or ``{"inventories": [vm]}``."""
    if isinstance(doc, Mapping):
        if "inventories" in doc:
            items = doc["inventories"]
            if not isinstance(items, list) or len(items) != 1:
                raise InvalidArgumentError("inventories must hold exactly one VmInstanceInventory")
            doc = items[0]
        elif "inventory" in doc:
            doc = doc["inventory"]
    if not isinstance(doc, Mapping):
        raise InvalidArgumentError("a VmInstanceInventory must be a JSON object")
    if not is_zstack_uuid(doc.get("uuid")):
        raise InvalidArgumentError(
            f"VmInstanceInventory.uuid must be a ZStack uuid, not {doc.get('uuid')!r}"
        )
    return doc


def read_vm_inventory(inventory: Mapping[str, Any] | str | bytes) -> Mapping[str, Any]:
    """The VmInstanceInventory a catalog registers: JSON text or a parsed document, unwrapped."""
    if isinstance(inventory, str | bytes):
        try:
            inventory = json.loads(inventory)
        except ValueError as exc:
            raise InvalidArgumentError(f"the inventory is not valid JSON: {exc}") from None
    return unwrap_vm_inventory(inventory)


class FolderCatalog:
    """``<data>/vms/<uuid>.json``; callable as a :data:`VmResolver`."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.folder = Path(data_dir) / VMS_DIR

    def _file(self, vm_uuid: str) -> Path:
        if not is_zstack_uuid(vm_uuid):
            raise InvalidArgumentError(f"{vm_uuid!r} is not a ZStack uuid")
        return self.folder / f"{vm_uuid}.json"

    def __call__(self, vm_uuid: str) -> Mapping[str, Any] | None:
        if not is_zstack_uuid(vm_uuid):
            return None
        try:
            text = self._file(vm_uuid).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OvfkitIOError(f"cannot read catalog entry {vm_uuid}: {exc.strerror}") from None
        try:
            return unwrap_vm_inventory(json.loads(text))
        except ValueError as exc:
            raise InvalidArgumentError(f"catalog entry {vm_uuid} is not JSON: {exc}") from None

    def add(self, inventory: Mapping[str, Any] | str | bytes) -> str:
        """Register (or replace) a VM; returns its uuid. The file is written atomically."""
        vm = read_vm_inventory(inventory)
        uuid = str(vm["uuid"])
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{uuid}-", suffix=".json", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(vm, f, indent=1)
            os.replace(tmp, self._file(uuid))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return uuid

    def remove(self, vm_uuid: str) -> None:
        try:
            self._file(vm_uuid).unlink()
        except FileNotFoundError:
            raise NotFoundError(f"VM {vm_uuid} is not in the catalog {self.folder}") from None

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.json")):
            vm = self(path.stem)
            if vm is not None:
                yield vm

    def list(self) -> list[Mapping[str, Any]]:
        return list(self)


def _inside(path: str, roots: Sequence[str]) -> bool:
    return any(os.path.commonpath([path, root]) == root for root in roots)


def confine_paths(vm: VirtualMachine, roots: Sequence[str]) -> VirtualMachine:
    """Resolve every disk and ISO path with realpath and require it under a storage root.

    Raises InvalidArgumentError (SYS.1007) naming the path otherwise, including when no root is
    configured at all. Returns the VM with the resolved paths.
    """
    real_roots = [os.path.realpath(r) for r in roots]

    def check(path: str, what: str) -> str:
        if not os.path.isabs(path):
            raise InvalidArgumentError(f"{what} path {path!r} is not absolute")
        real = os.path.realpath(path)
        if not real_roots or not _inside(real, real_roots):
            raise InvalidArgumentError(
                f"{what} path {path!r} is outside the configured storage roots "
                f"({', '.join(roots) or 'none configured'})"
            )
        return real

    disks = tuple(
        d if d.source is None
        else dataclasses.replace(
            d, source=dataclasses.replace(d.source, path=check(d.source.path, f"volume {d.id}"))
        )
        for d in vm.disks
    )
    cds = tuple(
        c if c.iso is None else dataclasses.replace(c, iso=check(c.iso, f"ISO of {c.id}"))
        for c in vm.cd_drives
    )
    return dataclasses.replace(vm, disks=disks, cd_drives=cds)


def confine_images(vm: VirtualMachine, roots: Sequence[str]) -> None:
    """Require every file qemu opens for the VM's disks under a storage root: each layer of the
    backing chain and each qcow2 external data file (``qemu-img info --backing-chain``).

    A qcow2 inside a root whose backing file is ``/etc/shadow`` would otherwise be exported, and
    served for download, with that file's bytes as its disk. Raises InvalidArgumentError naming
    the file; a missing volume is left for the writer to report (NotFoundError).
    """
    from ..disk import check_image  # lazy: the qemu-img edge

    real_roots = [os.path.realpath(r) for r in roots]
    for disk in vm.disks:
        if disk.source is None or not os.path.lexists(disk.source.path):
            continue
        # check_image first refuses a FIFO (qemu-img would wait on it for ever) or an empty
        # image; force_shared: only metadata is read here, the writer still refuses one in use.
        top = check_image(disk.source, force_shared=True)
        for layer in (top, *top.backing_chain):
            files = [("backing file", layer.filename)]
            if layer.data_file:
                # qemu resolves a relative data-file against the image's folder.
                here = os.path.dirname(layer.filename)
                files.append(("external data file", os.path.join(here, layer.data_file)))
            for what, name in files:
                # json:{...} and protocol names (nbd://, http://) are no local file at all.
                local = os.path.isabs(name) and not name.startswith("json:")
                if not local or not _inside(os.path.realpath(name), real_roots):
                    raise InvalidArgumentError(
                        f"volume {disk.id} {disk.source.path!r} reads the {what} {name!r}, "
                        f"which is outside the configured storage roots "
                        f"({', '.join(roots) or 'none configured'})"
                    )
