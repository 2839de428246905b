"""The descriptor reader: shared DMTF samples, hand-written VMware / VirtualBox / COT / OVF 0.9
fixtures, vendor sections kept for a re-write, and hostile XML."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hostile.corpus import NUMBER_CASES, vmware
from hypothesis import given, settings
from hypothesis import strategies as st
from ovf_helpers import SAMPLES, assert_schema_valid, schema_errors

from ovfkit.errors import InvalidOvfError, OvfkitError, OvfParseError
from ovfkit.model import ControllerType, Firmware, NicType, RawXml
from ovfkit.ovf import (
    DescriptorOptions,
    build_descriptor,
    parse_descriptor,
    parse_package_descriptor,
    validate_descriptor,
    validate_environment,
)
from ovfkit.ovf.reader import MAX_DESCRIPTOR_SIZE

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ovf"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# -- DMTF samples (fixtures/ovf/samples, copied from ../shared/schemas/samples) ---------------


def _samples(prefix: str) -> list[str]:
    return sorted(p.name for p in SAMPLES.iterdir() if p.name.startswith(prefix))


@pytest.mark.parametrize("name", [n for n in _samples("valid-") if n.endswith(".ovf")])
def test_valid_samples_validate_and_parse(name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    validate_descriptor(data, strict=True)
    vm = parse_descriptor(data)
    assert vm.name == "sample-vm"
    assert vm.memory_mib == 2048 and vm.vcpus == 2
    assert [d.capacity for d in vm.disks] == [10737418240]
    assert vm.disks[0].controller == vm.controllers[0].id
    assert vm.controllers[0].type is ControllerType.SCSI
    assert [(n.adapter, n.network) for n in vm.nics] == [(NicType.VMXNET3, "VM Network")]


@pytest.mark.parametrize("name", [n for n in _samples("invalid-") if n.endswith(".ovf")])
def test_invalid_samples_fail_validation(name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    assert schema_errors(data), "the independent validators should reject it too"
    with pytest.raises(InvalidOvfError) as exc:
        validate_descriptor(data, strict=True)
    assert exc.value.code == "OVF.1002"
    assert "line" in exc.value.details or "/" in exc.value.details  # schema messages included


def test_libxml2_leniency_caught_by_strict() -> None:
    data = (SAMPLES / "vmw-config-before-items.ovf").read_bytes()
    validate_descriptor(data)  # libxml2 accepts vmw:Config before the Items ...
    with pytest.raises(InvalidOvfError, match="strict"):
        validate_descriptor(data, strict=True)  # ... the spec does not


def test_ovf_env_samples() -> None:
    validate_environment((SAMPLES / "valid-ovf-env.xml").read_bytes(), strict=True)
    with pytest.raises(InvalidOvfError):
        validate_environment((SAMPLES / "invalid-ovf-env-missing-value.xml").read_bytes())
    with pytest.raises(InvalidOvfError, match="namespace"):
        validate_environment((SAMPLES / "valid-ovf1.ovf").read_bytes())


def test_vmw_boot_order_section_is_read() -> None:
    vm = parse_descriptor((SAMPLES / "vmw-bootordersection.ovf").read_bytes())
    # vmw:type="disk" without an instanceId names no Item; nothing is invented
    assert [d.boot_order for d in vm.disks] == [None]


# -- tool-style fixtures ----------------------------------------------------------------------


def test_vmware_ovftool_fixture() -> None:
    data = fixture("vmware-ovftool.ovf")
    assert_schema_valid(data)
    p = parse_package_descriptor(data)
    vm = p.vm
    assert (vm.name, vm.vcpus, vm.cores_per_socket, vm.memory_mib) == ("photon-web", 4, 2, 2048)
    assert vm.firmware is Firmware.EFI and vm.secure_boot
    assert (vm.guest_os.cim_id, vm.guest_os.vmware_id) == (36, "vmwarePhoton64Guest")
    assert [(c.type, c.subtype, c.bus_number) for c in vm.controllers] == [
        (ControllerType.SCSI, "VirtualSCSI", 0),
        (ControllerType.IDE, None, 1),
        (ControllerType.IDE, None, 0),
    ]
    # capacities in byte * 2^30 and byte * 2^20
    assert [(d.capacity, d.unit, d.controller) for d in vm.disks] == [
        (16 * 2**30, 0, "scsi0"),
        (512 * 2**20, 1, "scsi0"),
    ]
    assert [(c.controller, c.unit, c.iso) for c in vm.cd_drives] == [("ide1", 0, None)]
    assert [(n.adapter, n.network, n.mac, n.connected) for n in vm.nics] == [
        (NicType.VMXNET3, "VM Network", None, True),
        (NicType.E1000E, "Storage", "00:50:56:01:02:03", False),
    ]
    assert vm.annotation == "Photon OS web front end.\nBuilt by the release pipeline."
    props = vm.products[0].properties
    assert [(x.key, x.category, x.password, x.value) for x in props] == [
        ("guestinfo.hostname", "Networking", False, "photon-web"),
        ("guestinfo.ipaddress", "Networking", False, None),
        ("guestinfo.password", "Credentials", True, ""),
    ]
    assert vm.eulas == ("Use at your own risk.",)
    # what the model cannot hold is kept: video card, VMCI, other vmw:Config, ExtraConfig
    kept = " ".join(r.xml for r in vm.extra)
    for needle in ("VirtualVideoCard", "vmware.vmci", "cpuHotAddEnabled", "ExtraConfig"):
        assert needle in kept
    # vendor children of Items the model took go back into the same device's Item
    assert {r.where for r in vm.extra} == {
        "hardware",
        "item:controller:scsi0",
        "item:disk:vmdisk1",
        "item:nic:nic1",
    }
    assert [(f.href, f.size) for f in p.files] == [
        ("photon-web-disk1.vmdk", 389519872),
        ("photon-web-disk2.vmdk", 68608),
    ]
    assert [d.populated_size for d in p.layout.disks] == [1048576000, 0]
    assert p.hardware_version == "vmx-13"


def test_virtualbox_fixture() -> None:
    data = fixture("virtualbox-7.ovf")
    # vbox:Machine directly in VirtualSystem is not schema-valid (schemas/README.txt)
    assert any("Machine" in e for e in schema_errors(data))
    vm = parse_descriptor(data)
    assert (vm.name, vm.vcpus, vm.memory_mib) == ("debian12", 2, 3072)  # MegaBytes
    assert vm.firmware is Firmware.EFI  # from vbox:Machine/Hardware/Firmware
    assert [(c.type, c.subtype) for c in vm.controllers] == [
        (ControllerType.IDE, "PIIX4"),
        (ControllerType.IDE, "PIIX4"),
        (ControllerType.SATA, "AHCI"),
    ]
    assert [(d.id, d.controller, d.unit, d.name) for d in vm.disks] == [
        ("vmdisk1", "sata0", 0, "disk1"),
        ("vmdisk2", "sata0", 1, "disk2"),
    ]
    assert [c.controller for c in vm.cd_drives] == ["ide1"]
    assert [n.adapter for n in vm.nics] == [NicType.E1000, NicType.VIRTIO]
    assert vm.guest_os.cim_id == 96 and vm.annotation == "Debian 12 test box"
    assert vm.guest_os.virtualbox_id == "Debian_64"  # its vbox:OSType, kept for re-writes
    wheres = sorted(r.where for r in vm.extra)
    assert wheres == ["hardware", "hardware", "virtual-system"]  # USB, sound, vbox:Machine


def test_virtualbox_ovf20_fixture_with_xsd_namespaces() -> None:
    """VirtualBox's OVF 2.0 export puts EthernetPortItem/StorageItem children in
    ``CIM_...AllocationSettingData.xsd`` namespaces, which the DMTF schema does not know; their
    disks, CD drive and NICs are read all the same."""
    data = fixture("virtualbox-7-ovf20.ovf")
    assert b"CIM_StorageAllocationSettingData.xsd" in data
    assert schema_errors(data)  # not the DMTF spelling
    p = parse_package_descriptor(data)
    vm = p.vm
    assert (p.ovf_version, vm.name, vm.vcpus, vm.memory_mib) == ("2.0", "jammy", 2, 4096)
    assert [(d.capacity, d.controller, d.unit) for d in vm.disks] == [(25 * 2**30, "sata0", 0)]
    assert [(c.controller, c.unit) for c in vm.cd_drives] == [("ide0", 1)]
    assert [(n.adapter, n.network, n.connected) for n in vm.nics] == [
        (NicType.E1000, "NAT", True),
        (NicType.VIRTIO, "NAT", False),
    ]
    assert (vm.guest_os.cim_id, vm.guest_os.virtualbox_id) == (94, "Ubuntu_64")
    assert vm.extra == ()  # every Item understood, none kept raw


def test_cot_multi_config_fixture() -> None:
    data = fixture("cot-multi-config.ovf")
    assert_schema_valid(data)
    p = parse_package_descriptor(data)
    vm = p.vm
    # the default configuration (2CPU-4GB) is what the model holds
    assert (vm.vcpus, vm.memory_mib) == (2, 4096)
    assert len(vm.nics) == 2  # GigabitEthernet3 exists only in 4CPU-8GB
    assert vm.nics[0].adapter is NicType.VMXNET3  # "VMXNET3 virtio": first known subtype
    assert [p_.class_ for p_ in vm.products] == [
        "com.example.router",
        "com.example.router.telemetry",
    ]
    throughput = vm.products[0].properties[2]
    assert (throughput.key, throughput.value) == ("throughput", "500M")  # Value of the default
    assert vm.cd_drives[0].iso == "router-bootstrap.iso"
    assert p.layout.isos[0].file.id == "file2"
    assert vm.disks[0].capacity == 8 * 2**30
    assert len(vm.eulas) == 2
    assert p.transport == ("iso", "com.vmware.guestInfo")
    envelope = [r for r in vm.extra if r.where == "envelope"]
    assert len(envelope) == 1 and "DeploymentOptionSection" in envelope[0].xml
    hardware = [r for r in vm.extra if r.where == "hardware"]
    assert len(hardware) == 4 and all("ovf:configuration" in r.xml for r in hardware)


def test_ovf09_fixture() -> None:
    p = parse_package_descriptor(fixture("vmware-ovf09.ovf"))
    vm = p.vm
    assert p.ovf_version == "0.9" and p.hardware_version == "vmx-04"
    assert (vm.name, vm.vcpus, vm.memory_mib) == ("legacy", 1, 256)
    assert vm.guest_os.cim_id == 36
    assert [(d.capacity, d.controller, d.unit) for d in vm.disks] == [(4294967296, "scsi0", 0)]
    assert vm.nics[0].adapter is NicType.PCNET32
    assert [n.name for n in vm.networks] == ["VM Network"]


@pytest.mark.parametrize(
    "name",
    [
        "vmware-ovftool.ovf",
        "virtualbox-7.ovf",
        "virtualbox-7-ovf20.ovf",
        "cot-multi-config.ovf",
        "vmware-ovf09.ovf",
    ],
)
@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_rewrite_keeps_what_was_read(name: str, version: str) -> None:
    """parse -> build -> parse loses nothing the first parse had (vendor parts included), and a
    re-write of a schema-valid input is schema-valid."""
    parsed = parse_package_descriptor(fixture(name))
    first = parsed.vm
    opts = DescriptorOptions(ovf_version=version)  # type: ignore[arg-type]
    # the parsed layout keeps the package's own member names, sizes and ISO files
    again = build_descriptor(first, opts, parsed.layout)
    second_p = parse_package_descriptor(again)
    second = second_p.vm
    if version == "2.0" or name == "vmware-ovf09.ovf":
        # kept fragments move into the written OVF namespace; all else is the same
        assert replace(second, extra=()) == replace(first, extra=())
        assert [r.where for r in second.extra] == [r.where for r in first.extra]
        first = second
    assert second == first
    assert second_p.files == parsed.files
    if name != "virtualbox-7.ovf":
        assert_schema_valid(again)
    # and the written bytes are stable from then on
    assert build_descriptor(second, opts, second_p.layout) == again
    # Items written from the model get InstanceIDs no kept Item uses (per-configuration Items
    # of exclusive configurations may share one among themselves, DSP0243 9.8)
    from lxml import etree

    root = etree.fromstring(again)
    items = list(root.iter("{*}Item", "{*}EthernetPortItem", "{*}StorageItem"))
    conf = f"{{http://schemas.dmtf.org/ovf/envelope/{version[0]}}}configuration"
    plain = [i.findtext("{*}InstanceID") for i in items if i.get(conf) is None]
    per_conf = {i.findtext("{*}InstanceID") for i in items if i.get(conf) is not None}
    assert len(set(plain)) == len(plain) and not set(plain) & per_conf


def test_raw_xml_where_is_respected() -> None:
    vm = parse_descriptor(fixture("cot-multi-config.ovf"))
    from lxml import etree

    root = etree.fromstring(build_descriptor(vm))
    ns = "{http://schemas.dmtf.org/ovf/envelope/1}"
    assert root.find(f"{ns}DeploymentOptionSection") is not None
    hw = root.find(f"{ns}VirtualSystem/{ns}VirtualHardwareSection")
    assert hw is not None
    assert len(hw.findall(f"{ns}Item[@{ns}configuration]")) == 4


# -- hostile and broken input -----------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><References/>&lol9;</Envelope>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References/>
  <VirtualSystem ovf:id="x"><Info>&xxe;</Info><Name>&xxe;</Name></VirtualSystem>
</Envelope>"""

