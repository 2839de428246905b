"""The OVF descriptor reader: ``parse_descriptor(bytes) -> VirtualMachine`` (pure, hardened).

Reads what ovfkit, VMware ovftool, VirtualBox and COT-style tools write: OVF 0.9 (VMware's
pre-standard ``http://www.vmware.com/schema/ovf/1/envelope``, sections as
``<Section xsi:type="ovf:DiskSection_Type">``, ``rasd:InstanceId``), 1.x (envelope/1) and 2.0
(envelope/2 with EthernetPortItem/StorageItem). Several ProductSections, per-configuration Items
(DSP0243 §9.8 ``ovf:configuration``; the default configuration of the DeploymentOptionSection
goes into the model) and vendor sections are understood; what the model cannot hold is kept in
``VirtualMachine.extra`` as :class:`RawXml`, which ``build_descriptor`` writes back in place.

Hardening (the descriptor comes from whoever made the package): at most
:data:`MAX_DESCRIPTOR_SIZE` bytes, no DTD and no entities at all (billion laughs, XXE) ->
InvalidOvfError (OVF.1002); no network; lxml's default tree limits. Malformed XML ->
OvfParseError (OVF.1001). Nothing else escapes: every value read is checked and a bad one gives
InvalidOvfError naming the element.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from lxml import etree

from ..errors import InvalidOvfError, OvfParseError
from ..model import (
    CdDrive,
    Controller,
    ControllerType,
    Disk,
    Firmware,
    GuestOs,
    Network,
    Nic,
    NicType,
    Product,
    Property,
    RawXml,
    VirtualMachine,
)
from . import _ns as ns
from ._ns import q
from .descriptor import infer_architecture
from .layout import DiskFile, FileRef, IsoFile, PackageLayout, safe_basename

__all__ = [
    "MAX_DESCRIPTOR_SIZE",
    "ParsedDescriptor",
    "parse_descriptor",
    "parse_package_descriptor",
    "safe_fromstring",
]

#: Real descriptors are a few hundred KiB at most (a VM with 60 disks is ~100 KiB).
MAX_DESCRIPTOR_SIZE = 32 * 1024 * 1024

_DTD_MARKERS = tuple(
    marker.encode(enc)
    for marker in ("<!DOCTYPE", "<!ENTITY")
    for enc in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
)


def safe_fromstring(data: bytes) -> etree._Element:
    """Parse untrusted XML: size cap, DTDs and entities refused (OVF.1002), malformed XML
    (OVF.1001). The parser never loads a DTD, resolves an entity or touches the network."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidOvfError(f"descriptor must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_DESCRIPTOR_SIZE:
        raise InvalidOvfError(
            f"descriptor is {len(data)} bytes, more than the {MAX_DESCRIPTOR_SIZE}-byte limit"
        )
    if any(m in data for m in _DTD_MARKERS):
        raise InvalidOvfError(
            "descriptor contains a DTD or entity declaration (<!DOCTYPE/<!ENTITY); OVF needs "
            "neither and they are refused (entity expansion, external entities)"
        )
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise OvfParseError(f"descriptor is not well-formed XML: {exc}") from None
    if root is None:
        raise OvfParseError("descriptor is empty")
    docinfo: Any = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:  # second line of defence
        raise InvalidOvfError("descriptor has a DTD; refused")
    for node in root.iter(etree.Entity):
        raise InvalidOvfError(f"descriptor uses entity {node.text!r}; refused")
    return root


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


# ---------------------------------------------------------------------------------------------


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _nsof(el: etree._Element) -> str:
    return (etree.QName(el).namespace or "") if isinstance(el.tag, str) else ""


def _int(text: str | None, where: str) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        raise InvalidOvfError(f"{where}: {text!r} is not an integer") from None


def _bool(text: str | None, default: bool) -> bool:
    if text is None:
        return default
    return text.strip().lower() in ("true", "1")


_UNITS_POW = re.compile(r"^byte\*(\d+)\^(\d+)$")
_UNIT_NAMES = {
    "byte": 1,
    "bytes": 1,
    "kilobytes": 2**10,
    "kb": 2**10,
    "kib": 2**10,
    "megabytes": 2**20,
    "mb": 2**20,
    "mib": 2**20,
    "gigabytes": 2**30,
    "gb": 2**30,
    "gib": 2**30,
    "terabytes": 2**40,
    "tb": 2**40,
}


