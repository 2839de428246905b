"""ZStack guestOsType → OVF OperatingSystemSection (CIM OS type id, vSphere guest id, description).

Sources:

- guestOsType values: ZStack ``conf/guestOs/guestOsCategory.xml`` (zstackio/zstack), the
  ``osRelease`` strings such as ``CentOS 7``, ``WindowsServer 2012``, ``Kylin 10``.
- CIM ids: DMTF ``CIM_OperatingSystem.OSType`` as VirtualBox ``ovfreader.h`` lists it. Ids 0-112
  agree between readers, ids from 113 up do not, so none is used here; 102 (Other 64-bit) is the
  catch-all, as ZStack's own exporter and VMware use it.
- vmw:osType: vSphere ``VirtualMachineGuestOsIdentifier`` names.
- The mapping itself: the project's ``zstack/guest-os.md`` table. 32-bit guests (architecture
  ``i386``/``i686``) take the non-64 ids (1 Other, 36 LINUX, 106 CentOS 32-bit, ...). A release that
  has no 32-bit edition (Windows Server 2012 and later, CentOS 8, ...) keeps the nearest 32-bit id
  of its family.

The table is data: one :class:`OsEntry` per ZStack release, looked up by :func:`guest_os_for`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..model import GuestOs

__all__ = [
    "OTHER_32",
    "OTHER_64",
    "WINDOWS_DEFAULT",
    "OsEntry",
    "guest_os_for",
    "is_32bit",
    "lookup",
]


@dataclass(frozen=True)
class OsEntry:
    """One guestOsType: its 64-bit and 32-bit OperatingSystemSection values."""

    release: str
    cim_id: int
    vmware_id: str
    cim_id_32: int
    vmware_id_32: str
    windows: bool = False

    def guest_os(self, *, bits32: bool) -> GuestOs:
        if bits32:
            return GuestOs(self.cim_id_32, self.vmware_id_32, f"{self.release} (32-bit)")
        return GuestOs(self.cim_id, self.vmware_id, f"{self.release} (64-bit)")


def _e(release: str, cim: int, vmw: str, cim32: int, vmw32: str, win: bool = False) -> OsEntry:
    return OsEntry(release, cim, vmw, cim32, vmw32, win)


# release, 64-bit CIM id, 64-bit osType, 32-bit CIM id, 32-bit osType
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
    _e("WindowsServer 2003", 70, "winNetEnterprise64Guest", 69, "winNetEnterpriseGuest", True),
    _e("WindowsServer 2008", 77, "winLonghorn64Guest", 76, "winLonghornGuest", True),
    _e("WindowsServer 2012", 112, "windows8Server64Guest", 76, "winLonghornGuest", True),
    _e("WindowsServer 2016", 102, "windows9Server64Guest", 76, "winLonghornGuest", True),
    _e("WindowsServer 2019", 102, "windows2019srv_64Guest", 76, "winLonghornGuest", True),
    _e("WindowsServer 2022", 102, "windows2019srvNext_64Guest", 76, "winLonghornGuest", True),
    _e("Windows 7", 105, "windows7_64Guest", 105, "windows7Guest", True),
    _e("Windows 8", 102, "windows8_64Guest", 1, "windows8Guest", True),
    _e("Windows 10", 102, "windows9_64Guest", 1, "windows9Guest", True),
    _e("Windows 11", 102, "windows11_64Guest", 1, "windows9Guest", True),
    _e("Windows xp", 71, "winXPPro64Guest", 67, "winXPProGuest", True),
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
#: newest generic server id, so VMware picks Windows-appropriate virtual hardware defaults.
WINDOWS_DEFAULT = _e("Microsoft Windows", 102, "windows9Server64Guest", 1, "windows9Guest", True)

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
    Otherwise an unknown or missing guestOsType gives 102/otherGuest64 (1/otherGuest for 32-bit),
    keeping the original text as the description.
    """
    bits32 = is_32bit(architecture)
    entry = lookup(guest_os_type) if guest_os_type else None
    if entry is not None:
        return entry.guest_os(bits32=bits32)
    base = _fallback(windows=windows, bits32=bits32)
    if guest_os_type and guest_os_type.strip():
        return GuestOs(base.cim_id, base.vmware_id, guest_os_type.strip())
    return base
