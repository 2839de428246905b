"""ZStack VmInstanceInventory → :class:`~ovfkit.model.VirtualMachine`.

Pure: JSON (text, bytes or an already decoded mapping) in, a model out; no files are opened. The
inventory is untrusted input, so every field is checked and every fault raises
:class:`~ovfkit.errors.InvalidArgumentError` (SYS.1007) naming the field, e.g.
``allVolumes[1].size``; nothing else escapes.

Choices, with their reasons:

- Disks: the Root volume, then Data volumes by deviceId; shareable volumes are skipped (ZStack's
  ExportVmOvaPackage does the same), as are Memory volumes (memory snapshots, not guest disks).
- memorySize is bytes; OVF carries MiB (``byte * 2^20``). A size that is not a whole number of MiB
  is rounded *up*, so the guest never gets less memory than it had.
- NICs: ``virtio`` → VmxNet3. OVF has no virtio adapter VMware understands; VmxNet3 is VMware's
  paravirtual NIC, the counterpart of virtio (virt-v2v turns VmxNet3 back into virtio on KVM).
  ``e1000`` → E1000 and ``pcnet`` → PCNet32 are the same emulated devices. A NIC without a
  driverType gets ZStack's KVM default: virtio unless the platform is Windows or Other (e1000).
  Each distinct l3NetworkUuid becomes one Network named by that uuid (the inventory does not
  carry L3 names); MACs are kept (lower case).
- Storage: data and root disks share one SCSI controller type: ``lsilogic`` for Linux and other
  guests (inbox ``mptspi`` driver), ``lsilogicsas`` for Windows Vista/2008 and later (inbox
  ``lsi_sas``; VMware's own default for those guests), ``lsilogic`` for Windows XP/2003 (no inbox
  SAS driver). VMware boots from SCSI unit 0, so the root disk goes first on SCSI 0; virt-v2v and
  VirtualBox remap controllers anyway. SCSI units 0-6 and 8-15 (7 is the controller itself), up
  to 4 SCSI controllers (VMware's maximum); further disks go to SATA AHCI controllers (30 units,
  4 controllers). CD-ROMs sit on IDE (2 units per controller, 2 controllers).
- Firmware: system tag ``bootMode::UEFI`` or ``bootMode::UEFI_WITH_CSM`` → EFI (ZStack treats
  both as UEFI: ``VmTpmManager.isUefiBootMode``), ``bootMode::Legacy`` → BIOS. Without a tag,
  aarch64 VMs are EFI (ZStack boots ARM guests with UEFI only), others BIOS.
- Boot order: system tag ``bootOrder::CdRom,HardDisk,...`` when present, else the root disk only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

from .. import limits
from ..errors import InvalidArgumentError
from ..model import (
    CdDrive,
    Controller,
    ControllerType,
    Disk,
    DiskSource,
    Firmware,
    Network,
    Nic,
    NicType,
    VirtualMachine,
)
from .guest_os import guest_os_for, lookup

__all__ = [
    "MAX_CD_DRIVES",
    "MAX_DISKS",
    "NIC_TYPES",
    "decode_inventory",
    "vm_from_zstack",
]

MIB = 1 << 20
# Java long: ZStack's sizes and counts are longs, anything larger is not from ZStack.
_JAVA_LONG_MAX = limits.JAVA_LONG_MAX
_MAX_NAME = limits.MAX_NAME  # ZStack's limit on resource names (VmInstanceVO.name varchar(255))

#: ZStack NIC driverType → OVF adapter (see the module docstring for why virtio → VmxNet3).
NIC_TYPES: Mapping[str, NicType] = {
    "virtio": NicType.VMXNET3,
    "e1000": NicType.E1000,
    "pcnet": NicType.PCNET32,
}

_PLATFORMS = ("Linux", "Windows", "WindowsVirtio", "Other", "Paravirtualization")
_WINDOWS_PLATFORMS = frozenset({"Windows", "WindowsVirtio"})
_EXPORTED_VOLUMES = frozenset({"Root", "Data"})
_SKIPPED_VOLUMES = frozenset({"Memory"})
# qemu's format names, plus ZStack's ``vmtx`` (a VMware template disk, i.e. VMDK).
_FORMATS: Mapping[str, str] = {
    f: f for f in ("qcow2", "raw", "vmdk", "vdi", "vhdx", "vpc", "qed", "parallels")
} | {"vmtx": "vmdk"}
# Characters XML 1.0 cannot carry (§2.2): the descriptor could not hold such a text.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", re.IGNORECASE)

# VMware: SCSI units 0-15 without 7 (the HBA itself); at most 4 SCSI and 4 SATA controllers.
_SCSI_UNITS = tuple(u for u in range(16) if u != 7)
_MAX_SCSI_CONTROLLERS = 4
_MAX_SATA_CONTROLLERS = 4
_SATA_UNITS = tuple(range(ControllerType.SATA.max_units))
_IDE_UNITS = (0, 1)
_MAX_IDE_CONTROLLERS = 2
#: Most disks one VM can carry: 4 SCSI × 15 + 4 SATA × 30.
MAX_DISKS = _MAX_SCSI_CONTROLLERS * len(_SCSI_UNITS) + _MAX_SATA_CONTROLLERS * len(_SATA_UNITS)
#: Most CD-ROMs: 2 IDE controllers × 2 units (ZStack allows 3 per VM).
MAX_CD_DRIVES = _MAX_IDE_CONTROLLERS * len(_IDE_UNITS)

_BOOT_DEVICES = ("CdRom", "HardDisk", "Network")


def _fail(field: str, problem: str) -> NoReturn:
    raise InvalidArgumentError(f"invalid ZStack VM inventory: {field} {problem}")


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- typed getters: each names the field it reads ---------------------------------------------


def _mapping(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(field, f"must be a JSON object, not {type(value).__name__}")
    return value


def _list(value: object, field: str) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        _fail(field, f"must be a JSON array, not {type(value).__name__}")
    return value


def _int(value: object, field: str, *, minimum: int, maximum: int = _JAVA_LONG_MAX) -> int:
    # bool is an int subclass in Python; JSON true is not a number.
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(field, f"must be an integer, not {_describe(value)}")
    if value < minimum:
        _fail(field, f"must be at least {minimum}, not {_describe(value)}")
    if value > maximum:
        _fail(field, f"is out of range (at most {maximum}): {_describe(value)}")
    return value


def _str(value: object, field: str, *, required: bool = True) -> str:
    if not isinstance(value, str):
        _fail(field, f"must be a string, not {_describe(value)}")
    if "\x00" in value:
        _fail(field, "contains a NUL character")
    bad = _NOT_XML.search(value)
    if bad:
        _fail(field, f"contains a character XML cannot carry: U+{ord(bad.group()):04X}")
    if required and not value.strip():
        _fail(field, "must not be empty")
    return value


def _get(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj or obj[key] is None:
        _fail(_path(where, key), "is missing")
    return obj[key]


def _opt(obj: Mapping[str, Any], key: str) -> Any:
    return obj.get(key)


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# --- input shapes -----------------------------------------------------------------------------


def _parse_int(text: str) -> int:
    # int() refuses over 4,300 digits with a plain ValueError (CVE-2020-10735); no ZStack
    # number has more than 19 (a Java long), so anything far longer is refused here, clearly.
    if len(text.lstrip("-")) > limits.MAX_NUMBER_DIGITS:
        _fail("inventory", f"holds a number of {len(text)} digits; ZStack numbers are longs")
    return int(text)


def _reject_constant(name: str) -> NoReturn:
    _fail("inventory", f"is not valid JSON: {name} is not a JSON number")


def decode_inventory(inventory: Mapping[str, Any] | str | bytes) -> Mapping[str, Any]:
    """An inventory document (JSON text or UTF-8 bytes, or an already decoded mapping) as a
    mapping: at most :data:`~ovfkit.limits.MAX_INVENTORY_SIZE`, strict JSON (no NaN), nesting
    bounded; every fault is InvalidArgumentError (SYS.1007), never a RecursionError."""
    if isinstance(inventory, bytes | bytearray | memoryview | str) and (
        len(inventory) > limits.MAX_INVENTORY_SIZE
    ):
        _fail(
            "inventory",
            f"is {len(inventory)} long, over the limit of {limits.MAX_INVENTORY_SIZE}"
            " (a VmInstanceInventory is a few KiB)",
        )
    if isinstance(inventory, bytes | bytearray | memoryview):
        try:
            inventory = bytes(inventory).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidArgumentError(
                f"invalid ZStack VM inventory: not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
    if isinstance(inventory, str):
        try:
            inventory = json.loads(
                inventory, parse_constant=_reject_constant, parse_int=_parse_int
            )
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(
                f"invalid ZStack VM inventory: not JSON ({exc.msg} at line {exc.lineno} "
                f"column {exc.colno})"
            ) from None
        except RecursionError:
            raise InvalidArgumentError(
                "invalid ZStack VM inventory: JSON nested too deeply"
            ) from None
    return _mapping(inventory, "inventory")



def _unwrap(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """The VmInstanceInventory inside a QueryVmInstance reply (``inventories``), an API event
    (``inventory``), or ``doc`` itself."""
    if "inventories" in doc:
        items = _list(doc["inventories"], "inventories")
        if len(items) != 1:
            _fail("inventories", f"must hold exactly one VM, not {len(items)}")
        return _mapping(items[0], "inventories[0]")
    if "inventory" in doc and "allVolumes" not in doc:
        return _mapping(doc["inventory"], "inventory")
    return doc


def _tags(values: object, field: str) -> list[tuple[str, str]]:
    """System tags as (field, tag): plain strings or SystemTagInventory objects (``tag`` key)."""
    out = []
    for i, item in enumerate(_list(values, field)):
        where = f"{field}[{i}]"
        if isinstance(item, Mapping):
            where = f"{where}.tag"
            item = _get(item, "tag", f"{field}[{i}]")
        out.append((where, _str(item, where)))
    return out


# --- the pieces of the VM ---------------------------------------------------------------------


def _vm_name(vm: Mapping[str, Any]) -> str:
    """Any name ZStack accepts (up to 255 characters of any script, ``/``, ``\\``, ``..``,
    control characters): package member names are made safe apart
    (:func:`ovfkit.ovf.layout.safe_basename`) and the descriptor keeps the name, except the
    characters XML 1.0 cannot carry at all (NUL and the other C0 controls but tab, LF and CR,
    lone surrogates; XML 1.0 §2.2, not even as character references), which become U+FFFD
    REPLACEMENT CHARACTER."""
    raw = _get(vm, "name", "")
    if isinstance(raw, str):
        raw = _NOT_XML.sub("\ufffd", raw)
    name = _str(raw, "name")
    if len(name) > _MAX_NAME:
        _fail("name", f"is longer than {_MAX_NAME} characters")
    return name


def _platform(vm: Mapping[str, Any]) -> str:
    value = _opt(vm, "platform")
    if value is None:
        return "Linux"
    text = _str(value, "platform")
    for known in _PLATFORMS:
        if text.strip().casefold() == known.casefold():
            return known
    _fail("platform", f"is not one of {', '.join(_PLATFORMS)}: {_describe(text)}")


def _architecture(vm: Mapping[str, Any]) -> str:
    value = _opt(vm, "architecture")
    if value is None:
        return "x86_64"
    text = _str(value, "architecture").strip()
    if not re.fullmatch(r"[A-Za-z0-9_]{1,32}", text):
        _fail("architecture", f"is not an architecture name: {_describe(text)}")
    return text


def _firmware(tags: list[tuple[str, str]], architecture: str) -> Firmware:
    found: tuple[str, Firmware] | None = None
    for field, tag in tags:
        key, sep, token = tag.partition("::")
        if not sep or key != "bootMode":
            continue
        token = token.strip()
        if token in ("UEFI", "UEFI_WITH_CSM"):
            mode = Firmware.EFI
        elif token == "Legacy":
            mode = Firmware.BIOS
        else:
            _fail(field, f"has an unknown boot mode (Legacy, UEFI, UEFI_WITH_CSM): {token!r}")
        if found is not None and found[1] != mode:
            _fail(field, f"contradicts {found[0]}: {tag!r}")
        found = (field, mode)
    if found is not None:
        return found[1]
    return Firmware.EFI if architecture.lower() in ("aarch64", "arm64") else Firmware.BIOS


def _boot_order(tags: list[tuple[str, str]]) -> tuple[str, ...]:
    for field, tag in tags:
        key, sep, token = tag.partition("::")
        if sep and key == "bootOrder":
            devices = tuple(d.strip() for d in token.split(",") if d.strip())
            for d in devices:
                if d not in _BOOT_DEVICES:
                    _fail(field, f"names an unknown boot device {d!r} ({', '.join(_BOOT_DEVICES)})")
            return devices
    return ("HardDisk",)


def _sorted_by_device_id(
    items: Sequence[Mapping[str, Any]], fields: Sequence[str]
) -> list[tuple[str, Mapping[str, Any]]]:
    """Items in deviceId order (ties: input order); duplicate deviceIds are refused."""
    keyed: list[tuple[int, int, str]] = []
    seen: dict[int, str] = {}
    for field, item in zip(fields, items, strict=True):
        raw = _opt(item, "deviceId")
        device_id = None if raw is None else _int(raw, f"{field}.deviceId", minimum=0)
        if device_id is not None:
            if device_id in seen:
                _fail(f"{field}.deviceId", f"duplicates {seen[device_id]}.deviceId ({device_id})")
            seen[device_id] = field
        keyed.append((device_id if device_id is not None else _JAVA_LONG_MAX, len(keyed), field))
    return [(field, items[index]) for _, index, field in sorted(keyed)]


def _volumes(vm: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    volumes = _list(_get(vm, "allVolumes", ""), "allVolumes")
    root: list[tuple[str, Mapping[str, Any]]] = []
    data_items: list[Mapping[str, Any]] = []
    data_fields: list[str] = []
    for i, raw in enumerate(volumes):
        field = f"allVolumes[{i}]"
        volume = _mapping(raw, field)
        vtype = _str(_get(volume, "type", field), f"{field}.type")
        if vtype not in _EXPORTED_VOLUMES | _SKIPPED_VOLUMES:
            _fail(f"{field}.type", f"is not Root or Data: {_describe(vtype)}")
        shareable = _opt(volume, "isShareable")
        if shareable is not None and not isinstance(shareable, bool):
            _fail(f"{field}.isShareable", f"must be true or false, not {_describe(shareable)}")
        if vtype in _SKIPPED_VOLUMES or shareable:
            continue
        if vtype == "Root":
            if root:
                _fail(f"{field}.type", f"is a second Root volume (the first is {root[0][0]})")
            root.append((field, volume))
        else:
            data_items.append(volume)
            data_fields.append(field)
    if not root:
        _fail("allVolumes", "has no (non-shareable) Root volume")
    return root + _sorted_by_device_id(data_items, data_fields)


def _disk_source(volume: Mapping[str, Any], field: str) -> DiskSource:
    path = _str(_get(volume, "installPath", field), f"{field}.installPath")
    if len(path.encode("utf-8", "surrogatepass")) > limits.MAX_PATH:
        _fail(f"{field}.installPath", f"is longer than {limits.MAX_PATH} bytes (PATH_MAX)")
    raw_format = _opt(volume, "format")
    fmt = None
    if raw_format is not None:
        text = _str(raw_format, f"{field}.format").strip().lower()
        if text not in _FORMATS:
            _fail(f"{field}.format", f"is not a disk image format: {_describe(raw_format)}")
        fmt = _FORMATS[text]
    return DiskSource(path=path, format=fmt)


def _scsi_subtype(platform: str, guest_os_type: str | None) -> str:
    if platform not in _WINDOWS_PLATFORMS:
        return "lsilogic"
    entry = lookup(guest_os_type) if guest_os_type else None
    if entry is not None and entry.release in ("Windows xp", "WindowsServer 2003"):
        return "lsilogic"
    return "lsilogicsas"


def _disk_slots(count: int, scsi_subtype: str) -> tuple[list[Controller], list[tuple[str, int]]]:
    """Controllers and (controller id, unit) for ``count`` disks: SCSI first, then SATA."""
    if count > MAX_DISKS:
        _fail("allVolumes", f"has {count} disks to export; a VM can carry at most {MAX_DISKS}")
    controllers: list[Controller] = []
    slots: list[tuple[str, int]] = []
    scsi_n = min(_MAX_SCSI_CONTROLLERS, -(-count // len(_SCSI_UNITS)))
    for bus in range(scsi_n):
        controllers.append(Controller(f"scsi{bus}", ControllerType.SCSI, scsi_subtype, bus))
    for i in range(min(count, scsi_n * len(_SCSI_UNITS))):
        bus, k = divmod(i, len(_SCSI_UNITS))
        slots.append((f"scsi{bus}", _SCSI_UNITS[k]))
    rest = count - len(slots)
    if rest > 0:
        sata_n = -(-rest // len(_SATA_UNITS))
        for bus in range(sata_n):
            controllers.append(
                Controller(f"sata{bus}", ControllerType.SATA, "vmware.sata.ahci", bus)
            )
        for i in range(rest):
            bus, k = divmod(i, len(_SATA_UNITS))
            slots.append((f"sata{bus}", _SATA_UNITS[k]))
    return controllers, slots


def _nics(vm: Mapping[str, Any], platform: str) -> tuple[tuple[Nic, ...], tuple[Network, ...]]:
    raw = _opt(vm, "vmNics")
    if raw is None:
        return (), ()
    items = _list(raw, "vmNics")
    if len(items) > limits.MAX_NICS:
        _fail("vmNics", f"has {len(items)} NICs; a VM can carry at most {limits.MAX_NICS}")
    fields = [f"vmNics[{i}]" for i in range(len(items))]
    mappings = [_mapping(item, f) for item, f in zip(items, fields, strict=True)]
    default_driver = "e1000" if platform in ("Windows", "Other") else "virtio"
    nics: list[Nic] = []
    networks: dict[str, Network] = {}
    macs: dict[str, str] = {}
    for index, (field, nic) in enumerate(_sorted_by_device_id(mappings, fields)):
        driver_raw = _opt(nic, "driverType")
        driver = default_driver
        if driver_raw is not None:
            driver = _str(driver_raw, f"{field}.driverType").strip().lower()
        if driver not in NIC_TYPES:
            _fail(
                f"{field}.driverType",
                f"is not one of {', '.join(NIC_TYPES)}: {_describe(driver_raw)}",
            )
        l3 = _str(_get(nic, "l3NetworkUuid", field), f"{field}.l3NetworkUuid").strip()
        if not re.fullmatch(r"[0-9A-Za-z_.:-]{1,128}", l3):
            _fail(f"{field}.l3NetworkUuid", f"is not a uuid: {_describe(l3)}")
        mac = None
        mac_raw = _opt(nic, "mac")
        if mac_raw is not None:
            mac = _str(mac_raw, f"{field}.mac").strip().lower()
            if not _MAC.fullmatch(mac):
                _fail(f"{field}.mac", f"is not a MAC address (xx:xx:xx:xx:xx:xx): {_describe(mac)}")
            if int(mac[:2], 16) & 1:
                _fail(f"{field}.mac", f"is a multicast address, not a NIC's: {mac}")
            if mac in macs:
                _fail(f"{field}.mac", f"duplicates {macs[mac]}.mac ({mac})")
            macs[mac] = field
        state = _opt(nic, "state")
        connected = not (isinstance(state, str) and state.strip().lower() == "disable")
        networks.setdefault(l3, Network(name=l3, description=f"ZStack L3 network {l3}"))
        nics.append(Nic(f"nic{index}", NIC_TYPES[driver], l3, mac, connected))
    return tuple(nics), tuple(networks.values())


def _cdroms(vm: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    raw = _opt(vm, "vmCdRoms")
    if raw is None:
        return []
    items = _list(raw, "vmCdRoms")
    fields = [f"vmCdRoms[{i}]" for i in range(len(items))]
    mappings = [_mapping(item, f) for item, f in zip(items, fields, strict=True)]
    if len(items) > MAX_CD_DRIVES:
        _fail("vmCdRoms", f"has {len(items)} CD-ROMs; at most {MAX_CD_DRIVES} fit on IDE")
    out = []
    for field, cd in _sorted_by_device_id(mappings, fields):
        iso_raw = _opt(cd, "isoInstallPath")
        iso = None
        if iso_raw is not None:
            iso = _str(iso_raw, f"{field}.isoInstallPath", required=False).strip() or None
            if iso is not None and len(iso.encode("utf-8", "surrogatepass")) > limits.MAX_PATH:
                _fail(f"{field}.isoInstallPath", f"is longer than {limits.MAX_PATH} bytes")
        out.append((field, iso))
    return out


def vm_from_zstack(
    inventory: Mapping[str, Any] | str | bytes,
    *,
    system_tags: Iterable[str] | None = None,
) -> VirtualMachine:
    """Build the neutral VM model from a ZStack VmInstanceInventory.

    ``inventory`` is a QueryVmInstance reply (``{"inventories": [vm]}``, exactly one VM), an API
    event (``{"inventory": vm}``) or a bare VmInstanceInventory, as JSON text, UTF-8 bytes or a
    decoded mapping. ``system_tags`` (e.g. ``["bootMode::UEFI"]``) are added to the inventory's
    own ``systemTags`` list, if it has one. Raises InvalidArgumentError (SYS.1007) naming the
    offending field for any malformed input.
    """
    vm = _unwrap(decode_inventory(inventory))
    tags = _tags(vm["systemTags"], "systemTags") if vm.get("systemTags") is not None else []
    if system_tags is not None:
        if isinstance(system_tags, str | bytes):
            _fail("system_tags", "must be a list of tags, not a single string")
        tags += _tags(list(system_tags), "system_tags")

    name = _vm_name(vm)
    description = _opt(vm, "description")
    description = "" if description is None else _str(description, "description", required=False)
    if len(description) > limits.MAX_DESCRIPTION:
        _fail("description", f"is longer than {limits.MAX_DESCRIPTION} characters")
    # ZStack's cpuNum range (APICreateInstanceOfferingMsg); memory: vSphere's largest VM.
    vcpus = _int(_get(vm, "cpuNum", ""), "cpuNum", minimum=1, maximum=limits.MAX_VCPUS)
    memory = _int(
        _get(vm, "memorySize", ""), "memorySize", minimum=1, maximum=limits.MAX_MEMORY_MIB * MIB
    )
    platform = _platform(vm)
    architecture = _architecture(vm)
    guest_raw = _opt(vm, "guestOsType")
    guest_type = None if guest_raw is None else _str(guest_raw, "guestOsType", required=False)
    guest_os = guest_os_for(
        guest_type, architecture=architecture, windows=platform in _WINDOWS_PLATFORMS
    )
    firmware = _firmware(tags, architecture)
    volumes = _volumes(vm)
    cdroms = _cdroms(vm)
    # Boot order ranks count only the devices this VM has (ZStack lists all kinds).
    present = {"HardDisk": bool(volumes), "CdRom": bool(cdroms), "Network": False}
    boot = [d for d in _boot_order(tags) if present[d]]

    controllers, slots = _disk_slots(len(volumes), _scsi_subtype(platform, guest_type))
    disk_boot = boot.index("HardDisk") + 1 if "HardDisk" in boot else None
    disks = []
    for i, ((field, volume), (controller, unit)) in enumerate(zip(volumes, slots, strict=True)):
        capacity = _int(_get(volume, "size", field), f"{field}.size", minimum=1)
        source = _disk_source(volume, field)
        label = _opt(volume, "name")
        disks.append(
            Disk(
                id=f"disk{i}",
                capacity=capacity,
                controller=controller,
                unit=unit,
                source=source,
                boot_order=disk_boot if i == 0 else None,
                name="" if label is None else _str(label, f"{field}.name", required=False),
            )
        )

    cd_boot = boot.index("CdRom") + 1 if "CdRom" in boot else None
    cd_drives = []
    for i, (_field, iso) in enumerate(cdroms):
        bus, unit = divmod(i, len(_IDE_UNITS))
        if unit == 0:
            controllers.append(Controller(f"ide{bus}", ControllerType.IDE, "PIIX4", bus))
        cd_drives.append(
            CdDrive(
                id=f"cdrom{i}",
                controller=f"ide{bus}",
                unit=unit,
                iso=iso,
                boot_order=cd_boot if i == 0 else None,
            )
        )

    nics, networks = _nics(vm, platform)
    return VirtualMachine(
        name=name,
        description=description,
        vcpus=vcpus,
        memory_mib=-(-memory // MIB),
        firmware=firmware,
        guest_os=guest_os,
        architecture=architecture,
        controllers=tuple(controllers),
        disks=tuple(disks),
        cd_drives=tuple(cd_drives),
        nics=nics,
        networks=networks,
    )