def _unit_factor(units: str | None, default: int, where: str) -> int:
    """DSP0004 Annex C programmatic units (``byte * 2^20``) and the names older exporters use
    (VirtualBox and OVF 0.9 write ``MegaBytes``)."""
    if units is None or not units.strip():
        return default
    s = re.sub(r"\s+", "", units).lower()
    m = _UNITS_POW.match(s)
    if m:
        base, exp = int(m.group(1)), int(m.group(2))
        if base not in (2, 10) or exp > 80:
            raise InvalidOvfError(f"{where}: unsupported allocation units {units!r}")
        return int(base**exp)
    if s in _UNIT_NAMES:
        return _UNIT_NAMES[s]
    raise InvalidOvfError(f"{where}: unsupported allocation units {units!r}")


def _strip_blank(el: etree._Element) -> etree._Element:
    """Drop layout-only whitespace so that a kept fragment is the same string however the
    surrounding document was indented (the writer re-indents)."""
    for e in el.iter():
        if len(e) and e.text is not None and not e.text.strip():
            e.text = None
        if e is not el and e.tail is not None and not e.tail.strip():
            e.tail = None
    el.tail = None
    return el


_PREFIXES = {
    ns.OVF1: "ovf",
    ns.OVF2: "ovf",
    ns.OVF09: "ovf",
    ns.RASD: "rasd",
    ns.VSSD: "vssd",
    ns.EPASD: "epasd",
    ns.SASD: "sasd",
    ns.BOOTC: "bootc",
    ns.BOOTS: "boots",
    ns.CIM: "cim",
    ns.VMW: "vmw",
    ns.VBOX: "vbox",
    ns.XSI: "xsi",
}


def _canonical(el: etree._Element, ovf: str) -> etree._Element:
    """A copy of ``el`` with fixed prefixes (ovf, rasd, vmw, ...; others ``ns<n>``), all declared
    on the fragment's root, so the kept text does not depend on how the source document, or
    ovfkit's own writer, spelled its namespaces. ``ovf`` and ``xsi`` are always declared: QName
    values such as ``xsi:type="ovf:DiskSection_Type"`` use them."""
    used = {ovf, ns.XSI}
    for e in el.iter():
        if isinstance(e.tag, str):
            used.add(etree.QName(e).namespace or "")
            used.update(etree.QName(a).namespace or "" for a in e.attrib)
    used.discard("")
    nsmap: dict[str, str] = {}
    for i, uri in enumerate(sorted(used)):
        prefix = _PREFIXES.get(uri, f"ns{i}")
        if prefix in nsmap:
            prefix = f"ns{i}"
        nsmap[prefix] = uri

    def clone(src: etree._Element, parent: etree._Element | None) -> etree._Element:
        if parent is None:
            dst = etree.Element(src.tag, nsmap=nsmap)
        else:
            dst = etree.SubElement(parent, src.tag)
        for k, v in src.attrib.items():
            dst.set(k, v)
        dst.text = src.text
        for c in src:
            if isinstance(c.tag, str):
                clone(c, dst).tail = c.tail
            else:  # comments and processing instructions
                dst.append(copy.copy(c))
        return dst

    return clone(el, None)


def _raw(el: etree._Element, where: str, ovf: str) -> RawXml:
    frag = _strip_blank(_canonical(el, ovf))
    return RawXml(where, etree.tostring(frag, encoding="unicode", with_tail=False))


_NIC_TYPES = {
    "e1000": NicType.E1000,
    "e1000e": NicType.E1000E,
    "vmxnet3": NicType.VMXNET3,
    "pcnet32": NicType.PCNET32,
    "virtio": NicType.VIRTIO,
    "virtio-net": NicType.VIRTIO,
    # VirtualBox chip names (ovfreader.cpp): PCnet-PCI II / FAST III, Intel PRO/1000.
    "am79c970a": NicType.PCNET32,
    "am79c973": NicType.PCNET32,
    "i82540em": NicType.E1000,
    "i82543gc": NicType.E1000,
    "i82545em": NicType.E1000,
}


