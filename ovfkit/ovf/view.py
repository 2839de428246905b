"""What a descriptor carries of a VM: the mapping rules the writer follows and the reader
inverts, and :func:`descriptor_view`, the VM a reader gets back from what was written."""

from __future__ import annotations

import re
from dataclasses import replace

from .. import limits
from ..errors import InvalidArgumentError
from ..model import (
    CdDrive,
    Controller,
    ControllerType,
    Disk,
    GuestOs,
    Network,
    RawXml,
    VirtualMachine,
)
from .layout import FileRef, PackageLayout, plan_layout
from .options import DescriptorOptions

__all__ = [
    "boot_ranks",
    "check_vm",
    "controller_ids",
    "default_controller_subtype",
    "descriptor_view",
    "infer_architecture",
    "networks_of",
    "ordered_extra",
    "valid_units",
    "written_vm",
]


_DEFAULT_SUBTYPE = {
    # VMware's defaults; an IDE controller needs none (ovftool writes PIIX4 only sometimes).
    ControllerType.SCSI: "lsilogic",
    ControllerType.SATA: "vmware.sata.ahci",
    ControllerType.NVME: "vmware.nvme.controller",
}


def default_controller_subtype(ctype: ControllerType) -> str | None:
    """The rasd:ResourceSubType written for a controller whose ``subtype`` is None."""
    return _DEFAULT_SUBTYPE.get(ctype)


def infer_architecture(guest: GuestOs) -> str:
    """The architecture an OVF reader infers: descriptors have no architecture field, only the
    guest OS (vSphere ids of Arm guests start with ``arm-``; 32-bit ids lack ``64``)."""
    vid = guest.vmware_id.lower()
    if vid.startswith("arm-") or "arm64" in vid or "aarch64" in vid:
        return "aarch64"
    if vid and "64" not in vid:
        return "i686"
    return "x86_64"


def valid_units(ctype: ControllerType) -> range | tuple[int, ...]:
    if ctype is ControllerType.SCSI:
        # 16 target ids, 7 is the initiator (VMware: "unit 7 is reserved for the controller").
        return tuple(u for u in range(16) if u != 7)
    return range(ctype.max_units)


def check_vm(vm: VirtualMachine) -> None:
    """Reject what no descriptor can express, or no importer would take (the caps of
    :mod:`ovfkit.limits`), naming the field (SYS.1007)."""
    if not vm.name.strip():
        raise InvalidArgumentError("VM name is empty")
    if len(vm.name) > limits.MAX_NAME:
        raise InvalidArgumentError(
            f"VM name is {len(vm.name)} characters long; ZStack names hold at most"
            f" {limits.MAX_NAME}"
        )
    for field, value in (("vcpus", vm.vcpus), ("cores_per_socket", vm.cores_per_socket)):
        if not 1 <= value <= limits.MAX_VCPUS:
            raise InvalidArgumentError(
                f"{field} must be 1 to {limits.MAX_VCPUS} (ZStack's cpuNum range), not {value}"
            )
    if not 1 <= vm.memory_mib <= limits.MAX_MEMORY_MIB:
        raise InvalidArgumentError(
            f"memory_mib must be 1 to {limits.MAX_MEMORY_MIB} (24 TiB, vSphere's largest VM),"
            f" not {vm.memory_mib}"
        )
    for what, count, most in (
        ("NICs", len(vm.nics), limits.MAX_NICS),
        ("networks", len(vm.networks), limits.MAX_NETWORKS),
        ("disks", len(vm.disks), limits.MAX_DISKS),
        ("disks and CD drives", len(vm.disks) + len(vm.cd_drives), limits.MAX_STORAGE_DEVICES),
        ("storage controllers", len(vm.controllers), limits.MAX_CONTROLLERS),
    ):
        if count > most:
            raise InvalidArgumentError(
                f"VM {vm.name!r} has {count} {what}; a VM can carry at most {most}"
            )
    if not 0 <= vm.guest_os.cim_id <= 0xFFFF:
        raise InvalidArgumentError(
            f"guest_os.cim_id {vm.guest_os.cim_id} is not a CIM OSType (0..65535, DSP8023)"
        )
    ids = [c.id for c in vm.controllers]
    if len(set(ids)) != len(ids):
        raise InvalidArgumentError(f"duplicate controller ids in VM {vm.name!r}: {ids}")
    used: set[tuple[str, int]] = set()
    devices: list[tuple[str, str, int]] = [  # (what, controller id, unit)
        *((f"disk {d.id!r}", d.controller, d.unit) for d in vm.disks),
        *((f"CD drive {c.id!r}", c.controller, c.unit) for c in vm.cd_drives),
    ]
    for what, ctrl_id, unit in devices:
        ctrl = vm.controller(ctrl_id)
        if unit not in valid_units(ctrl.type):
            raise InvalidArgumentError(
                f"{what}: unit {unit} is not a valid {ctrl.type.value} unit of controller "
                f"{ctrl_id!r} (valid: {list(valid_units(ctrl.type))})"
            )
        if (ctrl_id, unit) in used:
            raise InvalidArgumentError(f"{what}: unit {unit} of controller {ctrl_id!r} is taken")
        used.add((ctrl_id, unit))
    for d in vm.disks:
        if d.capacity is not None and d.capacity < 0:
            raise InvalidArgumentError(f"disk {d.id!r}: negative capacity {d.capacity}")
        if d.capacity is not None and d.capacity > limits.UNSIGNED_LONG_MAX:  # placeholders
            raise InvalidArgumentError(
                f"disk {d.id!r}: capacity {d.capacity} is over {limits.UNSIGNED_LONG_MAX} bytes"
            )


