"""The descriptor writer against the importer rules of docs/interop-rules.md "Descriptor", and the
package layout's member names."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from ovf_helpers import assert_rasd_order, assert_schema_valid
from strategies import virtual_machines

from ovfkit.errors import InvalidArgumentError
from ovfkit.model import (
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
from ovfkit.ovf import (
    STREAM_OPTIMIZED,
    DescriptorOptions,
    build_descriptor,
    parse_descriptor,
    plan_layout,
    safe_basename,
    validate_descriptor,
)
from ovfkit.ovf.descriptor import capacity_units

OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
OVF2 = "http://schemas.dmtf.org/ovf/envelope/2"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VMW = "http://www.vmware.com/schema/ovf"
VBOX = "http://www.virtualbox.org/ovf/machine"
NS = {
    "ovf": OVF1,
    "rasd": RASD,
    "vmw": VMW,
    "vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
}


def web01(**kw: object) -> VirtualMachine:
    vm = VirtualMachine(
        name="web-01",
        vcpus=4,
        cores_per_socket=2,
        memory_mib=6144,
        firmware=Firmware.EFI,
        secure_boot=True,
        guest_os=GuestOs(94, "ubuntu64Guest", "Ubuntu Linux (64-bit)"),
        controllers=(
            Controller("scsi", ControllerType.SCSI, "lsilogicsas"),
            Controller("ide", ControllerType.IDE),
            Controller("sata", ControllerType.SATA),
            Controller("nvme", ControllerType.NVME),
        ),
        disks=(
            Disk("root", 40 * 2**30, "scsi", 0, boot_order=1),
            Disk("data", 2**40, "sata", 29, name="data volume"),
            Disk("fast", 2**30, "nvme", 14),
        ),
        cd_drives=(CdDrive("cd", "ide", 1, iso="/isos/tools.iso", boot_order=2),),
        nics=(
            Nic("n0", NicType.VMXNET3, "VM Network", "00:50:56:aa:bb:cc"),
            Nic("n1", NicType.E1000E, "Storage", connected=False),
        ),
        networks=(Network("VM Network", "The VM Network network"),),
        products=(Product("Web", "Acme", "1.0", properties=(Property("host", value="web"),)),),
        annotation="front end",
        eulas=("Be nice.",),
    )
    return replace(vm, **kw)  # type: ignore[arg-type]


def xml(vm: VirtualMachine, **opts: object) -> etree._Element:
    data = build_descriptor(vm, DescriptorOptions(**opts))  # type: ignore[arg-type]
    assert_schema_valid(data)
    assert_rasd_order(data)
    return etree.fromstring(data)


def items(root: etree._Element) -> list[dict[str, str]]:
    out = []
    for it in root.iterfind(
        ".//ovf:VirtualHardwareSection/*", {"ovf": etree.QName(root).namespace}
    ):
        if etree.QName(it).localname.endswith("Item"):
            out.append(
                {etree.QName(c).localname: c.text or "" for c in it if isinstance(c.tag, str)}
            )
    return out


def by_type(root: etree._Element, rtype: str) -> list[dict[str, str]]:
    return [i for i in items(root) if i.get("ResourceType") == rtype]


def test_envelope_defaults_follow_importer_rules() -> None:
    data = build_descriptor(web01())
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    root = etree.fromstring(data)
    assert root.tag == f"{{{OVF1}}}Envelope"  # virt-v2v and Proxmox read only envelope/1
    assert root.get(f"{{{OVF1}}}version") == "1.0"
    assert root.findtext(".//vssd:VirtualSystemType", namespaces=NS) == "vmx-13"
    # every section has an Info
    for sec in root.iter():
        if isinstance(sec.tag, str) and sec.tag.endswith("Section"):
            assert sec.find("ovf:Info", NS) is not None, sec.tag
    assert len(root.findall("ovf:VirtualSystem", NS)) == 1


def test_cpu_memory_and_firmware() -> None:
    root = xml(web01())
    (cpu,) = by_type(root, "3")
    assert cpu["VirtualQuantity"] == "4"
    assert root.findtext(".//vmw:CoresPerSocket", namespaces=NS) == "2"
    (mem,) = by_type(root, "4")
    assert (mem["AllocationUnits"], mem["VirtualQuantity"]) == ("byte * 2^20", "6144")
    hw = root.find(".//ovf:VirtualHardwareSection", NS)
    assert hw is not None
    kids = [c for c in hw if isinstance(c.tag, str)]
    configs = [c for c in kids if c.tag == f"{{{VMW}}}Config"]
    assert {(c.get(f"{{{VMW}}}key"), c.get(f"{{{VMW}}}value")) for c in configs} == {
        ("firmware", "efi"),
        ("bootOptions.efiSecureBootEnabled", "true"),
    }
    last_item = max(i for i, c in enumerate(kids) if c.tag == f"{{{OVF1}}}Item")
    assert all(kids.index(c) > last_item for c in configs)  # vendor elements after the Items
    for el in root.iter(f"{{{VMW}}}*"):
        assert el.get(f"{{{OVF1}}}required") == "false"


def test_controllers_disks_cds_nics() -> None:
    root = xml(web01())
    ids = [i["InstanceID"] for i in items(root)]
    assert all(i.isdigit() for i in ids) and len(set(ids)) == len(ids)
    ctrl = {i["InstanceID"]: i for i in items(root) if i["ResourceType"] in ("5", "6", "20")}
    assert sorted((c["ResourceType"], c.get("ResourceSubType")) for c in ctrl.values()) == [
        ("20", "vmware.nvme.controller"),
        ("20", "vmware.sata.ahci"),
        ("5", None),
        ("6", "lsilogicsas"),
    ]
    disks = by_type(root, "17")
    assert [(d["HostResource"], d["AddressOnParent"]) for d in disks] == [
        ("ovf:/disk/vmdisk1", "0"),
        ("ovf:/disk/vmdisk2", "29"),
        ("ovf:/disk/vmdisk3", "14"),
    ]
    assert [ctrl[d["Parent"]]["ResourceType"] for d in disks] == ["6", "20", "20"]
    (cd,) = by_type(root, "15")
    assert ctrl[cd["Parent"]]["ResourceType"] == "5" and cd["AddressOnParent"] == "1"
    assert cd["AutomaticAllocation"] == "false" and "HostResource" not in cd  # ISO not packed
    nics = by_type(root, "10")
    assert [(n["ResourceSubType"], n["Connection"], n.get("Address")) for n in nics] == [
        ("VmxNet3", "VM Network", "00:50:56:aa:bb:cc"),
        ("E1000e", "Storage", None),
    ]
    assert [n["AutomaticAllocation"] for n in nics] == ["true", "false"]
    # the undeclared network "Storage" is declared for the NIC that uses it
    names = [n.get(f"{{{OVF1}}}name") for n in root.iterfind(".//ovf:Network", NS)]
    assert names == ["VM Network", "Storage"]


def test_disk_section_and_references_from_layout() -> None:
    vm = web01()
    opts = DescriptorOptions(include_iso=True)
    layout = plan_layout(vm, opts)
    layout = layout.with_sizes(
        {f.id: 1000 + i for i, f in enumerate(layout.files)}, {"root": 123, "data": 0}
    )
    root = etree.fromstring(build_descriptor(vm, opts, layout))
    files = [
        (f.get(f"{{{OVF1}}}href"), f.get(f"{{{OVF1}}}size"))
        for f in root.iterfind("ovf:References/ovf:File", NS)
    ]
    assert files == [
        ("web-01-disk1.vmdk", "1000"),
        ("web-01-disk2.vmdk", "1001"),
        ("web-01-disk3.vmdk", "1002"),
        ("web-01-iso1.iso", "1003"),
    ]
    disks = root.findall("ovf:DiskSection/ovf:Disk", NS)
    a = [{etree.QName(k).localname: v for k, v in d.attrib.items()} for d in disks]
    assert [(d["capacity"], d["capacityAllocationUnits"], d.get("populatedSize")) for d in a] == [
        ("40", "byte * 2^30", "123"),
        ("1024", "byte * 2^30", "0"),
        ("1", "byte * 2^30", None),
    ]
    assert {d["format"] for d in a} == {STREAM_OPTIMIZED}
    (cd,) = by_type(root, "15")
    assert cd["HostResource"] == "ovf:/file/file4" and cd["AutomaticAllocation"] == "true"


@pytest.mark.parametrize(
    ("capacity", "written"),
    [
        (40 * 2**30, (40, "byte * 2^30")),
        (2**40, (1024, "byte * 2^30")),
        (2**30 + 2**20, (1025, "byte * 2^20")),
        (3 * 2**20, (3, "byte * 2^20")),
        (5 * 2**10, (5, "byte * 2^10")),
        (2**30 + 512, (2**30 + 512, "byte")),
        (512, (512, "byte")),
        (0, (0, "byte")),
    ],
)
def test_capacity_in_the_largest_exact_unit(capacity: int, written: tuple[int, str]) -> None:
    """VMware's ``byte * 2^30`` / ``2^20`` when exact (Proxmox reads only ``byte * N^M``), else
    the next smaller binary unit, bytes last; the value read back is the capacity to the byte."""
    assert capacity_units(capacity) == written
    vm = replace(web01(), disks=(Disk("root", capacity, "scsi", 0, boot_order=1),))
    data = build_descriptor(vm)
    assert_schema_valid(data)
    (disk,) = etree.fromstring(data).iterfind("ovf:DiskSection/ovf:Disk", NS)
    got = (disk.get(f"{{{OVF1}}}capacity"), disk.get(f"{{{OVF1}}}capacityAllocationUnits"))
    assert got == (str(written[0]), written[1])
    assert parse_descriptor(data).disks[0].capacity == capacity


@given(st.integers(0, 2**63))
def test_capacity_units_are_exact_and_maximal(capacity: int) -> None:
    quantity, units = capacity_units(capacity)
    # single spaces around "*": vcsim splits on blanks, vdsm allows one blank at most
    shift = {"byte": 0, "byte * 2^10": 10, "byte * 2^20": 20, "byte * 2^30": 30}[units]
    assert quantity << shift == capacity
    larger = [s for s in (10, 20, 30) if s > shift]
    assert capacity == 0 or all(capacity % (1 << s) for s in larger)


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_virtualbox_os_type_next_to_the_cim_id(version: str) -> None:
    """vbox:OSType after the Description, as VirtualBox exports it; validated strictly and read
    back. Without a VirtualBox id the vbox namespace is not even declared."""
    guest = GuestOs(121, "windows2019srv_64Guest", "WindowsServer 2019 (64-bit)", "Windows2019_64")
    data = build_descriptor(web01(guest_os=guest), DescriptorOptions(ovf_version=version))  # type: ignore[arg-type]
    assert_schema_valid(data)
    validate_descriptor(data, strict=True)
    root = etree.fromstring(data)
    (sec,) = root.iterfind(".//{*}OperatingSystemSection")
    assert sec.get(f"{{{etree.QName(root).namespace}}}id") == "121"
    assert sec.get(f"{{{VMW}}}osType") == "windows2019srv_64Guest"
    assert [etree.QName(c).localname for c in sec] == ["Info", "Description", "OSType"]
    vbox = sec[2]
    assert (etree.QName(vbox).namespace, vbox.text) == (VBOX, "Windows2019_64")
    assert vbox.get(f"{{{etree.QName(root).namespace}}}required") == "false"
    assert parse_descriptor(data).guest_os == guest
    assert b"virtualbox.org" not in build_descriptor(web01())


def test_ovf2_uses_envelope2_epasd_sasd_and_boot_section() -> None:
    root = xml(web01(), ovf_version="2.0")
    assert root.tag == f"{{{OVF2}}}Envelope"
    # the DSP8023 2.0.1 spelling, not VirtualBox's/COT's ".xsd" one (ovfkit.ovf._ns)
    cim2 = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
    assert root.nsmap["epasd"] == cim2 + "CIM_EthernetPortAllocationSettingData"
    assert root.nsmap["sasd"] == cim2 + "CIM_StorageAllocationSettingData"
    hw = root.find(f".//{{{OVF2}}}VirtualHardwareSection")
    assert hw is not None
    order = [etree.QName(c).localname for c in hw if isinstance(c.tag, str)]
    assert order.count("EthernetPortItem") == 2 and order.count("StorageItem") == 3
    assert order.index("EthernetPortItem") > max(i for i, t in enumerate(order) if t == "Item")
    boot = root.findall(f".//{{{OVF2}}}BootDeviceSection//{{*}}StructuredBootString")
    assert [b.text for b in boot] == ["CIM:Hard-Disk:1", "CIM:CD/DVD:1"]


def test_ovf_env_transport_and_drive() -> None:
    vm = web01(cd_drives=())
    opts = DescriptorOptions(ovf_env=True)
    layout = plan_layout(vm, opts)
    assert layout.env_iso is not None and layout.env_iso.href == "web-01-ovf-env.iso"
    root = xml(vm, ovf_env=True)
    hw = root.find(".//ovf:VirtualHardwareSection", NS)
    assert hw is not None and hw.get(f"{{{OVF1}}}transport") == "iso"
    (cd,) = by_type(root, "15")  # a drive was added on the free IDE unit for the environment
    assert cd["HostResource"] == f"ovf:/file/{layout.env_iso.id}"
    back = parse_descriptor(build_descriptor(vm, opts))
    assert [c.iso for c in back.cd_drives] == ["web-01-ovf-env.iso"]


def test_text_is_escaped_and_unicode_kept() -> None:
    vm = web01(name='测试 <vm> & "quotes"', annotation="a\r\nb\tc & <d>")
    back = parse_descriptor(build_descriptor(vm))
    assert back.name == vm.name and back.annotation == vm.annotation


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "  "}, "name is empty"),
        ({"name": "bad\x01name"}, "XML 1.0"),
        ({"annotation": "\ufffe"}, "XML 1.0"),
        ({"vcpus": 0}, "vcpus"),
        ({"memory_mib": 0}, "memory_mib"),
        ({"guest_os": GuestOs(70000)}, "cim_id"),
        ({"disks": (Disk("x", 1, "scsi", 7),)}, "unit 7"),
        ({"disks": (Disk("x", 1, "ide", 2),)}, "unit 2"),
        ({"disks": (Disk("x", 1, "nope", 0),)}, "no controller"),
        ({"disks": (Disk("x", 1, "scsi", 0), Disk("y", 1, "scsi", 0))}, "taken"),
        ({"disks": (Disk("x", -1, "scsi", 0),)}, "negative"),
        ({"extra": (RawXml("envelope", "<unclosed"),)}, "well-formed"),
        # issue 12 #12: caps at what ZStack and the importers take (ovfkit.limits)
        ({"vcpus": 1025}, "vcpus must be 1 to 1024"),
        ({"cores_per_socket": 10**6}, "cores_per_socket"),
        ({"memory_mib": 10**12}, "memory_mib must be"),
        ({"name": "n" * 256}, "at most 255"),
        ({"nics": tuple(Nic(f"n{i}", NicType.E1000, "net") for i in range(65))}, "65 NICs"),
        ({"disks": (Disk("x", 2**64, "scsi", 0),)}, "is over"),
        ({"disks": tuple(Disk(f"d{i}", 1, "scsi", 0) for i in range(257))}, "257 disks"),
        ({"networks": tuple(Network(f"n{i}") for i in range(65))}, "65 networks"),
        ({"controllers": tuple(Controller(f"c{i}", ControllerType.SCSI) for i in range(15))},
         "15 storage controllers"),
        ({"cd_drives": tuple(CdDrive(f"cd{i}", "ide", 0) for i in range(634))},
         "637 disks and CD drives"),
        ({"annotation": "a" * (13 << 20)}, "over the 12582912-byte limit"),
    ],
)
def test_bad_vm_is_invalid_argument(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as exc:
        build_descriptor(web01(**change))
    assert exc.value.code == "SYS.1007"


def test_bad_options() -> None:
    with pytest.raises(InvalidArgumentError):
        DescriptorOptions(ovf_version="3.0")  # type: ignore[arg-type]


def test_layout_without_a_disk_is_refused() -> None:
    vm = web01()
    layout = plan_layout(vm)
    with pytest.raises(InvalidArgumentError, match="no file for disk"):
        build_descriptor(vm, layout=replace(layout, disks=layout.disks[1:]))


# -- layout -----------------------------------------------------------------------------------


@given(st.text(max_size=300))
def test_safe_basename(name: str) -> None:
    base = safe_basename(name)
    assert base and base.isascii() and len(base.encode()) <= 86
    assert "/" not in base and ".." not in base and not base.startswith(".")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", base)
    assert safe_basename(name) == base  # deterministic


@given(st.text(max_size=40), st.text(max_size=40))
def test_safe_basename_keeps_names_apart(a: str, b: str) -> None:
    if a != b and safe_basename(a) == safe_basename(b):
        # only a name that needed no change can equal the plain form of another ...
        assert a == safe_basename(a) or b == safe_basename(b)
        raise AssertionError(f"{a!r} and {b!r} share {safe_basename(a)!r}")


def test_safe_basename_examples() -> None:
    assert safe_basename("web-01") == "web-01"
    assert safe_basename("Ünïcödé vm").startswith("Unicode-vm-")
    assert safe_basename("../etc/passwd").startswith("etc-passwd-")
    assert re.fullmatch(r"vm-[0-9a-f]{8}", safe_basename("测试"))


@settings(max_examples=50, deadline=None)
@given(vm=virtual_machines(), iso=st.booleans(), env=st.booleans())
def test_plan_layout_names(vm: VirtualMachine, iso: bool, env: bool) -> None:
    layout = plan_layout(vm, DescriptorOptions(include_iso=iso, ovf_env=env))
    names = [f.href for f in layout.files]
    members = [*names, f"{layout.base}.ovf", f"{layout.base}.mf", f"{layout.base}.cert"]
    assert len(set(members)) == len(members)
    for m in members:
        assert m.isascii() and len(m.encode()) <= 100 and "/" not in m and ".." not in m
    assert [d.disk_id for d in layout.disks] == [d.id for d in vm.disks]
    assert len({f.id for f in layout.files}) == len(layout.files)
    if iso:
        assert {i.cd_id for i in layout.isos} == {c.id for c in vm.cd_drives if c.iso}
        # one file per distinct ISO path
        assert len({i.file.id for i in layout.isos}) == len({c.iso for c in vm.cd_drives if c.iso})
    else:
        assert layout.isos == ()
    assert (layout.env_iso is not None) is env
    assert plan_layout(vm, DescriptorOptions(include_iso=iso, ovf_env=env)) == layout
