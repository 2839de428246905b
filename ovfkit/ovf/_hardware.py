"""Reading a VirtualHardwareSection into model parts (CPU, memory, controllers, disks, CD
drives, NICs, firmware) for the descriptor reader; Items the model cannot hold become RawXml."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from lxml import etree

from .. import limits
from ..errors import InvalidOvfError
from ..model import (
    CdDrive,
    Controller,
    ControllerType,
    Disk,
    Firmware,
    Nic,
    NicType,
    RawXml,
)
from . import _ns as ns
from ._ns import q
from ._xml import raw_from_element as _raw
from .layout import DiskFile, FileRef, IsoFile


class ReaderContext(Protocol):
    """What hardware reading needs of the document reader."""

    ovf: str

    def applies(self, el: etree._Element) -> bool: ...

    def resolve(self, value: str) -> str: ...


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _nsof(el: etree._Element) -> str:
    return (etree.QName(el).namespace or "") if isinstance(el.tag, str) else ""


_DECIMAL = re.compile(r"\+?([0-9]+)")


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:24]!r}... ({len(text)} characters)"


def _int(text: str | None, where: str, maximum: int = limits.JAVA_LONG_MAX) -> int:
    """A non-negative decimal integer of at most ``maximum`` (xs:unsignedLong and friends, in
    ASCII digits only: ``int()`` alone would take ``1_000``, Arabic-Indic digits and numbers of
    any length). Anything else is InvalidOvfError (OVF.1002) naming the element."""
    s = (text or "").strip()
    m = _DECIMAL.fullmatch(s)
    if m is None:
        what = "is negative" if re.fullmatch(r"-[0-9]+", s) else "is not an integer"
        raise InvalidOvfError(f"{where}: {_shown(s)} {what}")
    digits = m.group(1).lstrip("0") or "0"
    if len(digits) > limits.MAX_NUMBER_DIGITS or int(digits) > maximum:
        raise InvalidOvfError(f"{where}: {_shown(s)} is out of range (at most {maximum})")
    return int(digits)


def _cap(have: int, most: int, what: str) -> None:
    """Refuse the Item that would make ``have + 1`` of a kind over its cap (ovfkit.limits)."""
    if have >= most:
        raise InvalidOvfError(
            f"VirtualHardwareSection has more than {most} {what}; no importer takes that many"
        )


def _bool(text: str | None, default: bool) -> bool:
    if text is None:
        return default
    return text.strip().lower() in ("true", "1")


_UNITS_POW = re.compile(r"byte\*([0-9]{1,3})\^([0-9]{1,3})")
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
    m = _UNITS_POW.fullmatch(s)
    if m:
        base, exp = int(m.group(1)), int(m.group(2))
        if base not in (2, 10) or exp > 80:
            raise InvalidOvfError(f"{where}: unsupported allocation units {_shown(units)}")
        return int(base**exp)
    if s in _UNIT_NAMES:
        return _UNIT_NAMES[s]
    raise InvalidOvfError(f"{where}: unsupported allocation units {_shown(units)}")


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
        t = self.get("ResourceType")  # CIM uint16; "isdigit" would also take "²"
        return int(t) if t is not None and re.fullmatch(r"[0-9]{1,5}", t) else None

    def label(self) -> str:
        name = self.get("ElementName") or self.get("Caption") or f"Item {self.iid}"
        return name if len(name) <= 80 else _shown(name)  # it goes into error messages


class Hardware:
    """Reads one VirtualHardwareSection into model parts."""

    def __init__(
        self,
        r: ReaderContext,
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

    def keep_vendor(self, it: _Item, target: str, skip: tuple[str, ...] = ()) -> None:
        """Vendor children of an Item the model took (a NIC's ``vmw:Config wakeOnLanEnabled``,
        a controller's ``slotInfo.pciSlotNumber``): kept as RawXml ``item:<kind>:<id>`` for the
        writer to put back into the same device's Item."""
        for c in it.el:
            if not isinstance(c.tag, str) or _nsof(c) in ns.ITEM_NAMESPACES:
                continue
            if _local(c) in skip and _nsof(c) == ns.VMW:
                continue
            self.extra.append(_raw(c, f"item:{target}", self.r.ovf))

    def item(self, el: etree._Element) -> _Item:
        it = _Item(el)
        for c in el:
            if isinstance(c.tag, str) and _nsof(c) in ns.ITEM_NAMESPACES:
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
        where = f"{it.label()} VirtualQuantity"
        self.vcpus = _int(it.get("VirtualQuantity") or "1", where, limits.MAX_VCPUS)
        for c in it.el:
            if _nsof(c) == ns.VMW and _local(c) == "CoresPerSocket":
                self.cores_per_socket = _int(c.text, "vmw:CoresPerSocket", limits.MAX_VCPUS)
        self.keep_vendor(it, "cpu", skip=("CoresPerSocket",))
        return True

    def memory(self, it: _Item) -> bool:
        where = f"{it.label()} VirtualQuantity"
        qty = _int(it.get("VirtualQuantity"), where)
        # Default MB: what virt-v2v and Proxmox assume when AllocationUnits is missing.
        factor = _unit_factor(it.get("AllocationUnits"), 2**20, f"{it.label()} AllocationUnits")
        mib = -(-qty * factor // 2**20)  # integers: a float of qty * factor can overflow
        if not 1 <= mib <= limits.MAX_MEMORY_MIB:
            raise InvalidOvfError(
                f"{where}: {qty} x {factor} bytes of memory is out of range (1 MiB to"
                f" {limits.MAX_MEMORY_MIB} MiB, vSphere's largest VM)"
            )
        self.memory_mib = mib
        self.keep_vendor(it, "memory")
        return True

    def controller(self, it: _Item) -> bool:
        _cap(len(self.controllers), limits.MAX_CONTROLLERS, "storage controllers")
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
        bus = _int(addr, f"{it.label()} Address", 0xFFFF) if addr else n
        cid = f"{ctype.value}{n}"
        self.controllers.append(Controller(cid, ctype, subtype, bus))
        self.by_iid[it.iid] = ("controller", cid)
        self.keep_vendor(it, f"controller:{cid}")
        return True

    def parent(self, it: _Item) -> str:
        p = it.get("Parent")
        kind, cid = self.by_iid.get(p or "", ("", ""))
        if kind != "controller":
            raise InvalidOvfError(
                f"{it.label()}: Parent {_shown(p or '')} is not a storage controller Item"
            )
        return cid

    def unit(self, it: _Item, controller: str) -> int:
        a = it.get("AddressOnParent")
        if a:
            return _int(a, f"{it.label()} AddressOnParent", 0xFFFF)
        used = {d.unit for d in self.disks if d.controller == controller}
        used |= {c.unit for c in self.cds if c.controller == controller}
        return min(set(range(len(used) + 1)) - used)

    def disk(self, it: _Item) -> bool:
        host = it.get("HostResource") or ""
        # ovf:/disk/<id> (DSP0243 1.1 §8.3, HostResource); VirtualBox writes /disk/<id>,
        # OVF 0.9 ovf:disk/<id>.
        m = re.fullmatch(r"(?:ovf:)?/?disk/(.+)", host)
        if not m or m.group(1) not in self.disk_info:
            return False  # a disk Item without a disk of the DiskSection: kept raw
        did = m.group(1)
        _cap(len(self.disks), limits.MAX_DISKS, "disks")
        _cap(len(self.disks) + len(self.cds), limits.MAX_STORAGE_DEVICES, "disks and CD drives")
        info = self.disk_info[did]
        where = f"Disk {_shown(did)}"
        cap_text = self.r.resolve(info["capacity"] or "")
        factor = _unit_factor(
            info["capacityAllocationUnits"], 1, f"{where} capacityAllocationUnits"
        )
        capacity = _int(cap_text, f"{where} ovf:capacity") * factor
        if capacity > limits.JAVA_LONG_MAX:
            raise InvalidOvfError(
                f"{where}: ovf:capacity {cap_text.strip()} x {factor} bytes is out of range"
                f" (at most {limits.JAVA_LONG_MAX} bytes)"
            )
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
        self.keep_vendor(it, f"disk:{did}")
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
        _cap(len(self.disks) + len(self.cds), limits.MAX_STORAGE_DEVICES, "disks and CD drives")
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
        self.keep_vendor(it, f"cd:{cid}")
        return True

    def nic(self, it: _Item) -> bool:
        _cap(len(self.nics), limits.MAX_NICS, "NICs")
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
        self.keep_vendor(it, f"nic:{nid}")
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
        m = re.fullmatch(r"CIM:(Hard-Disk|CD/DVD):([0-9]{1,6})", structured)
        if m:
            n = int(m.group(2))
            devices = self.disks if m.group(1) == "Hard-Disk" else self.cds
            if 1 <= n <= len(devices):
                return ("disk" if m.group(1) == "Hard-Disk" else "cd", devices[n - 1].id)
        iid = (src.findtext(q(ns.BOOTS, "InstanceID")) or "").strip()
        return self.by_iid.get(iid)