def _attach_env_iso(vm: VirtualMachine, layout: PackageLayout) -> tuple[VirtualMachine, str]:
    """Put the OVF environment ISO in the first CD drive that carries no packed ISO, else in a
    new drive on the first free IDE unit, then SATA unit; else on a new IDE controller while
    there are fewer than two (VMware has IDE buses 0 and 1 only), else a new SATA controller.
    Returns the VM as written and the id of the drive carrying the environment."""
    for cd in vm.cd_drives:
        if layout.iso_file(cd.id) is None:
            return vm, cd.id
    taken = {(d.controller, d.unit) for d in vm.disks} | {
        (c.controller, c.unit) for c in vm.cd_drives
    }
    cd_id = "ovf-env"
    while any(c.id == cd_id for c in vm.cd_drives):
        cd_id += "_"
    for ctype in (ControllerType.IDE, ControllerType.SATA):
        for ctrl in vm.controllers:
            if ctrl.type is ctype:
                for unit in valid_units(ctype):
                    if (ctrl.id, unit) not in taken:
                        cd = CdDrive(cd_id, ctrl.id, unit)
                        return replace(vm, cd_drives=(*vm.cd_drives, cd)), cd_id
    ctrl_id = "ovf-env-controller"
    while any(c.id == ctrl_id for c in vm.controllers):
        ctrl_id += "_"
    ide_buses = [c.bus_number for c in vm.controllers if c.type is ControllerType.IDE]
    if len(ide_buses) < 2:
        bus = min({0, 1} - set(ide_buses))
        ctrl = Controller(ctrl_id, ControllerType.IDE, None, bus)
    else:
        sata_buses = [c.bus_number for c in vm.controllers if c.type is ControllerType.SATA]
        ctrl = Controller(ctrl_id, ControllerType.SATA, None, 1 + max(sata_buses, default=-1))
    return (
        replace(
            vm,
            controllers=(*vm.controllers, ctrl),
            cd_drives=(*vm.cd_drives, CdDrive(cd_id, ctrl_id, 0)),
        ),
        cd_id,
    )