XXE_PARAMETER = b"""<?xml version="1.0"?>
<!DOCTYPE Envelope [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd"> %remote;]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>"""


@pytest.mark.parametrize(
    "data",
    [
        BILLION_LAUGHS,
        XXE,
        XXE_PARAMETER,
        XXE.decode().encode("utf-16"),  # the same attack in UTF-16 with a BOM
        b'<?xml version="1.0"?><!DOCTYPE Envelope SYSTEM "file:///etc/passwd"><Envelope/>',
    ],
    ids=["billion-laughs", "xxe-file", "xxe-parameter", "xxe-utf16", "external-dtd"],
)
@pytest.mark.parametrize("func", [parse_descriptor, validate_descriptor])
def test_hostile_xml_refused(data: bytes, func: object) -> None:
    with pytest.raises(InvalidOvfError) as exc:
        func(data)  # type: ignore[operator]
    assert exc.value.code == "OVF.1002"
    assert "DTD" in exc.value.details or "entit" in exc.value.details
    assert "root:" not in str(exc.value)  # nothing of /etc/passwd


def test_oversized_refused() -> None:
    data = fixture("vmware-ovftool.ovf")
    pad = b"<!--" + b" " * (MAX_DESCRIPTOR_SIZE) + b"-->"
    with pytest.raises(InvalidOvfError, match="limit") as exc:
        parse_descriptor(data + pad)
    assert exc.value.code == "OVF.1002"