@dataclass
class _Item:
    el: etree._Element
    props: dict[str, list[str]] = field(default_factory=dict)

    def get(self, local: str) -> str | None:
        values = self.props.get(local)
        return values[0].strip() if values else None

    def raw(self, local: str) -> str | None:
        values = self.props.get(local)
        return values[0] if values else None

    @property
    def iid(self) -> str:
        return self.get("InstanceID") or self.get("InstanceId") or ""

    @property
    def rtype(self) -> int | None:
        t = self.get("ResourceType")
        return int(t) if t is not None and t.isdigit() else None

    def label(self) -> str:
        return self.get("ElementName") or self.get("Caption") or f"Item {self.iid}"


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
        """Whether an Item/Value belongs to the default configuration (DSP0243 §9.8)."""
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
            fid, href = self.a(f, "id"), self.a(f, "href")
            if not fid or href is None:
                raise InvalidOvfError("References/File without ovf:id or ovf:href")
            size = self.a(f, "size")
            chunk = self.a(f, "chunkSize")
            out[fid] = FileRef(
                fid,
                href,
                _int(size, f"File {fid!r} ovf:size") if size is not None else None,
                _int(chunk, f"File {fid!r} ovf:chunkSize") if chunk is not None else None,
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
        return [
            Network(self.a(n, "name") or "", self.text(n, "Description"))
            for n in sec
            if _nsof(n) == self.ovf and _local(n) == "Network"
        ]

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
            raise InvalidOvfError(f"VirtualSystem {name!r} has no VirtualHardwareSection")
        hwr = _Hardware(self, hw, files, disk_info)
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
            capacities=tuple((d.id, d.capacity) for d in hwr.disks),
            formats=tuple(hwr.formats),
            transport=tuple((self.a(hw, "transport") or "").split()),
        )

    def os_section(self, el: etree._Element) -> GuestOs:
        cim = _int(self.a(el, "id"), "OperatingSystemSection ovf:id")
        return GuestOs(
            cim_id=cim,
            vmware_id=el.get(q(ns.VMW, "osType")) or "",
            description=self.text(el, "Description"),
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
        for v in el:  # a Value for the default configuration overrides (DSP0243 §9.5.1)
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
        """``${key}`` refers to a ProductSection property (DSP0243 §9.5, e.g. a disk capacity
        chosen at deployment); use its default value."""
        m = re.fullmatch(r"\$\{(.+)\}", value.strip())
        if not m:
            return value
        for p in self.products:
            for prop in p.properties:
                if prop.key == m.group(1) and prop.value is not None:
                    return prop.value
        raise InvalidOvfError(f"{value!r} names no ProductSection property with a value")


class _Hardware:
    """Reads one VirtualHardwareSection into model parts."""

    def __init__(
        self,
        r: _Reader,
        hw: etree._Element,
        files: dict[str, FileRef],
        disk_info: dict[str, dict[str, str | None]],
    ):
        self.r = r
        self.hw = hw
        self.files = files
        self.disk_info = disk_info
        self.description = ""
        self.hardware_version = ""
        self.vcpus = 1
        self.cores_per_socket = 1
        self.memory_mib = 1024
        self.firmware = Firmware.BIOS
        self.secure_boot = False
        self.controllers: list[Controller] = []
        self.disks: list[Disk] = []
        self.cds: list[CdDrive] = []
        self.nics: list[Nic] = []
        self.extra: list[RawXml] = []
        self.disk_files: list[DiskFile] = []
        self.iso_files: list[IsoFile] = []
        self.formats: list[tuple[str, str]] = []
        self.by_iid: dict[str, tuple[str, str]] = {}  # InstanceID -> (kind, model id)

    def read(self) -> None:
        items: list[_Item] = []
        for el in self.hw:
            if not isinstance(el.tag, str):
                continue
            local, nsu = _local(el), _nsof(el)
            if nsu == self.r.ovf and local == "System":
                self.system(el)
            elif nsu == self.r.ovf and local in ("Item", "EthernetPortItem", "StorageItem"):
                if self.r.applies(el):
                    items.append(self.item(el))
                else:
                    self.extra.append(_raw(el, "hardware", self.r.ovf))
            elif nsu == self.r.ovf and local == "Info":
                continue
            elif not (nsu == ns.VMW and local == "Config" and self.vmw_config(el)):
                self.extra.append(_raw(el, "hardware", self.r.ovf))
        # Controllers first: a device may come before its controller.
        handlers: dict[int, Callable[[_Item], bool]] = {
            3: self.cpu,
            4: self.memory,
            5: self.controller,
            6: self.controller,
            20: self.controller,
        }
        rest: list[_Item] = []
        for it in items:
            handler = handlers.get(it.rtype or -1)
            if handler is None or not handler(it):
                rest.append(it)
        device_handlers: dict[int, Callable[[_Item], bool]] = {
            17: self.disk,
            15: self.cd,
            16: self.cd,
            10: self.nic,
        }
        for it in rest:
            handler = device_handlers.get(it.rtype or -1)
            if handler is None or not handler(it):
                self.extra.append(_raw(it.el, "hardware", self.r.ovf))

    def item(self, el: etree._Element) -> _Item:
        it = _Item(el)
        for c in el:
            if isinstance(c.tag, str) and _nsof(c) in (ns.RASD, ns.EPASD, ns.SASD):
                it.props.setdefault(_local(c), []).append(c.text or "")
        return it

    def system(self, el: etree._Element) -> None:
        for c in el:
            if _local(c) == "VirtualSystemType":
                self.hardware_version = (c.text or "").strip()
            elif _local(c) == "Description":
                self.description = c.text or ""

    def vmw_config(self, el: etree._Element) -> bool:
        key, value = el.get(q(ns.VMW, "key")), (el.get(q(ns.VMW, "value")) or "")
        if key == "firmware":
            self.firmware = Firmware.EFI if value.lower() == "efi" else Firmware.BIOS
            return value.lower() in ("efi", "bios")
        if key == "bootOptions.efiSecureBootEnabled":
            self.secure_boot = value.lower() == "true"
            return value.lower() in ("true", "false")
        return False

    # -- items --------------------------------------------------------------------------------
    def cpu(self, it: _Item) -> bool:
        self.vcpus = _int(it.get("VirtualQuantity") or "1", f"{it.label()} VirtualQuantity")
        for c in it.el:
            if _nsof(c) == ns.VMW and _local(c) == "CoresPerSocket":
                self.cores_per_socket = _int(c.text, "vmw:CoresPerSocket")
        return True

    def memory(self, it: _Item) -> bool:
        qty = _int(it.get("VirtualQuantity"), f"{it.label()} VirtualQuantity")
        # Default MB: what virt-v2v and Proxmox assume when AllocationUnits is missing.
        factor = _unit_factor(it.get("AllocationUnits"), 2**20, f"{it.label()} AllocationUnits")
        self.memory_mib = math.ceil(qty * factor / 2**20)
        return True

    def controller(self, it: _Item) -> bool:
        subtype = it.get("ResourceSubType") or None
        if it.rtype == 5:
            ctype = ControllerType.IDE
        elif it.rtype == 6:
            ctype = ControllerType.SCSI
        elif subtype is not None and "nvme" in subtype.lower():
            ctype = ControllerType.NVME
        else:
            ctype = ControllerType.SATA  # ResourceType 20: VMware vmware.sata.ahci, vbox AHCI
        n = sum(1 for c in self.controllers if c.type is ctype)
        addr = it.get("Address") or it.get("BusNumber")  # BusNumber: OVF 0.9
        bus = _int(addr, f"{it.label()} Address") if addr else n
        cid = f"{ctype.value}{n}"
        self.controllers.append(Controller(cid, ctype, subtype, bus))
        self.by_iid[it.iid] = ("controller", cid)
        return True

    def parent(self, it: _Item) -> str:
        p = it.get("Parent")
        kind, cid = self.by_iid.get(p or "", ("", ""))
        if kind != "controller":
            raise InvalidOvfError(f"{it.label()}: Parent {p!r} is not a storage controller Item")
        return cid

    def unit(self, it: _Item, controller: str) -> int:
        a = it.get("AddressOnParent")
        if a:
            return _int(a, f"{it.label()} AddressOnParent")
        used = {d.unit for d in self.disks if d.controller == controller}
        used |= {c.unit for c in self.cds if c.controller == controller}
        return min(set(range(len(used) + 1)) - used)

    def disk(self, it: _Item) -> bool:
        host = it.get("HostResource") or ""
        # ovf:/disk/<id> (DSP0243 §9.8); VirtualBox writes /disk/<id>, OVF 0.9 ovf:disk/<id>.
        m = re.fullmatch(r"(?:ovf:)?/?disk/(.+)", host)
        if not m or m.group(1) not in self.disk_info:
            return False  # a disk Item without a disk of the DiskSection: kept raw
        did = m.group(1)
        info = self.disk_info[did]
        where = f"Disk {did!r}"
        cap_text = self.r.resolve(info["capacity"] or "")
        factor = _unit_factor(
            info["capacityAllocationUnits"], 1, f"{where} capacityAllocationUnits"
        )
        capacity = _int(cap_text, f"{where} ovf:capacity") * factor
        controller = self.parent(it)
        self.disks.append(
            Disk(
                id=did,
                capacity=capacity,
                controller=controller,
                unit=self.unit(it, controller),
                name=it.raw("ElementName") or it.raw("Caption") or "",
            )
        )
        self.by_iid[it.iid] = ("disk", did)
        fref = info["fileRef"]
        if fref and fref in self.files:
            pop = info["populatedSize"]
            self.disk_files.append(
                DiskFile(
                    did,
                    self.files[fref],
                    _int(pop, f"{where} ovf:populatedSize") if pop is not None else None,
                )
            )
        if info["format"]:
            self.formats.append((did, info["format"]))
        return True

    def cd(self, it: _Item) -> bool:
        controller = self.parent(it)
        cid = f"cd{len(self.cds) + 1}"
        iso: str | None = None
        for host in it.props.get("HostResource", []):
            m = re.fullmatch(r"(?:ovf:)?/?file/(.+)", host.strip())
            if m and m.group(1) in self.files:
                f = self.files[m.group(1)]
                iso = f.href
                self.iso_files.append(IsoFile(cid, f))
        self.cds.append(CdDrive(cid, controller, self.unit(it, controller), iso))
        self.by_iid[it.iid] = ("cd", cid)
        return True

    def nic(self, it: _Item) -> bool:
        # COT lists the acceptable subtypes space-separated ("VMXNET3 virtio"): first known one.
        subs = (it.get("ResourceSubType") or "").lower().split()
        known = [_NIC_TYPES[t] for t in subs if t in _NIC_TYPES]
        adapter = known[0] if known else NicType.E1000  # unknown: the most widely emulated one
        conns = it.props.get("Connection", [])
        nid = f"nic{len(self.nics) + 1}"
        self.nics.append(
            Nic(
                id=nid,
                adapter=adapter,
                network=conns[0] if conns else "",
                mac=it.get("Address") or None,
                connected=_bool(it.get("AutomaticAllocation"), True),
            )
        )
        self.by_iid[it.iid] = ("nic", nid)
        return True

    # -- boot order ---------------------------------------------------------------------------
    def apply_boot_order(self, sections: list[etree._Element]) -> None:
        """OVF 2.0 BootDeviceSection (``CIM:Hard-Disk:<n>`` / ``CIM:CD/DVD:<n>``, or the
        source's InstanceID naming an Item) and VMware's vmw:BootOrderSection
        (``vmw:instanceId`` of an Item, in section order). Devices get dense ranks 1..n."""
        order: list[tuple[str, str]] = []
        for sec in sections:
            if _nsof(sec) == ns.VMW:
                ref = self.by_iid.get(sec.get(q(ns.VMW, "instanceId")) or "")
                if ref is not None:
                    order.append(ref)
                continue
            for src in sec.iter(q(ns.BOOTS, "CIM_BootSourceSetting")):
                ref = self.boot_source(src)
                if ref is not None:
                    order.append(ref)
        ranks: dict[tuple[str, str], int] = {}
        for ref in order:
            if ref[0] in ("disk", "cd") and ref not in ranks:
                ranks[ref] = len(ranks) + 1
        self.disks = [replace(d, boot_order=ranks.get(("disk", d.id))) for d in self.disks]
        self.cds = [replace(c, boot_order=ranks.get(("cd", c.id))) for c in self.cds]

    def boot_source(self, src: etree._Element) -> tuple[str, str] | None:
        structured = (src.findtext(q(ns.BOOTS, "StructuredBootString")) or "").strip()
        m = re.fullmatch(r"CIM:(Hard-Disk|CD/DVD):(\d+)", structured)
        if m:
            n = int(m.group(2))
            devices = self.disks if m.group(1) == "Hard-Disk" else self.cds
            if 1 <= n <= len(devices):
                return ("disk" if m.group(1) == "Hard-Disk" else "cd", devices[n - 1].id)
        iid = (src.findtext(q(ns.BOOTS, "InstanceID")) or "").strip()
        return self.by_iid.get(iid)
