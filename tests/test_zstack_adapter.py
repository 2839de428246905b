"""ZStack VmInstanceInventory → model: the example inventory, controller placement, guest OS,
firmware, and every malformed input giving SYS.1007 with the field named."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ovfkit
from ovfkit.errors import InvalidArgumentError, OvfkitError
from ovfkit.model import CdDrive, ControllerType, Disk, Firmware, NicType, VirtualMachine
from ovfkit.zstack import vm_from_zstack
from ovfkit.zstack.adapter import MAX_DISKS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
EXAMPLE = FIXTURES / "zstack" / "vm-inventory-example.json"


def example() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(EXAMPLE.read_text())
    return doc


def bare() -> dict[str, Any]:
    vm: dict[str, Any] = example()["inventories"][0]
    return vm


def volume(
    device_id: int, *, vtype: str = "Data", size: int = 1 << 30, **extra: Any
) -> dict[str, Any]:
    return {
        "uuid": f"{device_id:032x}",
        "name": f"vol-{device_id}",
        "installPath": f"/ps/vol-{device_id}.qcow2",
        "type": vtype,
        "format": "qcow2",
        "size": size,
        "deviceId": device_id,
        "isShareable": False,
        **extra,
    }


def with_data_disks(n: int) -> dict[str, Any]:
    vm = bare()
    vm["allVolumes"] = [vm["allVolumes"][0]] + [volume(i + 1) for i in range(n)]
    return vm


def check_placement(vm: VirtualMachine) -> None:
    """Every device on a controller of the VM, within the controller's unit rules, no clashes."""
    used: set[tuple[str, int]] = set()
    devices: list[Disk | CdDrive] = [*vm.disks, *vm.cd_drives]
    for dev in devices:
        c = vm.controller(dev.controller)
        if c.type is ControllerType.SCSI:
            assert dev.unit in range(16) and dev.unit != 7
        elif c.type is ControllerType.IDE:
            assert dev.unit in (0, 1)
        elif c.type is ControllerType.SATA:
            assert dev.unit in range(30)
        assert (dev.controller, dev.unit) not in used
        used.add((dev.controller, dev.unit))
    for t in ControllerType:
        buses = [c.bus_number for c in vm.controllers if c.type is t]
        assert buses == list(range(len(buses)))
    assert sum(c.type is ControllerType.SCSI for c in vm.controllers) <= 4
    assert sum(c.type is ControllerType.IDE for c in vm.controllers) <= 2


# --- the example inventory ----------------------------------------------------------------------


def test_example_inventory_gives_the_expected_model() -> None:
    vm = vm_from_zstack(EXAMPLE.read_bytes())
    assert vm.name == "web-01"
    assert vm.description == "web server VM"
    assert vm.vcpus == 2
    assert vm.memory_mib == 4096
    assert vm.firmware is Firmware.BIOS
    assert (vm.guest_os.cim_id, vm.guest_os.vmware_id) == (107, "centos7_64Guest")
    assert vm.architecture == "x86_64"

    assert [d.capacity for d in vm.disks] == [42949672960, 107374182400]
    assert [d.name for d in vm.disks] == ["ROOT-for-web-01", "DATA-for-web-01"]
    assert all(d.source is not None and d.source.format == "qcow2" for d in vm.disks)
    assert vm.disks[0].source is not None
    assert vm.disks[0].source.path.endswith("f52d7c94d69d4bbb97d36a270fe910c3.qcow2")
    assert [d.boot_order for d in vm.disks] == [1, None]
    scsi = vm.controller(vm.disks[0].controller)
    assert (scsi.type, scsi.subtype, scsi.bus_number) == (ControllerType.SCSI, "lsilogic", 0)
    assert [(d.controller, d.unit) for d in vm.disks] == [(scsi.id, 0), (scsi.id, 1)]

    assert [n.adapter for n in vm.nics] == [NicType.VMXNET3, NicType.E1000]
    assert [n.mac for n in vm.nics] == ["fa:f0:08:8c:20:00", "fa:e3:87:b1:71:01"]
    assert [n.network for n in vm.nics] == [
        "2ac1b70fdb0f48769a29c6ebd0262cca",
        "c6134efd3af94db7b2928ddc5deba540",
    ]
    assert [net.name for net in vm.networks] == [n.network for n in vm.nics]

    (cd,) = vm.cd_drives
    assert cd.iso is not None and cd.iso.endswith("7e3f1c2b9d8a4b6c8e0f1a2b3c4d5e6f.iso")
    assert vm.controller(cd.controller).type is ControllerType.IDE
    check_placement(vm)