@pytest.mark.parametrize(
    "data",
    [b"", b"<Envelope", b"not xml at all", b"<a></b>", b"\xff\xfe\x00garbage"],
)
def test_malformed_is_ovf_1001(data: bytes) -> None:
    with pytest.raises(OvfParseError) as exc:
        parse_descriptor(data)
    assert exc.value.code == "OVF.1001"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<root/>", "Envelope"),
        (
            b'<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><References/></Envelope>',
            "no VirtualSystem",
        ),
        (
            fixture("vmware-ovftool.ovf").replace(
                b"<rasd:VirtualQuantity>2048<", b"<rasd:VirtualQuantity>lots<"
            ),
            "not an integer",
        ),
        (
            fixture("vmware-ovftool.ovf").replace(b'ovf:capacity="16"', b'ovf:capacity="${nope}"'),
            "nope",
        ),
        (
            fixture("vmware-ovftool.ovf").replace(
                b"<rasd:Parent>3</rasd:Parent>", b"<rasd:Parent>99</rasd:Parent>"
            ),
            "Parent",
        ),
        (
            fixture("vmware-ovftool.ovf").replace(b"byte * 2^30", b"furlongs"),
            "allocation units",
        ),
    ],
    ids=["not-ovf", "no-vs", "bad-int", "unknown-property", "bad-parent", "bad-units"],
)
def test_unusable_descriptor_is_ovf_1002(data: bytes, message: str) -> None:
    with pytest.raises(InvalidOvfError, match=message):
        parse_descriptor(data)


