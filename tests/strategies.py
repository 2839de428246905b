"""Hypothesis strategies for the neutral VM model, reusable by every part's tests.

``virtual_machines()`` draws valid VMs: unicode names, controllers of every kind, many disks and CD
drives placed on free units within each controller's limits (SCSI skips unit 7), NICs on declared
and undeclared networks, several products with properties, EFI / secure boot, boot orders.
Texts are XML 1.0 characters (a descriptor cannot carry others); ``architecture`` agrees with the
guest OS, as a descriptor carries no architecture of its own.
"""

from __future__ import annotations

from hypothesis import strategies as st

from ovfkit.model import (
    CdDrive,
    Controller,
    ControllerType,
    Disk,
    DiskSource,
    Firmware,
    GuestOs,
    Network,
    Nic,
    NicType,
    Product,
    Property,
    VirtualMachine,
)
from ovfkit.ovf.view import infer_architecture

__all__ = [
    "GUEST_OSES",
    "controllers",
    "guest_oses",
    "products",
    "virtual_machines",
    "xml_text",
]

# Letters, digits, punctuation, symbols, spaces of every script; plus tab and newline.
_XML_CHARS = st.characters(
    exclude_categories=("Cc", "Cs", "Cn", "Co"),
    include_characters="\t\n",
)


def xml_text(min_size: int = 0, max_size: int = 24) -> st.SearchStrategy[str]:
    return st.text(_XML_CHARS, min_size=min_size, max_size=max_size)


def names() -> st.SearchStrategy[str]:
    """Non-blank names with unicode, spaces and path characters (``/``, ``..``)."""
    return st.one_of(
        st.sampled_from(["web-01", "db server", "../etc/passwd", "测试-虚拟机", "Ünïcödé"]),
        xml_text(1, 40),
    ).filter(lambda s: s.strip() != "")


#: (CIM OSType id, vSphere guest id, description[, VirtualBox type]) as ovfkit writes them.
GUEST_OSES = (
    (102, "otherGuest64", "Other 64-bit"),
    (1, "otherGuest", "Other"),
    (94, "ubuntu64Guest", "Ubuntu Linux (64-bit)"),
    (107, "centos7_64Guest", "CentOS 7 (64-bit)"),
    (36, "otherLinuxGuest", "Other Linux"),
    (101, "other4xLinux64Guest", "Other 4.x Linux (64-bit)"),
    (101, "arm-other5xlinux-64", "Other 5.x Linux (ARM 64-bit)"),
    (112, "windows8Server64Guest", "Windows Server 2012"),
    (121, "windows2019srv_64Guest", "WindowsServer 2019 (64-bit)", "Windows2019_64"),
    (102, "", ""),
)


def guest_oses() -> st.SearchStrategy[GuestOs]:
    return st.one_of(
        st.sampled_from(GUEST_OSES).map(lambda t: GuestOs(*t)),
        st.builds(
            GuestOs,
            st.integers(0, 0xFFFF),
            st.sampled_from(["otherGuest64", "debian10_64Guest", "winXPProGuest", ""]),
            xml_text(),
            st.sampled_from(["", "Windows2019_64", "Ubuntu_64"]) | xml_text(),
        ),
    )


_SUBTYPES = {
    ControllerType.IDE: [None, "PIIX4"],
    ControllerType.SCSI: [None, "lsilogic", "lsilogicsas", "VirtualSCSI", "buslogic"],
    ControllerType.SATA: [None, "vmware.sata.ahci", "AHCI"],
    ControllerType.NVME: [None, "vmware.nvme.controller"],
}


def _units(ctype: ControllerType) -> list[int]:
    if ctype is ControllerType.SCSI:
        return [u for u in range(16) if u != 7]
    return list(range(ctype.max_units))


@st.composite
def controllers(draw: st.DrawFn, max_size: int = 6) -> tuple[Controller, ...]:
    kinds = draw(st.lists(st.sampled_from(list(ControllerType)), min_size=0, max_size=max_size))
    out: list[Controller] = []
    per_type: dict[ControllerType, int] = {}
    for i, kind in enumerate(kinds):
        bus = per_type.get(kind, 0)
        per_type[kind] = bus + 1
        out.append(
            Controller(
                id=draw(st.sampled_from([f"ctrl{i}", f"{kind.value}-{bus}", f"c {i} ✓"])),
                type=kind,
                subtype=draw(st.sampled_from(_SUBTYPES[kind])),
                bus_number=bus,
            )
        )
    return tuple(out)