def test_every_input_shape_gives_the_same_model() -> None:
    text = EXAMPLE.read_text()
    expected = vm_from_zstack(text)
    assert vm_from_zstack(text.encode()) == expected
    assert vm_from_zstack(example()) == expected
    assert vm_from_zstack(bare()) == expected
    assert vm_from_zstack(json.dumps(bare())) == expected
    assert vm_from_zstack({"inventory": bare()}) == expected
    assert vm_from_zstack(b"\xef\xbb\xbf" + text.encode()) == expected  # UTF-8 BOM


def test_top_level_api_exports_the_adapter() -> None:
    assert ovfkit.vm_from_zstack is vm_from_zstack
    assert "vm_from_zstack" in dir(ovfkit)


# --- volumes and controllers --------------------------------------------------------------------


def test_forty_data_disks_spread_over_scsi_controllers() -> None:
    vm = vm_from_zstack(with_data_disks(40))
    assert len(vm.disks) == 41
    check_placement(vm)
    per_controller = {
        c.id: sum(d.controller == c.id for d in vm.disks)
        for c in vm.controllers
        if c.type is ControllerType.SCSI
    }
    assert per_controller == {"scsi0": 15, "scsi1": 15, "scsi2": 11}
    assert {vm.controller(d.controller).subtype for d in vm.disks} == {"lsilogic"}
    assert [d.unit for d in vm.disks if d.controller == "scsi0"] == [*range(7), *range(8, 16)]
    # the data disks keep their deviceId order
    assert [d.name for d in vm.disks[1:]] == [f"vol-{i + 1}" for i in range(40)]


def test_beyond_four_scsi_controllers_disks_go_to_sata() -> None:
    vm = vm_from_zstack(with_data_disks(69))  # 70 disks: 60 on SCSI, 10 on SATA
    check_placement(vm)
    kinds = [vm.controller(d.controller).type for d in vm.disks]
    assert kinds.count(ControllerType.SCSI) == 60
    assert kinds.count(ControllerType.SATA) == 10
    sata = [c for c in vm.controllers if c.type is ControllerType.SATA]
    assert [c.subtype for c in sata] == ["vmware.sata.ahci"]


def test_the_most_disks_fit_and_one_more_is_refused() -> None:
    check_placement(vm_from_zstack(with_data_disks(MAX_DISKS - 1)))
    with pytest.raises(InvalidArgumentError, match=r"allVolumes has \d+ disks"):
        vm_from_zstack(with_data_disks(MAX_DISKS))


def test_root_first_data_by_device_id_shareable_and_memory_skipped() -> None:
    vm_doc = bare()
    root = vm_doc["allVolumes"][0]
    vm_doc["allVolumes"] = [
        volume(3),
        volume(2, isShareable=True),
        volume(9, vtype="Memory"),
        volume(1),
        root,
    ]
    vm = vm_from_zstack(vm_doc)
    assert [d.name for d in vm.disks] == ["ROOT-for-web-01", "vol-1", "vol-3"]
    assert [d.unit for d in vm.disks] == [0, 1, 2]


def test_memory_rounds_up_to_whole_mib() -> None:
    vm_doc = bare()
    vm_doc["memorySize"] = (1 << 30) + 1
    assert vm_from_zstack(vm_doc).memory_mib == 1025
    vm_doc["memorySize"] = 1
    assert vm_from_zstack(vm_doc).memory_mib == 1


def test_cdroms_on_two_ide_controllers_and_empty_drives() -> None:
    vm_doc = bare()
    vm_doc["vmCdRoms"] = [
        {"deviceId": 2, "isoInstallPath": "/iso/c.iso"},
        {"deviceId": 0},
        {"deviceId": 1, "isoInstallPath": None},
    ]
    vm = vm_from_zstack(vm_doc)
    assert [cd.iso for cd in vm.cd_drives] == [None, None, "/iso/c.iso"]
    assert [(cd.controller, cd.unit) for cd in vm.cd_drives] == [
        ("ide0", 0),
        ("ide0", 1),
        ("ide1", 0),
    ]
    check_placement(vm)
    vm_doc["vmCdRoms"] = [{"deviceId": i} for i in range(5)]
    with pytest.raises(InvalidArgumentError, match=r"vmCdRoms has 5 CD-ROMs"):
        vm_from_zstack(vm_doc)