def written_vm(
    vm: VirtualMachine, options: DescriptorOptions, layout: PackageLayout
) -> tuple[VirtualMachine, dict[str, FileRef]]:
    """The VM as the descriptor shows it, and the file each CD drive holds."""
    cd_files = {cd.id: f for cd in vm.cd_drives if (f := layout.iso_file(cd.id)) is not None}
    if options.ovf_env and layout.env_iso is not None:
        vm, env_cd = _attach_env_iso(vm, layout)
        cd_files[env_cd] = layout.env_iso
    return vm, cd_files


def boot_ranks(vm: VirtualMachine) -> dict[tuple[str, str], int]:
    """Dense 1-based boot ranks: by boot_order, disks before CD drives on ties, then model
    order. Keys are ("disk"|"cd", id)."""
    cands: list[tuple[int, int, int, tuple[str, str]]] = []
    for i, d in enumerate(vm.disks):
        if d.boot_order is not None:
            cands.append((d.boot_order, 0, i, ("disk", d.id)))
    for i, c in enumerate(vm.cd_drives):
        if c.boot_order is not None:
            cands.append((c.boot_order, 1, i, ("cd", c.id)))
    return {key: rank for rank, (*_, key) in enumerate(sorted(cands), 1)}


def controller_ids(vm: VirtualMachine) -> dict[str, str]:
    """Model controller id -> the id a reader gives it: type and ordinal (``scsi0``, ``ide1``)."""
    counts: dict[ControllerType, int] = {}
    out: dict[str, str] = {}
    for c in vm.controllers:
        n = counts.get(c.type, 0)
        counts[c.type] = n + 1
        out[c.id] = f"{c.type.value}{n}"
    return out


def networks_of(vm: VirtualMachine) -> tuple[Network, ...]:
    """Declared networks plus any a NIC connects to without a declaration (DSP0243 1.1 §9.2: a
    Connection names a Network of the NetworkSection)."""
    nets = list(vm.networks)
    names = {n.name for n in nets}
    for nic in vm.nics:
        if nic.network not in names:
            names.add(nic.network)
            nets.append(Network(nic.network))
    return tuple(nets)


def descriptor_view(
    vm: VirtualMachine,
    options: DescriptorOptions | None = None,
    layout: PackageLayout | None = None,
) -> VirtualMachine:
    """Exactly what a descriptor built from ``vm`` carries: ``parse_descriptor(build_descriptor(
    vm, options, layout)) == descriptor_view(vm, options, layout)`` for every valid ``vm``.

    Kept as is: name, description, vcpus, cores per socket, memory, firmware, secure boot,
    guest OS, controller types and bus numbers, disk capacity/controller/unit, CD drive
    controller/unit, NIC adapter/network/MAC/connected, networks, products with properties,
    annotation, EULAs. Rewritten:

    - ids are the reader's: controllers ``<type><n>`` per type in order, disks ``vmdisk<n>``, CD
      drives ``cd<n>``, NICs ``nic<n>`` (descriptors only have numeric InstanceIDs);
    - a controller with subtype None gets the default written (:func:`default_controller_subtype`);
    - disk ``name`` "" becomes the ElementName written, ``Hard disk <n>``; disk ``source`` is None
      (the data is in the package, not in the descriptor);
    - CD ``iso`` is the href of the packed ISO file, None when not packed; with ``ovf_env`` the
      environment ISO occupies the first empty drive, or a new drive (see :func:`written_vm`);
    - boot order: OVF 2.0 keeps it as dense ranks 1..n (BootDeviceSection of DSP0243 2.0);
      OVF 1.x has no schema-valid place for it (vmw:BootOrderSection is not a member of the
      ovf:Section substitution group), so it is None and importers boot by bus order;
    - NICs whose network is not declared add a Network; architecture is
      :func:`infer_architecture` of the guest OS;
    - extra (RawXml) comes back in :func:`ordered_extra` order with ``item:`` targets renamed
      with their devices (dropped when the device does not exist); the fragments themselves
      come back as the reader spells them (fixed prefixes, no layout whitespace, the OVF
      namespace of the written version).
    """
    options = options or DescriptorOptions()
    layout = layout or plan_layout(vm, options)
    vm, cd_files = written_vm(vm, options, layout)
    cids = controller_ids(vm)
    ranks = boot_ranks(vm) if options.ovf_version == "2.0" else {}
    disks = tuple(
        Disk(
            id=f"vmdisk{n}",
            capacity=d.capacity,
            controller=cids[d.controller],
            unit=d.unit,
            source=None,
            boot_order=ranks.get(("disk", d.id)),
            name=d.name or f"Hard disk {n}",
        )
        for n, d in enumerate(vm.disks, 1)
    )
    cds = tuple(
        CdDrive(
            id=f"cd{n}",
            controller=cids[c.controller],
            unit=c.unit,
            iso=cd_files[c.id].href if c.id in cd_files else None,
            boot_order=ranks.get(("cd", c.id)),
        )
        for n, c in enumerate(vm.cd_drives, 1)
    )
    view = replace(
        vm,
        architecture=infer_architecture(vm.guest_os),
        controllers=tuple(
            replace(c, id=cids[c.id], subtype=c.subtype or default_controller_subtype(c.type))
            for c in vm.controllers
        ),
        disks=disks,
        cd_drives=cds,
        nics=tuple(replace(nic, id=f"nic{n}") for n, nic in enumerate(vm.nics, 1)),
        networks=networks_of(vm),
        extra=tuple(
            replace(r, where=where)
            for r in vm.extra
            if (where := _item_target(r.where, vm, cids)) is not None
        ),
    )
    return replace(view, extra=ordered_extra(view))