def properties() -> st.SearchStrategy[Property]:
    return st.builds(
        Property,
        key=st.from_regex(r"[A-Za-z][A-Za-z0-9_.]{0,15}", fullmatch=True),
        type=st.sampled_from(["string", "boolean", "uint16", "int32", "real64", "ip"]),
        value=st.none() | xml_text(),
        user_configurable=st.booleans(),
        label=xml_text(),
        description=xml_text(),
        qualifiers=st.sampled_from(["", "MaxLen(64)", 'ValueMap{"a","b"}', "MinLen(1)"]),
        password=st.booleans(),
        category=st.sampled_from(["", "Network", "Application ✓"]),
    )


def products() -> st.SearchStrategy[Product]:
    return st.builds(
        Product,
        product=xml_text(),
        vendor=xml_text(),
        version=xml_text(max_size=8),
        full_version=xml_text(max_size=12),
        product_url=st.sampled_from(["", "https://example.com/product"]),
        vendor_url=st.sampled_from(["", "https://example.com/"]),
        app_url=st.sampled_from(["", "https://${ip0}/"]),
        class_=st.sampled_from(["", "com.example.app", "org.example.vm"]),
        instance=st.sampled_from(["", "1", "primary"]),
        properties=st.lists(properties(), max_size=5).map(tuple),
    )


def _mac() -> st.SearchStrategy[str]:
    return st.lists(st.integers(0, 255), min_size=3, max_size=3).map(
        lambda b: "00:50:56:" + ":".join(f"{x:02x}" for x in b)
    )


@st.composite
def virtual_machines(draw: st.DrawFn, max_disks: int = 24, max_nics: int = 10) -> VirtualMachine:
    ctrls = draw(controllers())
    slots = [(c.id, u) for c in ctrls for u in _units(c.type)]
    taken = draw(
        st.lists(st.sampled_from(slots), unique=True, max_size=min(len(slots), max_disks))
        if slots
        else st.just([])
    )
    is_cd = draw(st.lists(st.booleans(), min_size=len(taken), max_size=len(taken)))
    boot = st.none() | st.integers(1, 8)
    disks: list[Disk] = []
    cds: list[CdDrive] = []
    for i, ((cid, unit), cd) in enumerate(zip(taken, is_cd, strict=True)):
        if cd:
            cds.append(
                CdDrive(
                    id=f"cdrom-{i}",
                    controller=cid,
                    unit=unit,
                    iso=draw(st.sampled_from([None, "/isos/tools.iso", "/isos/install ✓.iso"])),
                    boot_order=draw(boot),
                )
            )
        else:
            disks.append(
                Disk(
                    id=draw(st.sampled_from([f"disk{i}", f"vol-{i:04d}", f"disk {i} ✓"])),
                    capacity=draw(st.integers(0, 2**44)),
                    controller=cid,
                    unit=unit,
                    source=draw(st.sampled_from([None, DiskSource(f"/images/{i}.qcow2", "qcow2")])),
                    boot_order=draw(boot),
                    name=draw(st.sampled_from(["", f"Disk {i}"]) | xml_text(max_size=10)),
                )
            )
    declared = draw(
        st.lists(
            st.builds(Network, xml_text(1, 16), xml_text()),
            max_size=3,
            unique_by=lambda n: n.name,
        )
    )
    net_names = [n.name for n in declared] + ["VM Network", "undeclared ✓"]
    nics = draw(
        st.lists(
            st.builds(
                Nic,
                id=st.just(""),
                adapter=st.sampled_from(list(NicType)),
                network=st.sampled_from(net_names),
                mac=st.none() | _mac(),
                connected=st.booleans(),
            ),
            max_size=max_nics,
        )
    )
    nics = [Nic(f"nic-{i}", n.adapter, n.network, n.mac, n.connected) for i, n in enumerate(nics)]
    guest = draw(guest_oses())
    vcpus = draw(st.integers(1, 128))
    firmware = draw(st.sampled_from(list(Firmware)))
    return VirtualMachine(
        name=draw(names()),
        description=draw(xml_text()),
        vcpus=vcpus,
        cores_per_socket=draw(st.sampled_from([d for d in (1, 2, 4, 8, 16) if vcpus % d == 0])),
        memory_mib=draw(st.integers(1, 4 * 1024 * 1024)),
        firmware=firmware,
        secure_boot=firmware is Firmware.EFI and draw(st.booleans()),
        guest_os=guest,
        architecture=infer_architecture(guest),
        controllers=ctrls,
        disks=tuple(disks),
        cd_drives=tuple(cds),
        nics=tuple(nics),
        networks=tuple(declared),
        products=tuple(draw(st.lists(products(), max_size=3))),
        annotation=draw(xml_text()),
        eulas=tuple(draw(st.lists(xml_text(1, 40), max_size=2))),
    )