def test_no_cdroms_no_ide_controller() -> None:
    vm_doc = bare()
    del vm_doc["vmCdRoms"]
    vm = vm_from_zstack(vm_doc)
    assert vm.cd_drives == ()
    assert all(c.type is not ControllerType.IDE for c in vm.controllers)


def test_nics_on_one_l3_share_one_network_and_disabled_nic_disconnected() -> None:
    vm_doc = bare()
    vm_doc["vmNics"][1]["l3NetworkUuid"] = vm_doc["vmNics"][0]["l3NetworkUuid"]
    vm_doc["vmNics"][1]["state"] = "disable"
    vm_doc["vmNics"][0]["driverType"] = "pcnet"
    vm = vm_from_zstack(vm_doc)
    assert len(vm.networks) == 1
    assert [n.connected for n in vm.nics] == [True, False]
    assert vm.nics[0].adapter is NicType.PCNET32


def test_nics_follow_device_id_and_default_driver_follows_platform() -> None:
    vm_doc = bare()
    vm_doc["vmNics"].reverse()
    for nic in vm_doc["vmNics"]:
        del nic["driverType"]
    vm = vm_from_zstack(vm_doc)
    assert [n.mac for n in vm.nics] == ["fa:f0:08:8c:20:00", "fa:e3:87:b1:71:01"]
    assert {n.adapter for n in vm.nics} == {NicType.VMXNET3}
    vm_doc["platform"] = "Windows"
    vm_doc["guestOsType"] = "Windows 10"
    assert {n.adapter for n in vm_from_zstack(vm_doc).nics} == {NicType.E1000}


# --- guest OS, Windows, firmware ------------------------------------------------------------------


def test_windows_gets_lsilogicsas_and_windows_os_ids() -> None:
    vm_doc = with_data_disks(3)
    vm_doc["platform"] = "Windows"
    vm_doc["guestOsType"] = "WindowsServer 2019"
    vm = vm_from_zstack(vm_doc)
    assert {c.subtype for c in vm.controllers if c.type is ControllerType.SCSI} == {"lsilogicsas"}
    assert vm.disks[0].controller == "scsi0" and vm.disks[0].unit == 0
    assert (vm.guest_os.cim_id, vm.guest_os.vmware_id) == (121, "windows2019srv_64Guest")
    assert vm.guest_os.virtualbox_id == "Windows2019_64"


def test_windows_platform_without_guest_os_type_gets_windows_defaults() -> None:
    vm_doc = bare()
    vm_doc["platform"] = "WindowsVirtio"
    del vm_doc["guestOsType"]
    vm = vm_from_zstack(vm_doc)
    assert vm.guest_os.vmware_id == "windows9Server64Guest"
    assert "Windows" in vm.guest_os.description


def test_old_windows_keeps_parallel_lsilogic() -> None:
    vm_doc = bare()
    vm_doc["platform"] = "Windows"
    vm_doc["guestOsType"] = "WindowsServer 2003"
    vm = vm_from_zstack(vm_doc)
    assert vm.controller("scsi0").subtype == "lsilogic"
    assert (vm.guest_os.cim_id, vm.guest_os.vmware_id) == (70, "winNetEnterprise64Guest")


@pytest.mark.parametrize(
    ("guest", "arch", "cim", "vmw"),
    [
        ("CentOS 7", "i686", 106, "centos7Guest"),
        ("Ubuntu 24", "x86_64", 94, "ubuntu64Guest"),
        ("ubuntu  20", "i386", 93, "ubuntuGuest"),
        ("RHEL 8", "x86_64", 80, "rhel8_64Guest"),
        ("Kylin 10", "aarch64", 101, "other4xLinux64Guest"),
        ("Windows 7", "x86_64", 105, "windows7_64Guest"),
        ("Solaris 10", "x86_64", 81, "solaris10_64Guest"),
        ("Plan 9", "x86_64", 102, "otherGuest64"),
        ("Plan 9", "i686", 1, "otherGuest"),
        ("", "x86_64", 102, "otherGuest64"),
    ],
)
def test_guest_os_table(guest: str, arch: str, cim: int, vmw: str) -> None:
    vm_doc = bare()
    vm_doc["guestOsType"] = guest
    vm_doc["architecture"] = arch
    vm = vm_from_zstack(vm_doc)
    assert (vm.guest_os.cim_id, vm.guest_os.vmware_id) == (cim, vmw)
    assert vm.guest_os.description
    assert vm.architecture == arch