_ITEM_RE = re.compile(r"<(?:[\w.-]+:)?(?:Item|EthernetPortItem|StorageItem)[\s/>]")


def ordered_extra(vm: VirtualMachine) -> tuple[RawXml, ...]:
    """``vm.extra`` in the order a reader finds it: envelope sections, VirtualSystem sections,
    hardware Items, other hardware elements, then Item vendor children by device (CPU, memory,
    controllers, CD drives, disks, NICs in model order); document order within each group."""
    devices = {
        "cpu": (0, 0),
        "memory": (1, 0),
        **{f"controller:{c.id}": (2, i) for i, c in enumerate(vm.controllers)},
        **{f"cd:{c.id}": (3, i) for i, c in enumerate(vm.cd_drives)},
        **{f"disk:{d.id}": (4, i) for i, d in enumerate(vm.disks)},
        **{f"nic:{n.id}": (5, i) for i, n in enumerate(vm.nics)},
    }

    def key(r: RawXml) -> tuple[int, int, int]:
        if r.where == "envelope":
            return (0, 0, 0)
        if r.where == "virtual-system":
            return (1, 0, 0)
        if r.where == "hardware":
            return (2, 0 if _ITEM_RE.match(r.xml) else 1, 0)
        return (3, *devices.get(r.where.removeprefix("item:"), (9, 0)))

    return tuple(sorted(vm.extra, key=key))


def _item_target(where: str, vm: VirtualMachine, cids: dict[str, str]) -> str | None:
    """``where`` of a RawXml after the reader's renaming; None for an ``item:`` target that
    names no device of ``vm`` (the writer drops those)."""
    if not where.startswith("item:") or where in ("item:cpu", "item:memory"):
        return where
    kind, _, dev = where.removeprefix("item:").partition(":")
    ids: dict[str, str] = {}
    if kind == "controller":
        ids = cids
    elif kind == "disk":
        ids = {d.id: f"vmdisk{n}" for n, d in enumerate(vm.disks, 1)}
    elif kind == "cd":
        ids = {c.id: f"cd{n}" for n, c in enumerate(vm.cd_drives, 1)}
    elif kind == "nic":
        ids = {x.id: f"nic{n}" for n, x in enumerate(vm.nics, 1)}
    return f"item:{kind}:{ids[dev]}" if dev in ids else None
