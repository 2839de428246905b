"""The neutral virtual-machine model: frozen dataclasses, no I/O, no ZStack or OVF specifics.

Everything ovfkit writes is a function of a :class:`VirtualMachine`; everything it reads gives one
back. Sizes are bytes unless the field name says otherwise. Identifiers (``Disk.id``,
``Controller.id``, ...) are the model's own; the OVF writer maps them to numeric InstanceIDs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from .errors import InvalidArgumentError

__all__ = [
    "CdDrive",
    "Controller",
    "ControllerType",
    "Disk",
    "DiskSource",
    "Firmware",
    "GuestOs",
    "Network",
    "Nic",
    "NicType",
    "Product",
    "Property",
    "RawXml",
    "VirtualMachine",
]


class Firmware(StrEnum):
    BIOS = "bios"
    EFI = "efi"


class ControllerType(StrEnum):
    """Storage controller kinds; comments give the OVF ResourceType (CIM RASD, DSP0243)."""

    IDE = "ide"  # ResourceType 5, two units per controller
    SCSI = "scsi"  # ResourceType 6, 15 units (unit 7 is the controller itself)
    SATA = "sata"  # ResourceType 20, ResourceSubType vmware.sata.ahci, 30 units
    NVME = "nvme"  # ResourceType 20, ResourceSubType vmware.nvme.controller, 15 units

    @property
    def max_units(self) -> int:
        return {"ide": 2, "scsi": 15, "sata": 30, "nvme": 15}[self.value]


class NicType(StrEnum):
    """NIC adapter types as VMware names them in rasd:ResourceSubType."""

    E1000 = "E1000"
    E1000E = "E1000e"
    VMXNET3 = "VmxNet3"
    PCNET32 = "PCNet32"
    VIRTIO = "virtio"


@dataclass(frozen=True)
class GuestOs:
    """OperatingSystemSection: CIM_OperatingSystem.OSType id plus vSphere's guest id.

    102 / otherGuest64 is what ZStack and VMware use when nothing better is known.
    ``virtualbox_id`` is VirtualBox's guest OS type (``Windows2019_64``), written as
    ``vbox:OSType`` when not empty: VirtualBox prefers it to the CIM id, whose numbers above
    115 it reads differently from DMTF (see ``ovfkit.zstack.guest_os``).
    """

    cim_id: int = 102
    vmware_id: str = "otherGuest64"
    description: str = "Other 64-bit"
    virtualbox_id: str = ""


@dataclass(frozen=True)
class Controller:
    """A storage controller. ``subtype`` is the OVF ResourceSubType (``lsilogic``, ``lsilogicsas``,
    ``VirtualSCSI``, ``buslogic``, ``PIIX4``, ``vmware.sata.ahci``, ...) or None for the default."""

    id: str
    type: ControllerType
    subtype: str | None = None
    bus_number: int = 0


@dataclass(frozen=True)
class DiskSource:
    """Where a disk's data comes from: a path qemu can open and its format (None: probe)."""

    path: str
    format: str | None = None


@dataclass(frozen=True)
class Disk:
    """A virtual disk attached at ``unit`` of controller ``controller`` (a Controller.id).

    ``capacity`` is the virtual size in bytes. None: the size of the ``source`` image, which
    write_ova reads (qemu-img info); a descriptor built without an image needs it given. A
    given capacity must be the image's virtual size (rounded up to whole 512-byte sectors, the
    VMDK's unit): anything else is an InvalidArgumentError, never silently replaced, since the
    package could not hold both a disk of that size and the image's data (``qemu-img resize``
    the image first to grow it). ``source`` is None for a disk read from a descriptor whose data
    lives in the package rather than in a local image. ``boot_order`` is 1-based, None when the
    disk is not in the boot order.
    """

    id: str
    capacity: int | None
    controller: str
    unit: int
    source: DiskSource | None = None
    boot_order: int | None = None
    name: str = ""


@dataclass(frozen=True)
class CdDrive:
    """A CD/DVD drive; ``iso`` is the path of the ISO image it holds, or None for an empty drive."""

    id: str
    controller: str
    unit: int
    iso: str | None = None
    boot_order: int | None = None


@dataclass(frozen=True)
class Network:
    name: str
    description: str = ""


@dataclass(frozen=True)
class Nic:
    """A network adapter connected to the Network named ``network``; ``mac`` None: assigned."""

    id: str
    adapter: NicType
    network: str
    mac: str | None = None
    connected: bool = True


@dataclass(frozen=True)
class Property:
    """A ProductSection property (DSP0243 9.5); ``type`` is an OVF/CIM type such as ``string``,
    ``boolean``, ``uint16``; ``qualifiers`` as written, e.g. ``MaxLen(64)``."""

    key: str
    type: str = "string"
    value: str | None = None
    user_configurable: bool = False
    label: str = ""
    description: str = ""
    qualifiers: str = ""
    password: bool = False
    category: str = ""


@dataclass(frozen=True)
class Product:
    """A ProductSection. Several may exist, told apart by ``class_`` and ``instance``."""

    product: str = ""
    vendor: str = ""
    version: str = ""
    full_version: str = ""
    product_url: str = ""
    vendor_url: str = ""
    app_url: str = ""
    class_: str = ""
    instance: str = ""
    properties: tuple[Property, ...] = ()


@dataclass(frozen=True)
class RawXml:
    """An XML fragment the model cannot hold, kept verbatim so a re-write loses nothing.

    ``where`` names the place it came from and goes back to: ``envelope`` (a section of the
    Envelope), ``virtual-system`` (a section of the VirtualSystem), ``hardware`` (an element of
    VirtualHardwareSection, e.g. an Item the model does not know or a per-configuration Item).
    ``xml`` is a serialised element with its namespace declarations.
    """

    where: str
    xml: str


@dataclass(frozen=True)
class VirtualMachine:
    """A virtual machine, neutral of any hypervisor or manager.

    ``memory_mib`` is in MiB (OVF ``byte * 2^20``). ``architecture`` is a ZStack/libvirt name
    (``x86_64``, ``aarch64``, ``i686``). Tuples keep a stable order: disks by bus position,
    NICs as the guest sees them.
    """

    name: str
    description: str = ""
    vcpus: int = 1
    cores_per_socket: int = 1
    memory_mib: int = 1024
    firmware: Firmware = Firmware.BIOS
    secure_boot: bool = False
    guest_os: GuestOs = field(default_factory=GuestOs)
    architecture: str = "x86_64"
    controllers: tuple[Controller, ...] = ()
    disks: tuple[Disk, ...] = ()
    cd_drives: tuple[CdDrive, ...] = ()
    nics: tuple[Nic, ...] = ()
    networks: tuple[Network, ...] = ()
    products: tuple[Product, ...] = ()
    annotation: str = ""
    eulas: tuple[str, ...] = ()
    extra: tuple[RawXml, ...] = ()

    def controller(self, controller_id: str) -> Controller:
        for c in self.controllers:
            if c.id == controller_id:
                return c
        raise InvalidArgumentError(f"no controller with id {controller_id!r} in VM {self.name!r}")
