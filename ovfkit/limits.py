"""How big a VM, a descriptor or an inventory may be: one place for the caps every reader and
writer applies, each at what ZStack or the importers allow (pure constants, no I/O).

Input beyond these is refused with a clear error (SYS.1007 for inventories and models, OVF.1002
for descriptors) before it costs memory: a red-team inventory of 60,000 NICs took 413 MiB and
gave a 30 MB descriptor no importer would load.

Sources:

- ZStack ``APICreateInstanceOfferingMsg`` / ``APIUpdateVmInstanceMsg``: ``cpuNum`` in
  ``numberRange = {1, 1024}``; resource ``name`` at most 255 characters, ``description`` 2048
  (``@APIParam(maxLength = ...)``, the ``varchar`` columns of ``VmInstanceVO``).
- ZStack ``VmInstanceConstant.MAXIMUM_CDROM_NUMBER = 3`` CD-ROMs per VM; ``VmGlobalConfig``
  ``pciePortNums`` at most 28: a ZStack KVM guest's NICs sit on the PCI(e) slots of one root
  bus (32) plus its predefined bridge.
- VMware vSphere 8.0 configuration maximums (per VM): 768 vCPUs, 24 TB of memory, 10 NICs,
  4 SCSI adapters of up to 64 targets (PVSCSI), 4 NVMe adapters of 64 namespaces, 4 SATA
  adapters of 30 devices, 4 IDE devices: the largest VM any importer here takes.
- VMware Cloud Director: ``ovf.descriptor.size.max`` defaults to 12 MB, the manifest to 1 MB
  (Tenant Portal Guide, "Upload an OVF package to create a vApp").
- Java ``long``: ZStack's sizes are longs; a larger number did not come from ZStack.
"""

from __future__ import annotations

__all__ = [
    "JAVA_LONG_MAX",
    "MAX_CERTIFICATE_SIZE",
    "MAX_CONTROLLERS",
    "MAX_DESCRIPTION",
    "MAX_DESCRIPTOR_SIZE",
    "MAX_DISKS",
    "MAX_INVENTORY_SIZE",
    "MAX_MANIFEST_SIZE",
    "MAX_MEMORY_MIB",
    "MAX_NAME",
    "MAX_NETWORKS",
    "MAX_NICS",
    "MAX_NUMBER_DIGITS",
    "MAX_PACKAGE_FILES",
    "MAX_PATH",
    "MAX_STORAGE_DEVICES",
    "MAX_VCPUS",
    "UNSIGNED_LONG_MAX",
]

#: ZStack's sizes and counts are Java longs.
JAVA_LONG_MAX = (1 << 63) - 1
#: xs:unsignedLong, the type of ovf:size and ovf:populatedSize (DSP8023).
UNSIGNED_LONG_MAX = (1 << 64) - 1
#: Longest decimal number read from a descriptor or a size field: 2^64 needs 20 digits. Longer
#: ones are refused before ``int()`` (which takes quadratic time past a few thousand digits).
MAX_NUMBER_DIGITS = 20

#: vCPUs: ZStack's cpuNum range is 1..1024 (vSphere 8 takes 768).
MAX_VCPUS = 1024
#: Memory: vSphere 8's 24 TB per VM, the most any importer takes, in MiB.
MAX_MEMORY_MIB = 24 << 20
#: NICs: one PCI(e) slot each; a ZStack KVM guest has at most 32 root-bus slots plus a bridge's
#: 32, far above vSphere's 10 and VirtualBox's 36 (ICH9).
MAX_NICS = 64
#: Networks a descriptor may declare: each NIC is on one, so no more than there are NICs.
MAX_NETWORKS = MAX_NICS
#: Disks: vSphere 8's 4 PVSCSI adapters x 64 targets.
MAX_DISKS = 256
#: Disks and CD drives together on every controller vSphere 8 can give a VM: 4 SCSI x 64,
#: 4 NVMe x 64, 4 SATA x 30, 4 IDE.
MAX_STORAGE_DEVICES = 4 * 64 + 4 * 64 + 4 * 30 + 4
#: Storage controllers: 4 SCSI, 4 NVMe, 4 SATA, 2 IDE (VMware).
MAX_CONTROLLERS = 14
#: A VM or package name (ZStack resource names are varchar(255)).
MAX_NAME = 255
#: A VM or package description (ZStack: varchar(2048)).
MAX_DESCRIPTION = 2048
#: A file path (Linux PATH_MAX, bytes of UTF-8).
MAX_PATH = 4096

#: Files of one package (tar members; References/File entries).
MAX_PACKAGE_FILES = 10_000

#: A descriptor read or written: VMware Cloud Director's default limit (real ones are a few KiB;
#: one of a VM with 60 disks is ~100 KiB).
MAX_DESCRIPTOR_SIZE = 12 << 20
#: A manifest read (VMware Cloud Director's default; one line per file, 10,000 files fit).
MAX_MANIFEST_SIZE = 1 << 20
#: A .cert file read: a signature line and a PEM chain are a few KiB.
MAX_CERTIFICATE_SIZE = 1 << 20
#: A ZStack inventory read (a VmInstanceInventory is a few KiB; one with every NIC and disk
#: above stays under 1 MiB). Bounds what decoding the JSON can cost.
MAX_INVENTORY_SIZE = 4 << 20
