"""ZStack guestOsType → OVF OperatingSystemSection (CIM OS type id, vSphere guest id,
VirtualBox guest type, description).

The importers read three different things (sources side by side):

- ``ovf:id``, the DMTF ``CIM_OperatingSystem.OSType`` ValueMap (DSP0243 1.1 §9.9). Proxmox VE
  (pve-storage ``src/PVE/GuestImport/OVF.pm``, ``$ostype_ids``, "see
  schemas.dmtf.org/wbem/cim-html/2.55.0+/CIM_OperatingSystem.html") maps it to its ostype and
  turns every id it does not list, 102 "Other 64-Bit" included, into ``other``: a Windows guest
  then gets non-Windows defaults. VirtualBox (``src/VBox/Main/include/ovfreader.h``
  ``CIMOSType_T``, ``ApplianceImpl.cpp`` ``g_aOsTypes``) agrees with DMTF up to 115 and at
  119/120 (Windows 10), but its 116/117 are Windows 8.1 and 118 Server 2016 where DMTF has
  116 Server 2016 and 117/118 Windows 8.1; it knows nothing above 120 (121 Server 2019,
  122 Windows 11 64-bit, 123 Server 2022 become "Other", 32-bit), and maps 103 (Server 2008
  R2) and 105 (Windows 7) to 32-bit types. VMware's own exports do not settle it either: a
  Microsoft-built Windows 10 OVA carries ``ovf:id="121"`` with ``windows9_64Guest``, and
  Google's OVF importer (compute-image-tools ``ovf_utils.go``) numbers Server 2016 as 117.
- ``vmw:osType``, the vSphere ``VirtualMachineGuestOsIdentifier``: what vCenter/ESXi,
  ovftool and govmomi use (govmomi ``ovf/configspec.go`` and vcsim ``ovf_manager.go`` take
  ``OperatingSystemSection/@vmw:osType`` as the guest id and ignore ``ovf:id``).
- ``vbox:OSType``, VirtualBox's guest type: ``ApplianceImplImport.cpp`` uses it before the CIM
  id ("2) Otherwise, if there is OperatingSystemSection/vbox:OSType, use that one").

virt-v2v (``input/OVF.ml``), vdsm (``lib/vdsm/v2v.py`` ``get_ova_info``) and Glance
(``ovf_process.py``) read none of them (virt-v2v inspects the disk).

So ovfkit writes the DMTF 2.55 id (what Proxmox and the standard say), keeps ``vmw:osType``,
and gives every Windows guest a ``vbox:OSType`` so that VirtualBox is not misled by its own
numbering (a 32-bit type also turns off long mode, so a 64-bit Windows would not boot).
Linux and other guests need no ``vbox:OSType``: their ids (≤ 112) mean the same to all readers.
32-bit guests (architecture ``i386``/``i686``) take the 32-bit ids; a release without a 32-bit
edition (Windows Server 2008 R2 and later, Windows 11, CentOS 8, ...) takes the nearest 32-bit
id of its family. The VirtualBox ids are those VirtualBox 6.1 and 7.x know
(``Windows2022_64`` and ``Windows11_64`` need VirtualBox 6.1.28 or later).

=========================  ====================  ==========================  ==============
guestOsType (64-bit)       ovf:id (DMTF name)    vmw:osType                  vbox:OSType
=========================  ====================  ==========================  ==============
WindowsServer 2003         70 Server 2003 64-Bit winNetEnterprise64Guest     Windows2003_64
WindowsServer 2008         77 Server 2008 64-Bit winLonghorn64Guest          Windows2008_64
WindowsServer 2008 R2      103 Server 2008 R2    windows7Server64Guest       Windows2008_64
WindowsServer 2012         112 Server 2012       windows8Server64Guest       Windows2012_64
WindowsServer 2012 R2      115 Server 2012 R2    windows8Server64Guest       Windows2012_64
WindowsServer 2016         116 Server 2016       windows9Server64Guest       Windows2016_64
WindowsServer 2019         121 Server 2019       windows2019srv_64Guest      Windows2019_64
WindowsServer 2022         123 Server 2022       windows2019srvNext_64Guest  Windows2022_64
Windows xp                 71 XP 64-Bit          winXPPro64Guest             WindowsXP_64
Windows 7                  105 Windows 7         windows7_64Guest            Windows7_64
Windows 8                  114 Windows 8 64-bit  windows8_64Guest            Windows8_64
Windows 8.1                118 8.1 64-bit        windows8_64Guest            Windows81_64
Windows 10                 120 10 64-bit         windows9_64Guest            Windows10_64
Windows 11                 122 11 64-bit         windows11_64Guest           Windows11_64
(Windows, release unknown) 116 Server 2016       windows9Server64Guest       Windows2016_64
CentOS 5-8                 107 CentOS 64-bit     centos*_64Guest             -
RHEL 5-9                   80 RHEL 64-Bit        rhel*_64Guest               -
Ubuntu                     94 Ubuntu 64-Bit      ubuntu64Guest               -
Debian 7-10                96 Debian 64-Bit      debian*_64Guest             -
SUSE Linux 12/15           85 SLES 64-Bit        sles*_64Guest               -
Oracle Linux 7             109 Oracle Linux 64   oracleLinux7_64Guest        -
Fedora, Kylin, UOS,        101 Linux 64-Bit      fedora64Guest /             -
openEuler, other Linux                           other4xLinux64Guest
FreeBSD                    78 FreeBSD 64-Bit     freebsd64Guest              -
Solaris 10                 81 Solaris 64-Bit     solaris10_64Guest           -
Other, unknown             102 Other 64-Bit      otherGuest64                -
=========================  ====================  ==========================  ==============

32-bit: Windows 7 105, 8 113, 8.1 117, 10 and 11 119, XP 67, Server 2003 69, Server 2008 and
later 76 (vbox ``Windows7``, ``Windows8``, ``Windows81``, ``Windows10``, ``WindowsXP``,
``Windows2003``, ``Windows2008``); CentOS 106, RHEL 79, Ubuntu 93, Debian 95, SLES 84, Oracle
108, other Linux 36, FreeBSD 42, Solaris 29, Other 1. :data:`DMTF_OS_TYPES` has the DMTF names
of every id used; the tests check the table against it.

guestOsType values: ZStack ``conf/guestOs/guestOsCategory.xml`` (zstackio/zstack), the
``osRelease`` strings such as ``CentOS 7``, ``WindowsServer 2012``, ``Kylin 10``. The table is
data: one :class:`OsEntry` per release, looked up by :func:`guest_os_for`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..model import GuestOs

__all__ = [
    "DMTF_OS_TYPES",
    "OTHER_32",
    "OTHER_64",
    "WINDOWS_DEFAULT",
    "OsEntry",
    "guest_os_for",
    "is_32bit",
    "lookup",
]


#: DMTF CIM_OperatingSystem.OSType ValueMap/Values (CIM schema 2.55) for the ids ovfkit writes.
DMTF_OS_TYPES: Mapping[int, str] = {
    1: "Other",
    29: "Solaris",
    36: "LINUX",
    42: "FreeBSD",
    67: "Windows XP",
    69: "Microsoft Windows Server 2003",
    70: "Microsoft Windows Server 2003 64-Bit",
    71: "Windows XP 64-Bit",
    76: "Microsoft Windows Server 2008",
    77: "Microsoft Windows Server 2008 64-Bit",
    78: "FreeBSD 64-Bit",
    79: "RedHat Enterprise Linux",
    80: "RedHat Enterprise Linux 64-Bit",
    81: "Solaris 64-Bit",
    84: "SLES",
    85: "SLES 64-Bit",
    93: "Ubuntu",
    94: "Ubuntu 64-Bit",
    95: "Debian",
    96: "Debian 64-Bit",
    101: "Linux 64-Bit",
    102: "Other 64-Bit",
    103: "Microsoft Windows Server 2008 R2",
    105: "Microsoft Windows 7",
    106: "CentOS 32-bit",
    107: "CentOS 64-bit",
    108: "Oracle Linux 32-bit",
    109: "Oracle Linux 64-bit",
    112: "Microsoft Windows Server 2012",
    113: "Microsoft Windows 8",
    114: "Microsoft Windows 8 64-bit",
    115: "Microsoft Windows Server 2012 R2",
    116: "Microsoft Windows Server 2016",
    117: "Microsoft Windows 8.1",
    118: "Microsoft Windows 8.1 64-bit",
    119: "Microsoft Windows 10",
    120: "Microsoft Windows 10 64-bit",
    121: "Microsoft Windows Server 2019",
    122: "Microsoft Windows 11 64-bit",
    123: "Microsoft Windows Server 2022",
}


@dataclass(frozen=True)
class OsEntry:
    """One guestOsType: its 64-bit and 32-bit OperatingSystemSection values."""

    release: str
    cim_id: int
    vmware_id: str
    cim_id_32: int
    vmware_id_32: str
    windows: bool = False
    vbox_id: str = ""
    vbox_id_32: str = ""

    def guest_os(self, *, bits32: bool) -> GuestOs:
        if bits32:
            return GuestOs(
                self.cim_id_32, self.vmware_id_32, f"{self.release} (32-bit)", self.vbox_id_32
            )
        return GuestOs(self.cim_id, self.vmware_id, f"{self.release} (64-bit)", self.vbox_id)


def _e(release: str, cim: int, vmw: str, cim32: int, vmw32: str) -> OsEntry:
    return OsEntry(release, cim, vmw, cim32, vmw32)


def _w(release: str, ids: tuple[int, str, str], ids32: tuple[int, str, str]) -> OsEntry:
    """A Windows release: (CIM id, vSphere id, VirtualBox id) for 64 and 32 bits."""
    return OsEntry(release, ids[0], ids[1], ids32[0], ids32[1], True, ids[2], ids32[2])


_W2003_32 = (69, "winNetEnterpriseGuest", "Windows2003")
_W2008_32 = (76, "winLonghornGuest", "Windows2008")
_W8_32 = (113, "windows8Guest", "Windows8")
_W81_32 = (117, "windows8Guest", "Windows81")
_W10_32 = (119, "windows9Guest", "Windows10")

# release, 64-bit CIM id, 64-bit osType, 32-bit CIM id, 32-bit osType (see the module table)
_TABLE: tuple[OsEntry, ...] = (
    _e("CentOS 5", 107, "centos64Guest", 106, "centosGuest"),
    _e("CentOS 6", 107, "centos6_64Guest", 106, "centos6Guest"),
    _e("CentOS 7", 107, "centos7_64Guest", 106, "centos7Guest"),
    _e("CentOS 8", 107, "centos8_64Guest", 106, "centosGuest"),
    _e("RHEL 5", 80, "rhel5_64Guest", 79, "rhel5Guest"),
    _e("RHEL 6", 80, "rhel6_64Guest", 79, "rhel6Guest"),
    _e("RHEL 7", 80, "rhel7_64Guest", 79, "rhel7Guest"),
    _e("RHEL 8", 80, "rhel8_64Guest", 79, "rhel7Guest"),
    _e("RHEL 9", 80, "rhel9_64Guest", 79, "rhel7Guest"),
    _e("Ubuntu 16", 94, "ubuntu64Guest", 93, "ubuntuGuest"),
    _e("Ubuntu 18", 94, "ubuntu64Guest", 93, "ubuntuGuest"),
    _e("Ubuntu 20", 94, "ubuntu64Guest", 93, "ubuntuGuest"),
    _e("Ubuntu 22", 94, "ubuntu64Guest", 93, "ubuntuGuest"),
    _e("Debian 7", 96, "debian7_64Guest", 95, "debian7Guest"),
    _e("Debian 8", 96, "debian8_64Guest", 95, "debian8Guest"),
    _e("Debian 9", 96, "debian9_64Guest", 95, "debian9Guest"),
    _e("Debian 10", 96, "debian10_64Guest", 95, "debian10Guest"),
    _e("SUSE Linux 12", 85, "sles12_64Guest", 84, "sles12Guest"),
    _e("SUSE Linux 15", 85, "sles15_64Guest", 84, "sles12Guest"),
    _e("Oracle Linux 7", 109, "oracleLinux7_64Guest", 108, "oracleLinux7Guest"),
    _e("Fedora", 101, "fedora64Guest", 36, "fedoraGuest"),
    _e("Kylin 4", 101, "other4xLinux64Guest", 36, "other4xLinuxGuest"),
    _e("Kylin 7", 101, "other4xLinux64Guest", 36, "other4xLinuxGuest"),
    _e("Kylin 10", 101, "other4xLinux64Guest", 36, "other4xLinuxGuest"),
    _e("UOS 20", 101, "other4xLinux64Guest", 36, "other4xLinuxGuest"),
    _e("openEuler 20.03", 101, "other4xLinux64Guest", 36, "other4xLinuxGuest"),
    _e("openEuler 22.03", 101, "other4xLinux64Guest", 36, "other4xLinuxGuest"),
    _e("Linux", 101, "other4xLinux64Guest", 36, "other4xLinuxGuest"),
    _e("Other Kernel ≥ 4.20 or Hygon Linux", 101, "other4xLinux64Guest", 36, "other4xLinuxGuest"),
    _w("WindowsServer 2003", (70, "winNetEnterprise64Guest", "Windows2003_64"), _W2003_32),
    _w("WindowsServer 2008", (77, "winLonghorn64Guest", "Windows2008_64"), _W2008_32),
    _w("WindowsServer 2008 R2", (103, "windows7Server64Guest", "Windows2008_64"), _W2008_32),
    _w("WindowsServer 2012", (112, "windows8Server64Guest", "Windows2012_64"), _W2008_32),
    _w("WindowsServer 2012 R2", (115, "windows8Server64Guest", "Windows2012_64"), _W2008_32),
    _w("WindowsServer 2016", (116, "windows9Server64Guest", "Windows2016_64"), _W2008_32),
    _w("WindowsServer 2019", (121, "windows2019srv_64Guest", "Windows2019_64"), _W2008_32),
    _w("WindowsServer 2022", (123, "windows2019srvNext_64Guest", "Windows2022_64"), _W2008_32),
    _w("Windows 7", (105, "windows7_64Guest", "Windows7_64"), (105, "windows7Guest", "Windows7")),
    _w("Windows 8", (114, "windows8_64Guest", "Windows8_64"), _W8_32),
    _w("Windows 8.1", (118, "windows8_64Guest", "Windows81_64"), _W81_32),
    _w("Windows 10", (120, "windows9_64Guest", "Windows10_64"), _W10_32),
    _w("Windows 11", (122, "windows11_64Guest", "Windows11_64"), _W10_32),
    _w("Windows xp", (71, "winXPPro64Guest", "WindowsXP_64"), (67, "winXPProGuest", "WindowsXP")),
    _e("FreeBSD", 78, "freebsd64Guest", 42, "freebsdGuest"),
    _e("Solaris 10", 81, "solaris10_64Guest", 29, "solaris10Guest"),
    _e("Other", 102, "otherGuest64", 1, "otherGuest"),
)

# Families whose osType does not depend on the release, so any version of them maps the same
# (``Ubuntu 24``, ``Kylin V10 SP2``, ``openEuler 24.03``).
_FAMILIES: tuple[tuple[str, str], ...] = (
    ("ubuntu", "Ubuntu 22"),
    ("fedora", "Fedora"),
    ("kylin", "Kylin 10"),
    ("uos", "UOS 20"),
    ("openeuler", "openEuler 22.03"),
    ("freebsd", "FreeBSD"),
)

#: ZStack's own fallback for a guestOsType it does not know.
OTHER_64 = GuestOs(102, "otherGuest64", "Other 64-bit")
OTHER_32 = GuestOs(1, "otherGuest", "Other 32-bit")
#: A Windows VM (platform Windows/WindowsVirtio) whose release is not given or not known: the
#: generic "Server 2016 or later" of vSphere, so importers pick Windows defaults.
WINDOWS_DEFAULT = _w(
    "Microsoft Windows", (116, "windows9Server64Guest", "Windows2016_64"), _W10_32
)

_32BIT_ARCHITECTURES = frozenset({"i386", "i486", "i586", "i686", "x86"})


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip()).casefold()


_BY_NAME: dict[str, OsEntry] = {_norm(e.release): e for e in _TABLE}


def is_32bit(architecture: str) -> bool:
    return architecture.strip().lower() in _32BIT_ARCHITECTURES


def lookup(guest_os_type: str) -> OsEntry | None:
    """The table entry for a guestOsType (case and spacing ignored), or None when unknown."""
    key = _norm(guest_os_type)
    entry = _BY_NAME.get(key)
    if entry is not None:
        return entry
    for prefix, release in _FAMILIES:
        if key == prefix or key.startswith(prefix + " "):
            return _BY_NAME[_norm(release)]
    return None


def _fallback(*, windows: bool, bits32: bool) -> GuestOs:
    if windows:
        return WINDOWS_DEFAULT.guest_os(bits32=bits32)
    return OTHER_32 if bits32 else OTHER_64


def guest_os_for(guest_os_type: str | None, *, architecture: str, windows: bool) -> GuestOs:
    """OperatingSystemSection values for a VM.

    ``windows`` says the platform is Windows/WindowsVirtio: then a missing or unknown guestOsType
    gives :data:`WINDOWS_DEFAULT` rather than Other, since the platform already names the family.
    Otherwise an unknown or missing guestOsType gives 102/otherGuest64 (1/otherGuest for 32-bit).
    An unknown guestOsType is kept as the description.
    """
    bits32 = is_32bit(architecture)
    entry = lookup(guest_os_type) if guest_os_type else None
    if entry is not None:
        return entry.guest_os(bits32=bits32)
    base = _fallback(windows=windows, bits32=bits32)
    if guest_os_type and guest_os_type.strip():
        return replace(base, description=guest_os_type.strip())
    return base