def test_unknown_guest_os_keeps_its_name_as_description() -> None:
    vm_doc = bare()
    vm_doc["guestOsType"] = "Plan 9"
    assert vm_from_zstack(vm_doc).guest_os.description == "Plan 9"


@pytest.mark.parametrize(
    ("tags", "firmware"),
    [
        (["bootMode::UEFI"], Firmware.EFI),
        (["bootMode::UEFI_WITH_CSM"], Firmware.EFI),
        (["bootMode::Legacy"], Firmware.BIOS),
        ([{"tag": "bootMode::UEFI", "uuid": "x"}], Firmware.EFI),
        (["other::tag", "bootMode::UEFI", "bootMode::UEFI"], Firmware.EFI),
        ([], Firmware.BIOS),
    ],
)
def test_boot_mode_tag_in_inventory(tags: list[Any], firmware: Firmware) -> None:
    vm_doc = bare()
    vm_doc["systemTags"] = tags
    assert vm_from_zstack(vm_doc).firmware is firmware


def test_boot_mode_tag_as_argument_and_aarch64_default() -> None:
    assert vm_from_zstack(bare(), system_tags=["bootMode::UEFI"]).firmware is Firmware.EFI
    vm_doc = bare()
    vm_doc["architecture"] = "aarch64"
    assert vm_from_zstack(vm_doc).firmware is Firmware.EFI
    assert vm_from_zstack(vm_doc, system_tags=["bootMode::Legacy"]).firmware is Firmware.BIOS


def test_boot_order_tag() -> None:
    vm = vm_from_zstack(bare(), system_tags=["bootOrder::CdRom,HardDisk"])
    assert vm.cd_drives[0].boot_order == 1
    assert vm.disks[0].boot_order == 2
    vm_doc = bare()
    vm_doc["vmCdRoms"] = []
    vm = vm_from_zstack(vm_doc, system_tags=["bootOrder::CdRom,HardDisk,Network"])
    assert vm.disks[0].boot_order == 1


# --- malformed input ------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], Any]