@pytest.mark.parametrize(
    ("make", "message"),
    [(make, message) for _, make, message in NUMBER_CASES],
    ids=[case_id for case_id, _, _ in NUMBER_CASES],
)
def test_numbers_and_counts_out_of_range_are_ovf_1002(
    make: Callable[[], bytes], message: str
) -> None:
    """Issue 12 #2 (these were OverflowError / ValueError tracebacks) and #12 (caps)."""
    with pytest.raises(InvalidOvfError, match=message) as exc:
        parse_package_descriptor(make())
    assert exc.value.code == "OVF.1002"


def test_largest_allowed_values_still_read() -> None:
    data = vmware(b"<rasd:VirtualQuantity>4<", b"<rasd:VirtualQuantity>1024<")
    data = data.replace(b"<rasd:VirtualQuantity>2048<", b"<rasd:VirtualQuantity>25165824<")
    data = data.replace(b"byte * 2^30", b"byte * 2^40")
    vm = parse_descriptor(data)
    assert (vm.vcpus, vm.memory_mib) == (1024, 24 << 20)
    assert vm.disks[0].capacity == 16 << 40


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mangled_descriptors_never_escape_as_other_errors(data: st.DataObject) -> None:
    """Whatever is cut, repeated or replaced, the reader returns a VM or raises an OvfkitError."""
    base = fixture("vmware-ovftool.ovf")
    start = data.draw(st.integers(0, len(base)))
    end = data.draw(st.integers(start, min(len(base), start + 200)))
    filler = data.draw(st.sampled_from([b"", b"x", b"-1", b"<", b"&amp;", b"99999999999999999999"]))
    mangled = base[:start] + filler + base[end:]
    try:
        parse_descriptor(mangled)
    except OvfkitError as exc:
        assert exc.code in ("OVF.1001", "OVF.1002")


def test_vendor_raw_xml_round_trips_verbatim() -> None:
    vm = parse_descriptor(fixture("virtualbox-7.ovf"))
    machine = next(r for r in vm.extra if r.where == "virtual-system")
    assert isinstance(machine, RawXml) and 'Firmware type="EFI"/>' in machine.xml
    assert machine in parse_descriptor(build_descriptor(vm)).extra


def test_validate_rejects_non_ovf_and_malformed() -> None:
    with pytest.raises(InvalidOvfError, match="namespace"):
        validate_descriptor(b"<Envelope/>")
    with pytest.raises(InvalidOvfError, match="namespace"):
        validate_descriptor(fixture("vmware-ovf09.ovf"))  # OVF 0.9 has no DMTF schema
    with pytest.raises(OvfParseError):
        validate_descriptor(b"<Envelope")
