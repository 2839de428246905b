"""The OVF descriptor reader: ``parse_descriptor(bytes) -> VirtualMachine`` (pure, hardened).

Reads what ovfkit, VMware ovftool, VirtualBox and COT-style tools write: OVF 0.9 (VMware's
pre-standard ``http://www.vmware.com/schema/ovf/1/envelope``, sections as
``<Section xsi:type="ovf:DiskSection_Type">``, ``rasd:InstanceId``), 1.x (envelope/1) and 2.0
(envelope/2 with EthernetPortItem/StorageItem). Several ProductSections, per-configuration Items
(DSP0243 1.1 §9.8 ``ovf:configuration``; the default configuration of the DeploymentOptionSection
goes into the model) and vendor sections are understood; what the model cannot hold is kept in
``VirtualMachine.extra`` as :class:`RawXml`, which ``build_descriptor`` writes back in place.

RawXml ``where`` values: ``envelope``, ``virtual-system``, ``hardware`` (as in the model) and
``item:<kind>[:<id>]`` for vendor children of an Item the model took (``item:cpu``,
``item:memory``, ``item:controller:scsi0``, ``item:disk:vmdisk1``, ``item:cd:cd1``,
``item:nic:nic1``; e.g. a NIC's ``vmw:Config wakeOnLanEnabled``), which the writer puts back
into that device's Item (and drops when the device is gone).

Not kept from a foreign descriptor (the model has no place for them, and a RawXml copy would
contradict what the model says): ``Property/Value`` overrides of non-default configurations,
the default configuration's conditional Items (their values become unconditional on a
re-write), OperatingSystemSection ``ovf:version`` and vendor children other than VirtualBox's
``vbox:OSType``,
Info texts and localisation (``ovf:msgid``, Strings), DiskSection disks no Item attaches,
``parentRef`` delta disks, NIC PCI slots (AddressOnParent) and the original InstanceIDs.
vmw:BootOrderSection becomes ``boot_order`` (OVF 1.x re-writes do not carry it, see
``descriptor_view``). Unknown NIC subtypes become E1000.

Hardening (the descriptor comes from whoever made the package): at most
:data:`MAX_DESCRIPTOR_SIZE` bytes, no DTD and no entities at all (billion laughs, XXE) ->
InvalidOvfError (OVF.1002); no network; lxml's default tree limits. Malformed XML ->
OvfParseError (OVF.1001). Nothing else escapes: every value read is checked and a bad one gives
InvalidOvfError naming the element.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from lxml import etree

from .. import limits
from ..errors import InvalidOvfError
from ..model import (
    Firmware,
    GuestOs,
    Network,
    Product,
    Property,
    RawXml,
    VirtualMachine,
)
from . import _ns as ns
from ._hardware import Hardware, _bool, _int, _local, _nsof, _shown
from ._ns import q
from ._xml import MAX_DESCRIPTOR_SIZE, safe_fromstring
from ._xml import raw_from_element as _raw
from .layout import FileRef, PackageLayout, safe_basename
from .view import infer_architecture, ordered_extra

__all__ = [
    "MAX_DESCRIPTOR_SIZE",
    "ParsedDescriptor",
    "parse_descriptor",
    "parse_package_descriptor",
    "safe_fromstring",
]


@dataclass(frozen=True)
class ParsedDescriptor:
    """A descriptor read in full: the VM plus the package facts the model does not hold.

    ``layout`` has the References (hrefs, sizes, chunk sizes) and which file carries which disk
    (by model disk id) and ISO (by CD drive id); ``capacities`` are the disk capacities in bytes
    by disk id; ``formats`` the disk format URIs. ``transport`` lists VirtualHardwareSection's
    ``ovf:transport`` values; ``ovf_version`` is ``0.9``, ``1.x`` or ``2.0`` as declared.
    """

    vm: VirtualMachine
    ovf_version: str
    hardware_version: str
    layout: PackageLayout
    files: tuple[FileRef, ...]
    capacities: tuple[tuple[str, int], ...] = ()
    formats: tuple[tuple[str, str], ...] = ()
    transport: tuple[str, ...] = ()


def parse_descriptor(data: bytes) -> VirtualMachine:
    """The VirtualMachine an OVF descriptor describes (see :func:`parse_package_descriptor`)."""
    return parse_package_descriptor(data).vm


def parse_package_descriptor(data: bytes) -> ParsedDescriptor:
    """Read an OVF 0.9/1.x/2.0 descriptor. Raises OvfParseError (OVF.1001) for malformed XML,
    InvalidOvfError (OVF.1002) for hostile XML or a document that is not a usable OVF."""
    return _Reader(safe_fromstring(data)).read()


def _name(text: str, where: str) -> str:
    if len(text) > limits.MAX_NAME:
        raise InvalidOvfError(
            f"{where} is {len(text)} characters long; ZStack names hold at most {limits.MAX_NAME}"
        )
    return text


class _Reader:
    def __init__(self, root: etree._Element):
        if _local(root) != "Envelope" or _nsof(root) not in ns.OVF_NAMESPACES:
            raise InvalidOvfError(
                f"root element is {root.tag!r}; an OVF descriptor has an Envelope in one of "
                f"the namespaces {list(ns.OVF_NAMESPACES)}"
            )
        self.root = root
        self.ovf = _nsof(root)
        self.extra: list[RawXml] = []
        self.products: list[Product] = []
        self.default_config: str | None = None

    # -- helpers ------------------------------------------------------------------------------
    def a(self, el: etree._Element, name: str) -> str | None:
        """An ovf: attribute; unqualified as a fallback (some tools forget the prefix)."""
        v = el.get(q(self.ovf, name))
        return v if v is not None else el.get(name)

    def kind(self, el: etree._Element) -> str:
        """Section kind: the element name, or the xsi:type of OVF 0.9's generic
        ``<Section>``/``<Content>`` (``ovf:DiskSection_Type`` -> ``DiskSection``)."""
        local = _local(el)
        if _nsof(el) != self.ovf:
            return ""
        if local in ("Section", "Content"):
            t = el.get(q(ns.XSI, "type")) or ""
            t = t.rpartition(":")[2]
            return t.removesuffix("_Type")
        return local

    def child(self, el: etree._Element, local: str) -> etree._Element | None:
        for c in el:
            if _nsof(c) == self.ovf and _local(c) == local:
                return c
        return None

    def text(self, el: etree._Element, local: str) -> str:
        c = self.child(el, local)
        return (c.text or "") if c is not None else ""

    def applies(self, el: etree._Element) -> bool:
        """Whether an Item/Value belongs to the default configuration (DSP0243 1.1 §9.8)."""
        conf = self.a(el, "configuration")
        bound = self.a(el, "bound")
        if bound not in (None, "", "normal"):
            return False
        if conf is None:
            return True
        return self.default_config is not None and self.default_config in conf.split()

    # -- document -----------------------------------------------------------------------------
    def read(self) -> ParsedDescriptor:
        root = self.root
        version = root.get(q(self.ovf, "version")) or root.get("version")
        if version is None:
            version = {ns.OVF09: "0.9", ns.OVF1: "1.0", ns.OVF2: "2.0"}[self.ovf]
        files = self.references()
        contents = []
        disk_section: etree._Element | None = None
        net_section: etree._Element | None = None
        for el in root:
            if not isinstance(el.tag, str):
                continue
            k = self.kind(el)
            if k in ("VirtualSystem", "VirtualSystemCollection"):
                contents.append((k, el))
            elif k == "References" or k == "Strings":
                continue
            elif k == "DiskSection" and disk_section is None:
                disk_section = el
            elif k == "NetworkSection" and net_section is None:
                net_section = el
            else:
                if k == "DeploymentOptionSection":
                    self.default_config = self.deployment_default(el)
                self.extra.append(_raw(el, "envelope", self.ovf))
        if not contents:
            raise InvalidOvfError("descriptor has no VirtualSystem")
        if contents[0][0] == "VirtualSystemCollection" or len(contents) > 1:
            raise InvalidOvfError(
                "descriptor describes several virtual systems (VirtualSystemCollection); "
                "ovfkit reads a single VirtualSystem"
            )
        disks = self.disk_section(disk_section)
        networks = self.network_section(net_section)
        return self.virtual_system(contents[0][1], version, files, disks, networks)

    def deployment_default(self, el: etree._Element) -> str | None:
        first: str | None = None
        for c in el:
            if _nsof(c) == self.ovf and _local(c) == "Configuration":
                cid = self.a(c, "id")
                if first is None:
                    first = cid
                if _bool(self.a(c, "default"), False):
                    return cid
        return first

    def references(self) -> dict[str, FileRef]:
        out: dict[str, FileRef] = {}
        refs = self.child(self.root, "References")
        if refs is None:
            return out
        for f in refs:
            if _nsof(f) != self.ovf or _local(f) != "File":
                continue
            if len(out) >= limits.MAX_PACKAGE_FILES:
                raise InvalidOvfError(f"References has more than {limits.MAX_PACKAGE_FILES} Files")
            fid, href = self.a(f, "id"), self.a(f, "href")
            if not fid or href is None:
                raise InvalidOvfError("References/File without ovf:id or ovf:href")
            size = self.a(f, "size")
            chunk = self.a(f, "chunkSize")
            out[fid] = FileRef(
                fid,
                href,
                _int(size, f"File {_shown(fid)} ovf:size") if size is not None else None,
                _int(chunk, f"File {_shown(fid)} ovf:chunkSize") if chunk is not None else None,
            )
        return out

    def disk_section(self, sec: etree._Element | None) -> dict[str, dict[str, str | None]]:
        out: dict[str, dict[str, str | None]] = {}
        if sec is None:
            return out
        for d in sec:
            if _nsof(d) != self.ovf or _local(d) != "Disk":
                continue
            did = self.a(d, "diskId")
            if not did:
                raise InvalidOvfError("DiskSection/Disk without ovf:diskId")
            if len(out) >= limits.MAX_STORAGE_DEVICES:
                raise InvalidOvfError(
                    f"DiskSection has more than {limits.MAX_STORAGE_DEVICES} disks"
                )
            out[did] = {
                k: self.a(d, k)
                for k in (
                    "capacity",
                    "capacityAllocationUnits",
                    "fileRef",
                    "format",
                    "populatedSize",
                )
            }
        return out

    def network_section(self, sec: etree._Element | None) -> list[Network]:
        if sec is None:
            return []
        out: list[Network] = []
        for n in sec:
            if _nsof(n) != self.ovf or _local(n) != "Network":
                continue
            if len(out) >= limits.MAX_NETWORKS:
                raise InvalidOvfError(
                    f"NetworkSection has more than {limits.MAX_NETWORKS} networks"
                )
            name = _name(self.a(n, "name") or "", "NetworkSection/Network ovf:name")
            out.append(Network(name, self.text(n, "Description")))
        return out

    # -- virtual system -----------------------------------------------------------------------
    def virtual_system(
        self,
        vs: etree._Element,
        version: str,
        files: dict[str, FileRef],
        disk_info: dict[str, dict[str, str | None]],
        networks: list[Network],
    ) -> ParsedDescriptor:
        name_el = self.child(vs, "Name")
        name = (name_el.text or "") if name_el is not None else (self.a(vs, "id") or "")
        name = _name(name, "VirtualSystem Name")
        annotation = ""
        eulas: list[str] = []
        guest = GuestOs()
        hw: etree._Element | None = None
        boot_sections: list[etree._Element] = []
        vendor_sections: list[etree._Element] = []
        for el in vs:
            if not isinstance(el.tag, str):
                continue
            k = self.kind(el)
            if k in ("Info", "Name"):
                continue
            if k == "AnnotationSection":
                annotation = self.text(el, "Annotation")
            elif k == "ProductSection":
                self.products.append(self.product(el))
            elif k == "EulaSection":
                eulas.append(self.text(el, "License"))
            elif k == "OperatingSystemSection":
                guest = self.os_section(el)
            elif k == "VirtualHardwareSection" and hw is None:
                hw = el
            elif k == "BootDeviceSection" or (
                _nsof(el) == ns.VMW and _local(el) == "BootOrderSection"
            ):
                boot_sections.append(el)
            else:
                if _nsof(el) == ns.VBOX:
                    vendor_sections.append(el)
                self.extra.append(_raw(el, "virtual-system", self.ovf))
        if hw is None:
            raise InvalidOvfError(f"VirtualSystem {_shown(name)} has no VirtualHardwareSection")
        hwr = Hardware(self, hw, files, disk_info)
        hwr.read()
        hwr.apply_boot_order(boot_sections)
        firmware = hwr.firmware
        for v in vendor_sections:  # VirtualBox: <vbox:Machine><Hardware><Firmware type="EFI"/>
            for e in v.iter():
                if _local(e) == "Firmware" and (e.get("type") or "").upper().startswith("EFI"):
                    firmware = Firmware.EFI
        declared = {n.name for n in networks}
        for nic in hwr.nics:
            if nic.network not in declared:
                declared.add(nic.network)
                networks.append(Network(nic.network))
        vm = VirtualMachine(
            name=name,
            description=hwr.description,
            vcpus=hwr.vcpus,
            cores_per_socket=hwr.cores_per_socket,
            memory_mib=hwr.memory_mib,
            firmware=firmware,
            secure_boot=hwr.secure_boot,
            guest_os=guest,
            architecture=infer_architecture(guest),
            controllers=tuple(hwr.controllers),
            disks=tuple(hwr.disks),
            cd_drives=tuple(hwr.cds),
            nics=tuple(hwr.nics),
            networks=tuple(networks),
            products=tuple(self.products),
            annotation=annotation,
            eulas=tuple(eulas),
            extra=(*self.extra, *hwr.extra),
        )
        vm = replace(vm, extra=ordered_extra(vm))
        return ParsedDescriptor(
            vm=vm,
            ovf_version=version,
            hardware_version=hwr.hardware_version,
            layout=PackageLayout(
                base=safe_basename(name) if name.strip() else "vm",
                disks=tuple(hwr.disk_files),
                isos=tuple(hwr.iso_files),
            ),
            files=tuple(files.values()),
            capacities=tuple((d.id, d.capacity) for d in hwr.disks if d.capacity is not None),
            formats=tuple(hwr.formats),
            transport=tuple((self.a(hw, "transport") or "").split()),
        )

    def os_section(self, el: etree._Element) -> GuestOs:
        cim = _int(self.a(el, "id"), "OperatingSystemSection ovf:id", 0xFFFF)  # CIM uint16
        vbox = el.find(q(ns.VBOX, "OSType"))
        return GuestOs(
            cim_id=cim,
            vmware_id=el.get(q(ns.VMW, "osType")) or "",
            description=self.text(el, "Description"),
            virtualbox_id=(vbox.text or "") if vbox is not None else "",
        )

    def product(self, el: etree._Element) -> Product:
        props: list[Property] = []
        category = ""
        for c in el:
            if _nsof(c) != self.ovf:
                continue
            local = _local(c)
            if local == "Category":
                category = c.text or ""
            elif local == "Property":
                props.append(self.prop(c, category))
        return Product(
            product=self.text(el, "Product"),
            vendor=self.text(el, "Vendor"),
            version=self.text(el, "Version"),
            full_version=self.text(el, "FullVersion"),
            product_url=self.text(el, "ProductUrl"),
            vendor_url=self.text(el, "VendorUrl"),
            app_url=self.text(el, "AppUrl"),
            class_=self.a(el, "class") or "",
            instance=self.a(el, "instance") or "",
            properties=tuple(props),
        )

    def prop(self, el: etree._Element, category: str) -> Property:
        key = self.a(el, "key")
        if key is None:
            raise InvalidOvfError("ProductSection/Property without ovf:key")
        value = self.a(el, "value")
        for v in el:  # a Value for the default configuration overrides (DSP0243 1.1 §9.5, §9.8)
            is_value = _nsof(v) == self.ovf and _local(v) == "Value"
            if is_value and self.a(v, "configuration") and self.applies(v):
                value = self.a(v, "value")
        return Property(
            key=key,
            type=self.a(el, "type") or "string",
            value=value,
            user_configurable=_bool(self.a(el, "userConfigurable"), False),
            label=self.text(el, "Label"),
            description=self.text(el, "Description"),
            qualifiers=self.a(el, "qualifiers") or "",
            password=_bool(self.a(el, "password"), False),
            category=category,
        )

    def resolve(self, value: str) -> str:
        """``${key}`` refers to a ProductSection property (DSP0243 1.1 §9.5, e.g. a disk capacity
        chosen at deployment); use its default value."""
        m = re.fullmatch(r"\$\{(.+)\}", value.strip())
        if not m:
            return value
        for p in self.products:
            for prop in p.properties:
                if prop.key == m.group(1) and prop.value is not None:
                    return prop.value
        raise InvalidOvfError(f"{_shown(value)} names no ProductSection property with a value")