def _set(path: str, value: Any) -> Mutation:
    def mutate(vm: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = vm
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _del(path: str) -> Mutation:
    def mutate(vm: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = vm
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        del node[last]

    return mutate


BAD: list[tuple[str, Mutation, str]] = [
    ("empty name", _set("name", ""), "name must not be empty"),
    ("blank name", _set("name", "  \t"), "name must not be empty"),
    ("name not a string", _set("name", 5), "name must be a string"),
    ("name too long", _set("name", "x" * 256), "name is longer than 255"),
    ("no name", _del("name"), "name is missing"),
    ("no allVolumes", _del("allVolumes"), "allVolumes is missing"),
    ("allVolumes not a list", _set("allVolumes", {}), "allVolumes must be a JSON array"),
    ("no volumes at all", _set("allVolumes", []), "allVolumes has no"),
    ("no root", _set("allVolumes.0.type", "Data"), "allVolumes has no"),
    ("volume not object", _set("allVolumes.1", 7), "allVolumes[1] must be a JSON object"),
    ("negative size", _set("allVolumes.1.size", -1), "allVolumes[1].size must be at least 1"),
    ("zero size", _set("allVolumes.1.size", 0), "allVolumes[1].size must be at least 1"),
    ("float size", _set("allVolumes.1.size", 1.5), "allVolumes[1].size must be an integer"),
    ("string size", _set("allVolumes.1.size", "10"), "allVolumes[1].size must be an integer"),
    ("bool size", _set("allVolumes.1.size", True), "allVolumes[1].size must be an integer"),
    ("huge size", _set("allVolumes.1.size", 1 << 70), "allVolumes[1].size is out of range"),
    ("missing size", _del("allVolumes.1.size"), "allVolumes[1].size is missing"),
    ("unknown type", _set("allVolumes.1.type", "Swap"), "allVolumes[1].type is not Root or Data"),
    ("no installPath", _del("allVolumes.0.installPath"), "allVolumes[0].installPath is missing"),
    ("bad format", _set("allVolumes.1.format", "zip"), "allVolumes[1].format is not a disk"),
    ("bad shareable", _set("allVolumes.1.isShareable", "no"), "allVolumes[1].isShareable"),
    ("negative deviceId", _set("allVolumes.1.deviceId", -2), "allVolumes[1].deviceId"),
    ("two roots", _set("allVolumes.1.type", "Root"), "allVolumes[1].type is a second Root"),
    ("unknown driverType", _set("vmNics.1.driverType", "rtl8139"), "vmNics[1].driverType"),
    ("bad MAC", _set("vmNics.0.mac", "fa:f0:08:8c:20"), "vmNics[0].mac is not a MAC"),
    ("multicast MAC", _set("vmNics.0.mac", "01:00:5e:00:00:01"), "vmNics[0].mac is a multicast"),
    ("duplicate MAC", _set("vmNics.1.mac", "fa:f0:08:8c:20:00"), "vmNics[1].mac duplicates"),
    ("duplicate NIC deviceId", _set("vmNics.1.deviceId", 0), "vmNics[1].deviceId duplicates"),
    ("no l3", _del("vmNics.0.l3NetworkUuid"), "vmNics[0].l3NetworkUuid is missing"),
    ("vmNics not list", _set("vmNics", "x"), "vmNics must be a JSON array"),
    ("cpuNum zero", _set("cpuNum", 0), "cpuNum must be at least 1"),
    ("cpuNum missing", _del("cpuNum"), "cpuNum is missing"),
    ("memory zero", _set("memorySize", 0), "memorySize must be at least 1"),
    ("memory negative", _set("memorySize", -4096), "memorySize must be at least 1"),
    ("unknown platform", _set("platform", "AmigaOS"), "platform is not one of"),
    ("bad architecture", _set("architecture", "x86 64/"), "architecture is not"),
    ("bad boot mode", _set("systemTags", ["bootMode::BIOS"]), "systemTags[0] has an unknown boot"),
    (
        "contradicting boot modes",
        _set("systemTags", ["bootMode::UEFI", "bootMode::Legacy"]),
        "systemTags[1] contradicts systemTags[0]",
    ),
    ("tag not a string", _set("systemTags", [3]), "systemTags[0] must be a string"),
    ("bad boot order", _set("systemTags", ["bootOrder::Floppy"]), "systemTags[0] names an"),
    ("cd not object", _set("vmCdRoms", [None]), "vmCdRoms[0] must be a JSON object"),
    ("iso not string", _set("vmCdRoms.0.isoInstallPath", 1), "vmCdRoms[0].isoInstallPath must"),
    ("non-XML char", _set("description", "a\x1bb"), "description contains a character XML"),
    ("lone surrogate", _set("allVolumes.1.name", "\ud800"), "allVolumes[1].name contains"),
    # issue 12 #12: counts, sizes and absurd values capped (ovfkit.limits)
    ("cpuNum over ZStack's range", _set("cpuNum", 1025), "cpuNum is out of range (at most 1024)"),
    ("absurd memory", _set("memorySize", 1 << 62), "memorySize is out of range"),
    (
        "65 NICs",
        _set("vmNics", [{"l3NetworkUuid": "l3", "deviceId": i} for i in range(65)]),
        "vmNics has 65 NICs; a VM can carry at most 64",
    ),
    ("long description", _set("description", "d" * 2049), "description is longer than 2048"),
    ("long installPath", _set("allVolumes.1.installPath", "/" + "p" * 4096), "PATH_MAX"),
    ("long ISO path", _set("vmCdRoms.0.isoInstallPath", "/" + "i" * 4096), "longer than 4096"),
]


@pytest.mark.parametrize(("case", "mutate", "message"), BAD, ids=[b[0] for b in BAD])
def test_malformed_inventory_names_the_field(case: str, mutate: Mutation, message: str) -> None:
    vm_doc = example()
    mutate(vm_doc["inventories"][0])
    with pytest.raises(InvalidArgumentError) as info:
        vm_from_zstack(vm_doc)
    assert info.value.code == "SYS.1007"
    assert message in info.value.details, info.value.details


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        ("not json at all", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[1, 2]", "inventory must be a JSON object"),
        ("42", "inventory must be a JSON object"),
        ('{"inventories": []}', "inventories must hold exactly one VM, not 0"),
        ('{"inventories": [{}, {}]}', "inventories must hold exactly one VM, not 2"),
        ('{"inventories": [1]}', "inventories[0] must be a JSON object"),
        ('{"inventories": {}}', "inventories must be a JSON array"),
        ('{"name": "a", "cpuNum": NaN}', "NaN is not a JSON number"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (b"[" * 200_000, "nested too deeply"),
        (b" " * ((4 << 20) + 1), "over the limit of 4194304"),  # 60,000 NICs would be ~9 MB
    ],
)
def test_undecodable_input(doc: str | bytes, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r".") as info:
        vm_from_zstack(doc)
    assert message in info.value.details


def test_system_tags_argument_must_be_a_list() -> None:
    with pytest.raises(InvalidArgumentError, match="system_tags"):
        vm_from_zstack(bare(), system_tags="bootMode::UEFI")


# --- property tests -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


def _outcome(doc: Any) -> None:
    try:
        vm = vm_from_zstack(doc)
    except OvfkitError as exc:
        assert exc.code == "SYS.1007"
        assert exc.details
        return
    assert isinstance(vm, VirtualMachine)
    check_placement(vm)
    # whatever the adapter accepts, a descriptor can express
    from ovfkit.ovf import build_descriptor

    assert build_descriptor(vm).startswith(b"<?xml")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_gives_a_vm_or_an_ovfkit_error(doc: Any) -> None:
    _outcome(doc)
    _outcome(json.dumps(doc))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_vm_or_an_ovfkit_error(doc: bytes) -> None:
    _outcome(doc)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


_EXAMPLE_PATHS = _paths(bare())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_EXAMPLE_PATHS), json_values | st.just(None), st.booleans())
def test_one_field_of_the_example_replaced_by_garbage(
    path: tuple[Any, ...], value: Any, delete: bool
) -> None:
    vm_doc = copy.deepcopy(bare())
    node: Any = vm_doc
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    _outcome(vm_doc)


