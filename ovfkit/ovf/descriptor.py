"""The OVF descriptor writer: ``build_descriptor(vm, options, layout) -> bytes`` (pure, lxml).

Sources, cited where a rule is applied:

- DMTF DSP0243 (OVF) 1.1 / 2.0 and the DSP8023 schemas bundled in ``schemas/``.
- ``../shared/notes/interop-rules.md`` "Descriptor": what VMware, VirtualBox, virt-v2v and
  Proxmox actually accept (envelope/1 by default, memory in ``byte * 2^20``, vmx-13, ...).
- VMware ovftool output for the vmw: extensions (``vmw:osType``, ``vmw:CoresPerSocket``,
  ``vmw:Config`` firmware / secure boot, ``vmware.sata.ahci``, ``vmware.cdrom.*``).

The same VM, options and layout always give the same bytes: nothing depends on time, hash
order or the environment. :func:`descriptor_view` says exactly which part of a VM a descriptor
carries (what ``parse_descriptor`` gives back).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal, cast

from lxml import etree

from ..errors import InvalidArgumentError
from ..model import (
    CdDrive,
    Controller,
    ControllerType,
    Disk,
    Firmware,
    GuestOs,
    Network,
    Product,
    VirtualMachine,
)
from . import _ns as ns
from ._ns import q
from .layout import FileRef, PackageLayout, plan_layout

__all__ = [
    "STREAM_OPTIMIZED",
    "DescriptorOptions",
    "build_descriptor",
    "default_controller_subtype",
    "descriptor_view",
    "infer_architecture",
]

#: VMware's disk format URI for streamOptimized VMDK (interop-rules "Descriptor"; DSP0243 §8.3
#: leaves the URI to the vendor).
STREAM_OPTIMIZED = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"

_INVALID_XML_CHARS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class DescriptorOptions:
    """How to write the descriptor.

    ``ovf_version`` "1.0" writes the envelope/1 namespace, the only one virt-v2v and Proxmox read
    (virt-v2v#18); "2.0" writes envelope/2 with EthernetPortItem/StorageItem (DSP0243 2.0 §9.5).
    ``hardware_version`` is vssd:VirtualSystemType; vmx-13 or lower for broad ESXi support.
    ``include_iso``: pack the ISOs of CD drives as files. ``ovf_env``: declare
    ``ovf:transport="iso"`` (DSP0243 §11.1) and carry an OVF environment ISO in a CD drive.
    """

    ovf_version: Literal["1.0", "2.0"] = "1.0"
    hardware_version: str = "vmx-13"
    include_iso: bool = False
    ovf_env: bool = False
    disk_format: str = STREAM_OPTIMIZED

    def __post_init__(self) -> None:
        if self.ovf_version not in ("1.0", "2.0"):
            raise InvalidArgumentError(
                f"ovf_version must be '1.0' or '2.0', not {self.ovf_version!r}"
            )
        if not self.hardware_version or _INVALID_XML_CHARS.search(self.hardware_version):
            raise InvalidArgumentError(f"invalid hardware_version {self.hardware_version!r}")


# ---------------------------------------------------------------------------------------------
# What a descriptor carries
# ---------------------------------------------------------------------------------------------

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


def _valid_units(ctype: ControllerType) -> range | tuple[int, ...]:
    if ctype is ControllerType.SCSI:
        # 16 target ids, 7 is the initiator (VMware: "unit 7 is reserved for the controller").
        return tuple(u for u in range(16) if u != 7)
    return range(ctype.max_units)


def _check_vm(vm: VirtualMachine) -> None:
    """Reject what no descriptor can express, naming the field (SYS.1007)."""
    if not vm.name.strip():
        raise InvalidArgumentError("VM name is empty")
    if vm.vcpus < 1 or vm.cores_per_socket < 1:
        raise InvalidArgumentError(
            f"vcpus ({vm.vcpus}) and cores_per_socket ({vm.cores_per_socket}) must be >= 1"
        )
    if vm.memory_mib < 1:
        raise InvalidArgumentError(f"memory_mib must be >= 1, not {vm.memory_mib}")
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
        if unit not in _valid_units(ctrl.type):
            raise InvalidArgumentError(
                f"{what}: unit {unit} is not a valid {ctrl.type.value} unit of controller "
                f"{ctrl_id!r} (valid: {list(_valid_units(ctrl.type))})"
            )
        if (ctrl_id, unit) in used:
            raise InvalidArgumentError(f"{what}: unit {unit} of controller {ctrl_id!r} is taken")
        used.add((ctrl_id, unit))
    for d in vm.disks:
        if d.capacity < 0:
            raise InvalidArgumentError(f"disk {d.id!r}: negative capacity {d.capacity}")


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
                for unit in _valid_units(ctype):
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


def _written_vm(
    vm: VirtualMachine, options: DescriptorOptions, layout: PackageLayout
) -> tuple[VirtualMachine, dict[str, FileRef]]:
    """The VM as the descriptor shows it, and the file each CD drive holds."""
    cd_files = {cd.id: f for cd in vm.cd_drives if (f := layout.iso_file(cd.id)) is not None}
    if options.ovf_env and layout.env_iso is not None:
        vm, env_cd = _attach_env_iso(vm, layout)
        cd_files[env_cd] = layout.env_iso
    return vm, cd_files


def _boot_ranks(vm: VirtualMachine) -> dict[tuple[str, str], int]:
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


def _controller_ids(vm: VirtualMachine) -> dict[str, str]:
    """Model controller id -> the id a reader gives it: type and ordinal (``scsi0``, ``ide1``)."""
    counts: dict[ControllerType, int] = {}
    out: dict[str, str] = {}
    for c in vm.controllers:
        n = counts.get(c.type, 0)
        counts[c.type] = n + 1
        out[c.id] = f"{c.type.value}{n}"
    return out


def _networks(vm: VirtualMachine) -> tuple[Network, ...]:
    """Declared networks plus any a NIC connects to without a declaration (DSP0243 §9.2: a
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
    annotation, EULAs, extra (RawXml, where the writer puts it back). Rewritten:

    - ids are the reader's: controllers ``<type><n>`` per type in order, disks ``vmdisk<n>``, CD
      drives ``cd<n>``, NICs ``nic<n>`` (descriptors only have numeric InstanceIDs);
    - a controller with subtype None gets the default written (:func:`default_controller_subtype`);
    - disk ``name`` "" becomes the ElementName written, ``Hard disk <n>``; disk ``source`` is None
      (the data is in the package, not in the descriptor);
    - CD ``iso`` is the href of the packed ISO file, None when not packed; with ``ovf_env`` the
      environment ISO occupies the first empty drive (or a new one on an IDE controller);
    - boot order: OVF 2.0 keeps it as dense ranks 1..n (BootDeviceSection, DSP0243 2.0 §9.13);
      OVF 1.x has no schema-valid place for it (vmw:BootOrderSection is not a member of the
      ovf:Section substitution group), so it is None and importers boot by bus order;
    - NICs whose network is not declared add a Network; architecture is
      :func:`infer_architecture` of the guest OS.
    """
    options = options or DescriptorOptions()
    layout = layout or plan_layout(vm, options)
    vm, cd_files = _written_vm(vm, options, layout)
    cids = _controller_ids(vm)
    ranks = _boot_ranks(vm) if options.ovf_version == "2.0" else {}
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
    return replace(
        vm,
        architecture=infer_architecture(vm.guest_os),
        controllers=tuple(
            replace(c, id=cids[c.id], subtype=c.subtype or default_controller_subtype(c.type))
            for c in vm.controllers
        ),
        disks=disks,
        cd_drives=cds,
        nics=tuple(replace(nic, id=f"nic{n}") for n, nic in enumerate(vm.nics, 1)),
        networks=_networks(vm),
    )


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------


@dataclass
class _Item:
    """One hardware Item before serialisation: CIM properties by local name (emitted in
    code-point order, the xs:sequence order of the CIM schemas) and vendor children after."""

    tag: str  # Item | EthernetPortItem | StorageItem
    cim_ns: str
    props: dict[str, str]
    vendor: list[etree._Element] = field(default_factory=list)


def _text(where: str, value: str) -> str:
    bad = _INVALID_XML_CHARS.search(value)
    if bad:
        raise InvalidArgumentError(
            f"{where} contains {bad.group()!r}, which XML 1.0 cannot carry: {value!r}"
        )
    return value


class _Writer:
    def __init__(self, vm: VirtualMachine, options: DescriptorOptions, layout: PackageLayout):
        self.options = options
        self.layout = layout
        self.v2 = options.ovf_version == "2.0"
        self.ovf = ns.OVF2 if self.v2 else ns.OVF1
        self.vm, self.cd_files = _written_vm(vm, options, layout)
        self.raw_hw = [
            _parse_raw(r.xml, f"extra[{i}]", self.ovf)
            for i, r in enumerate(self.vm.extra)
            if r.where == "hardware"
        ]
        # Items kept from a parsed descriptor keep their InstanceIDs; ours avoid them.
        self.taken_ids = {i for el in self.raw_hw if (i := _instance_id(el)) is not None}
        self.next_id = 0
        self.boot_sources: list[tuple[int, str, str, str]] = []

    # helpers --------------------------------------------------------------------------------
    def o(self, local: str) -> str:
        return q(self.ovf, local)

    def sub(self, parent: etree._Element, local: str, text: str | None = None) -> etree._Element:
        el = etree.SubElement(parent, self.o(local))
        if text is not None:
            el.text = text
        return el

    def section(self, parent: etree._Element, local: str, info: str) -> etree._Element:
        el = self.sub(parent, local)
        self.sub(el, "Info", info)
        return el

    def iid(self) -> str:
        while True:
            self.next_id += 1
            if str(self.next_id) not in self.taken_ids:
                return str(self.next_id)

    def vmw_required_false(self, el: etree._Element) -> etree._Element:
        # interop-rules: vendor elements carry ovf:required="false" so that importers which do
        # not know them go on (DSP0243 §9.1).
        el.set(self.o("required"), "false")
        return el

    def vmw_config(self, key: str, value: str) -> etree._Element:
        el = etree.Element(q(ns.VMW, "Config"))
        self.vmw_required_false(el)
        el.set(q(ns.VMW, "key"), key)
        el.set(q(ns.VMW, "value"), value)
        return el

    # document -------------------------------------------------------------------------------
    def build(self) -> bytes:
        vm = self.vm
        # Default namespace = ovf, as VMware and VirtualBox write it.
        nsmap: dict[str | None, str] = {
            None: self.ovf,
            "ovf": self.ovf,
            "cim": ns.CIM,
            "rasd": ns.RASD,
            "vssd": ns.VSSD,
            "vmw": ns.VMW,
            "xsi": ns.XSI,
        }
        if self.v2:
            nsmap |= {"epasd": ns.EPASD, "sasd": ns.SASD, "bootc": ns.BOOTC, "boots": ns.BOOTS}
        env = etree.Element(self.o("Envelope"), nsmap=cast("dict[str, str]", nsmap))
        env.set(self.o("version"), self.options.ovf_version)
        self.references(env)
        self.disk_section(env)
        self.network_section(env)
        for i, r in enumerate(vm.extra):
            if r.where == "envelope":
                env.append(_parse_raw(r.xml, f"extra[{i}]", self.ovf))
        self.virtual_system(env)
        etree.indent(env, space="  ")
        # Double-quoted declaration, as VMware and VirtualBox write it (lxml's uses quotes ').
        body = etree.tostring(env, encoding="UTF-8")
        return b'<?xml version="1.0" encoding="UTF-8"?>\n' + bytes(body) + b"\n"

    def references(self, env: etree._Element) -> None:
        refs = self.sub(env, "References")
        for f in self.layout.files:
            el = self.sub(refs, "File")
            el.set(self.o("href"), _text(f"file {f.id!r} href", f.href))
            el.set(self.o("id"), _text("file id", f.id))
            if f.size is not None:
                el.set(self.o("size"), str(f.size))
            if f.chunk_size is not None:
                el.set(self.o("chunkSize"), str(f.chunk_size))

    def disk_section(self, env: etree._Element) -> None:
        if not self.vm.disks:
            return
        sec = self.section(env, "DiskSection", "Virtual disk information")
        for n, d in enumerate(self.vm.disks, 1):
            df = self.layout.disk_file(d.id)
            if df is None:
                raise InvalidArgumentError(f"the package layout has no file for disk {d.id!r}")
            el = self.sub(sec, "Disk")
            # DSP0243 §9.1: capacity with its unit; byte is exact and needs no conversion.
            el.set(self.o("capacity"), str(d.capacity))
            el.set(self.o("capacityAllocationUnits"), "byte")
            el.set(self.o("diskId"), f"vmdisk{n}")
            el.set(self.o("fileRef"), df.file.id)
            el.set(self.o("format"), _text("disk_format", self.options.disk_format))
            if df.populated_size is not None:
                el.set(self.o("populatedSize"), str(df.populated_size))

    def network_section(self, env: etree._Element) -> None:
        nets = _networks(self.vm)
        if not nets:
            return
        sec = self.section(env, "NetworkSection", "The list of logical networks")
        for net in nets:
            el = self.sub(sec, "Network")
            el.set(self.o("name"), _text("network name", net.name))
            if net.description:
                self.sub(el, "Description", _text("network description", net.description))

    def virtual_system(self, env: etree._Element) -> None:
        vm = self.vm
        vs = self.sub(env, "VirtualSystem")
        # VMware and virt-v2v use the VM name for both ovf:id and Name; DSP8027 ovfenv:id
        # repeats ovf:id.
        vs.set(self.o("id"), _text("VM name", vm.name))
        self.sub(vs, "Info", "A virtual machine")
        self.sub(vs, "Name", vm.name)
        if vm.annotation:
            sec = self.section(vs, "AnnotationSection", "A human-readable annotation")
            self.sub(sec, "Annotation", _text("annotation", vm.annotation))
        for i, p in enumerate(vm.products):
            self.product_section(vs, i, p)
        for i, eula in enumerate(vm.eulas):
            sec = self.section(vs, "EulaSection", "End User License Agreement")
            self.sub(sec, "License", _text(f"eulas[{i}]", eula))
        self.os_section(vs)
        self.hardware_section(vs)
        for i, r in enumerate(vm.extra):
            if r.where == "virtual-system":
                vs.append(_parse_raw(r.xml, f"extra[{i}]", self.ovf))

    def product_section(self, vs: etree._Element, i: int, p: Product) -> None:
        sec = self.sub(vs, "ProductSection")
        if p.class_:
            sec.set(self.o("class"), _text(f"products[{i}].class_", p.class_))
        if p.instance:
            sec.set(self.o("instance"), _text(f"products[{i}].instance", p.instance))
        self.sub(sec, "Info", "Information about the installed software")
        # DSP0243 §9.5 element order: Product, Vendor, Version, FullVersion, ProductUrl,
        # VendorUrl, AppUrl, Icon*, then Category/Property in any order.
        for local, value in (
            ("Product", p.product),
            ("Vendor", p.vendor),
            ("Version", p.version),
            ("FullVersion", p.full_version),
            ("ProductUrl", p.product_url),
            ("VendorUrl", p.vendor_url),
            ("AppUrl", p.app_url),
        ):
            if value:
                self.sub(sec, local, _text(f"products[{i}].{local}", value))
        category = ""
        for j, prop in enumerate(p.properties):
            where = f"products[{i}].properties[{j}]"
            if prop.category != category:
                category = prop.category
                self.sub(sec, "Category", _text(f"{where}.category", category))
            el = self.sub(sec, "Property")
            el.set(self.o("key"), _text(f"{where}.key", prop.key))
            el.set(self.o("type"), _text(f"{where}.type", prop.type))
            if prop.qualifiers:
                el.set(self.o("qualifiers"), _text(f"{where}.qualifiers", prop.qualifiers))
            if prop.user_configurable:
                el.set(self.o("userConfigurable"), "true")
            if prop.value is not None:
                el.set(self.o("value"), _text(f"{where}.value", prop.value))
            if prop.password:
                el.set(self.o("password"), "true")
            if prop.label:
                self.sub(el, "Label", _text(f"{where}.label", prop.label))
            if prop.description:
                self.sub(el, "Description", _text(f"{where}.description", prop.description))

    def os_section(self, vs: etree._Element) -> None:
        g = self.vm.guest_os
        sec = self.sub(vs, "OperatingSystemSection")
        # ovf:id: CIM_OperatingSystem.OSType (DSP0243 §9.7); vmw:osType: vSphere guest id.
        sec.set(self.o("id"), str(g.cim_id))
        if g.vmware_id:
            sec.set(q(ns.VMW, "osType"), _text("guest_os.vmware_id", g.vmware_id))
        self.sub(sec, "Info", "The kind of installed guest operating system")
        if g.description:
            self.sub(sec, "Description", _text("guest_os.description", g.description))

    # hardware -------------------------------------------------------------------------------
    def hardware_section(self, vs: etree._Element) -> None:
        vm = self.vm
        hw = self.sub(vs, "VirtualHardwareSection")
        if self.options.ovf_env:
            hw.set(self.o("transport"), "iso")  # DSP0243 §11.1
        self.sub(hw, "Info", "Virtual hardware requirements")
        system = self.sub(hw, "System")
        vssd: dict[str, str] = {
            "ElementName": "Virtual Hardware Family",
            "InstanceID": "0",
            "VirtualSystemIdentifier": vm.name,
            "VirtualSystemType": self.options.hardware_version,
        }
        if vm.description:
            vssd["Description"] = _text("description", vm.description)
        for local in sorted(vssd):  # CIM xs:sequence = code-point order
            etree.SubElement(system, q(ns.VSSD, local)).text = vssd[local]

        items, eth_items, storage_items = self.items()
        raw_items: dict[str, list[etree._Element]] = {
            "Item": [],
            "EthernetPortItem": [],
            "StorageItem": [],
        }
        raw_other: list[etree._Element] = []
        for el in self.raw_hw:
            local = etree.QName(el).localname
            if etree.QName(el).namespace == self.ovf and local in raw_items:
                raw_items[local].append(el)
            else:
                raw_other.append(el)
        for it in items:
            hw.append(self.item_element(it))
        hw.extend(raw_items["Item"])
        for it in eth_items:
            hw.append(self.item_element(it))
        hw.extend(raw_items["EthernetPortItem"])
        for it in storage_items:
            hw.append(self.item_element(it))
        hw.extend(raw_items["StorageItem"])
        # Vendor elements after the last Item: the schema's "Item*, ##other*" sequence
        # (libxml2 wrongly accepts them interleaved; xmlschema and VMware do not).
        if vm.firmware is Firmware.EFI:
            hw.append(self.vmw_config("firmware", "efi"))
        if vm.secure_boot:
            hw.append(self.vmw_config("bootOptions.efiSecureBootEnabled", "true"))
        hw.extend(raw_other)
        if self.v2:
            self.boot_section(vs)

    def item_element(self, it: _Item) -> etree._Element:
        el = etree.Element(self.o(it.tag))
        for local in sorted(it.props):  # XSD sequence of the CIM class: code-point order
            etree.SubElement(el, q(it.cim_ns, local)).text = it.props[local]
        el.extend(it.vendor)
        return el

    def items(self) -> tuple[list[_Item], list[_Item], list[_Item]]:
        vm = self.vm
        rasd = ns.RASD
        items: list[_Item] = []
        eth: list[_Item] = []
        storage: list[_Item] = []
        cpu = _Item(
            "Item",
            rasd,
            {
                "AllocationUnits": "hertz * 10^6",
                "Description": "Number of Virtual CPUs",
                "ElementName": f"{vm.vcpus} virtual CPU(s)",
                "InstanceID": self.iid(),
                "ResourceType": "3",
                # interop-rules: VirtualQuantity = vCPUs, sockets are implied by CoresPerSocket
                "VirtualQuantity": str(vm.vcpus),
            },
        )
        if vm.cores_per_socket != 1:
            cps = etree.Element(q(ns.VMW, "CoresPerSocket"))
            self.vmw_required_false(cps)
            cps.text = str(vm.cores_per_socket)
            cpu.vendor.append(cps)
        items.append(cpu)
        # interop-rules: byte * 2^20 with the quantity in MB, virt-v2v/Proxmox assume MB.
        items.append(
            _Item(
                "Item",
                rasd,
                {
                    "AllocationUnits": "byte * 2^20",
                    "Description": "Memory Size",
                    "ElementName": f"{vm.memory_mib}MB of memory",
                    "InstanceID": self.iid(),
                    "ResourceType": "4",
                    "VirtualQuantity": str(vm.memory_mib),
                },
            )
        )
        ctrl_iid: dict[str, str] = {}
        for c in vm.controllers:
            ctrl_iid[c.id] = self.iid()
            items.append(self.controller_item(c, ctrl_iid[c.id]))
        ranks = _boot_ranks(vm)
        for n, cd in enumerate(vm.cd_drives, 1):
            props = {
                "AddressOnParent": str(cd.unit),
                "ElementName": f"CD/DVD drive {n}",
                "InstanceID": self.iid(),
                "Parent": ctrl_iid[cd.controller],
                "ResourceType": "15",
            }
            f = self.cd_files.get(cd.id)
            if f is not None:
                props["AutomaticAllocation"] = "true"
                props["HostResource"] = f"ovf:/file/{f.id}"  # DSP0243 §9.8 Table 7
                props["ResourceSubType"] = "vmware.cdrom.iso"
            else:
                # An empty drive, as ovftool exports it: not connected at power on.
                props["AutomaticAllocation"] = "false"
                props["ResourceSubType"] = "vmware.cdrom.remotepassthrough"
            items.append(_Item("Item", rasd, props))
            if ("cd", cd.id) in ranks:
                rank = ranks[("cd", cd.id)]
                label = f"CD/DVD drive {n}"
                self.boot_sources.append((rank, label, props["InstanceID"], f"CIM:CD/DVD:{n}"))
        for n, nic in enumerate(vm.nics, 1):
            props = {
                "AutomaticAllocation": "true" if nic.connected else "false",
                "Connection": _text(f"nics[{n - 1}].network", nic.network),
                "Description": f'{nic.adapter.value} ethernet adapter on "{nic.network}"',
                "ElementName": f"Network adapter {n}",
                "InstanceID": self.iid(),
                "ResourceSubType": nic.adapter.value,
                "ResourceType": "10",
            }
            if nic.mac is not None:
                props["Address"] = _text(f"nics[{n - 1}].mac", nic.mac)
            # DSP0243 2.0 §9.5: Ethernet adapters as EthernetPortItem (CIM EPASD).
            if self.v2:
                eth.append(_Item("EthernetPortItem", ns.EPASD, props))
            else:
                eth.append(_Item("Item", rasd, props))
        for n, d in enumerate(vm.disks, 1):
            name = _text(f"disks[{n - 1}].name", d.name or f"Hard disk {n}")
            props = {
                "AddressOnParent": str(d.unit),
                "ElementName": name,
                "HostResource": f"ovf:/disk/vmdisk{n}",  # DSP0243 §9.8 Table 7
                "InstanceID": self.iid(),
                "Parent": ctrl_iid[d.controller],
                "ResourceType": "17",
            }
            # DSP0243 2.0 §9.5: disks as StorageItem (CIM SASD).
            if self.v2:
                storage.append(_Item("StorageItem", ns.SASD, props))
            else:
                storage.append(_Item("Item", rasd, props))
            if ("disk", d.id) in ranks:
                self.boot_sources.append(
                    (ranks[("disk", d.id)], name, props["InstanceID"], f"CIM:Hard-Disk:{n}")
                )
        if self.v2:
            return items, eth, storage
        # OVF 1.x: one Item list, disks before NICs as VMware writes them.
        return [*items, *storage, *eth], [], []

    def controller_item(self, c: Controller, iid: str) -> _Item:
        subtype = c.subtype or default_controller_subtype(c.type)
        rtype, label = {
            ControllerType.IDE: ("5", "IDE Controller"),
            ControllerType.SCSI: ("6", "SCSI Controller"),
            # ResourceType 20 "Other storage device" with VMware's subtype (interop-rules).
            ControllerType.SATA: ("20", "SATA Controller"),
            ControllerType.NVME: ("20", "NVMe Controller"),
        }[c.type]
        props = {
            "Address": str(c.bus_number),
            "Description": label,
            "ElementName": f"{label} {c.bus_number}",
            "InstanceID": iid,
            "ResourceType": rtype,
        }
        if subtype:
            props["ResourceSubType"] = _text(f"controller {c.id!r} subtype", subtype)
        return _Item("Item", ns.RASD, props)

    def boot_section(self, vs: etree._Element) -> None:
        """OVF 2.0 BootDeviceSection (DSP0243 2.0 §9.13): CIM_BootConfigSetting with one
        CIM_BootSourceSetting per device in boot order; StructuredBootString is
        ``CIM:<device kind>:<n>`` with n counting that kind of device in the descriptor."""
        if not self.boot_sources:
            return
        sec = self.section(vs, "BootDeviceSection", "Boot device order")
        conf = etree.SubElement(sec, q(ns.BOOTC, "CIM_BootConfigSetting"))
        etree.SubElement(conf, q(ns.BOOTC, "ElementName")).text = "Boot order"
        etree.SubElement(conf, q(ns.BOOTC, "InstanceID")).text = "0"
        for _, name, iid, structured in sorted(self.boot_sources):
            src = etree.SubElement(conf, q(ns.BOOTS, "CIM_BootSourceSetting"))
            etree.SubElement(src, q(ns.BOOTS, "ElementName")).text = name
            etree.SubElement(src, q(ns.BOOTS, "InstanceID")).text = iid
            etree.SubElement(src, q(ns.BOOTS, "StructuredBootString")).text = structured


def _instance_id(el: etree._Element) -> str | None:
    for child in el:
        if not isinstance(child.tag, str):
            continue
        if etree.QName(child).localname in ("InstanceID", "InstanceId"):
            return (child.text or "").strip()
    return None


_RAW_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, huge_tree=False, remove_blank_text=True
)


def _parse_raw(xml: str, where: str, ovf: str) -> etree._Element:
    """A kept fragment, moved into the OVF namespace being written (a section read from an
    envelope/1 descriptor goes into envelope/2 as the same section)."""
    try:
        el = etree.fromstring(xml.encode("utf-8"), _RAW_PARSER)
    except etree.XMLSyntaxError as exc:
        raise InvalidArgumentError(f"{where}: RawXml is not well-formed XML: {exc}") from None
    others = set(ns.OVF_NAMESPACES) - {ovf}
    for e in el.iter():
        if not isinstance(e.tag, str):
            continue
        qn = etree.QName(e)
        if qn.namespace in others:
            e.tag = q(ovf, qn.localname)
        for name in list(e.attrib):
            aq = etree.QName(name)
            if aq.namespace in others:
                e.set(q(ovf, aq.localname), e.attrib.pop(name))
    etree.cleanup_namespaces(el, top_nsmap={"ovf": ovf}, keep_ns_prefixes=["xsi"])
    return el


def build_descriptor(
    vm: VirtualMachine,
    options: DescriptorOptions | None = None,
    layout: PackageLayout | None = None,
) -> bytes:
    """The OVF descriptor of ``vm`` as UTF-8 bytes.

    ``layout`` gives the File references (names, sizes, populated sizes); without one,
    :func:`plan_layout` names the files and sizes are left out. Raises InvalidArgumentError
    (SYS.1007) for a VM no descriptor can express (units out of range, texts XML cannot carry).
    """
    options = options or DescriptorOptions()
    _check_vm(vm)
    layout = layout or plan_layout(vm, options)
    return _Writer(vm, options, layout).build()