# --- the descriptor of what the adapter builds ----------------------------------------------


def _variants() -> dict[str, tuple[dict[str, Any], list[str]]]:
    windows = with_data_disks(69)
    windows.update(platform="Windows", guestOsType="WindowsServer 2016")
    many_cds = bare()
    many_cds["vmCdRoms"] = [{"deviceId": i} for i in range(4)]
    i686 = bare()
    i686.update(architecture="i686", guestOsType="Debian 9")
    return {
        "example": (bare(), []),
        "windows-70-disks-uefi": (windows, ["bootMode::UEFI"]),
        "four-cdroms-cd-boot": (many_cds, ["bootOrder::CdRom,HardDisk"]),
        "i686": (i686, []),
    }


@pytest.mark.parametrize("variant", sorted(_variants()))
@pytest.mark.parametrize("ovf_version", ["1.0", "2.0"])
def test_descriptor_of_the_adapters_vm_validates_and_reads_back(
    variant: str, ovf_version: str
) -> None:
    from ovfkit.ovf import (
        DescriptorOptions,
        build_descriptor,
        parse_descriptor,
        validate_descriptor,
    )

    doc, tags = _variants()[variant]
    vm = vm_from_zstack(doc, system_tags=tags)
    xml = build_descriptor(vm, DescriptorOptions(ovf_version=ovf_version))  # type: ignore[arg-type]
    validate_descriptor(xml)
    validate_descriptor(xml, strict=True)
    back = parse_descriptor(xml)
    assert back.name == vm.name
    assert (back.vcpus, back.memory_mib, back.firmware) == (vm.vcpus, vm.memory_mib, vm.firmware)
    assert (back.guest_os.cim_id, back.guest_os.vmware_id) == (
        vm.guest_os.cim_id,
        vm.guest_os.vmware_id,
    )
    assert [d.capacity for d in back.disks] == [d.capacity for d in vm.disks]
    assert [(n.adapter, n.mac, n.network) for n in back.nics] == [
        (n.adapter, n.mac, n.network) for n in vm.nics
    ]
    assert len(back.cd_drives) == len(vm.cd_drives)
    placed = {
        (vm.controller(d.controller).type, vm.controller(d.controller).bus_number, d.unit)
        for d in vm.disks
    }
    placed_back = {
        (back.controller(d.controller).type, back.controller(d.controller).bus_number, d.unit)
        for d in back.disks
    }
    assert placed_back == placed


def test_guest_os_table_data_is_consistent() -> None:
    from ovfkit.zstack.guest_os import _TABLE, DMTF_OS_TYPES, WINDOWS_DEFAULT, lookup

    for entry in (*_TABLE, WINDOWS_DEFAULT):
        for cim, vmw, vbox, bits in (
            (entry.cim_id, entry.vmware_id, entry.vbox_id, 64),
            (entry.cim_id_32, entry.vmware_id_32, entry.vbox_id_32, 32),
        ):
            dmtf = DMTF_OS_TYPES[cim]  # every id written is a DMTF 2.55 OSType value
            assert ("64" in vmw) == (bits == 64), entry
            assert ("64" in dmtf) <= (bits == 64), entry  # no 64-bit id on a 32-bit guest
            assert ("Windows" in dmtf) == entry.windows == vmw.startswith("win"), entry
            # Windows ids mean other things to VirtualBox above 115 (and 103/105 are 32-bit
            # there): every Windows guest names its VirtualBox type, nothing else needs one.
            assert bool(vbox) == entry.windows, entry
            assert vbox.endswith("_64") == (bits == 64) or not vbox, entry
            if not entry.windows:
                assert cim <= 112, entry  # ids on which DMTF and VirtualBox agree
        assert lookup(entry.release.upper()) is (entry if entry is not WINDOWS_DEFAULT else None)


@pytest.mark.parametrize(
    ("guest", "cim", "vmw", "vbox", "cim32", "vbox32"),
    [
        ("WindowsServer 2008", 77, "winLonghorn64Guest", "Windows2008_64", 76, "Windows2008"),
        ("WindowsServer 2012", 112, "windows8Server64Guest", "Windows2012_64", 76, "Windows2008"),
        ("WindowsServer 2012 R2", 115, "windows8Server64Guest", "Windows2012_64", 76, ""),
        ("WindowsServer 2016", 116, "windows9Server64Guest", "Windows2016_64", 76, ""),
        ("WindowsServer 2019", 121, "windows2019srv_64Guest", "Windows2019_64", 76, ""),
        ("WindowsServer 2022", 123, "windows2019srvNext_64Guest", "Windows2022_64", 76, ""),
        ("Windows 7", 105, "windows7_64Guest", "Windows7_64", 105, "Windows7"),
        ("Windows 8", 114, "windows8_64Guest", "Windows8_64", 113, "Windows8"),
        ("Windows 10", 120, "windows9_64Guest", "Windows10_64", 119, "Windows10"),
        ("Windows 11", 122, "windows11_64Guest", "Windows11_64", 119, "Windows10"),
        ("Windows xp", 71, "winXPPro64Guest", "WindowsXP_64", 67, "WindowsXP"),
        ("CentOS 7", 107, "centos7_64Guest", "", 106, ""),
        ("Debian 10", 96, "debian10_64Guest", "", 95, ""),
        ("Kylin 10", 101, "other4xLinux64Guest", "", 36, ""),
    ],
)
def test_guest_os_ids_chosen(
    guest: str, cim: int, vmw: str, vbox: str, cim32: int, vbox32: str
) -> None:
    """The decision of ovfkit.zstack.guest_os pinned: DMTF 2.55 ids (Proxmox maps them to its
    Windows ostypes: 116/121 win10, 122/123 win11, 112/115 win8), vmw:osType unchanged, and
    VirtualBox's own type for Windows guests."""
    doc = bare()
    doc["guestOsType"] = guest
    g = vm_from_zstack(doc).guest_os
    assert (g.cim_id, g.vmware_id, g.virtualbox_id) == (cim, vmw, vbox)
    doc["architecture"] = "i686"
    g32 = vm_from_zstack(doc).guest_os
    assert g32.cim_id == cim32
    assert g32.virtualbox_id == (vbox32 or ("Windows2008" if "Server" in guest else ""))
