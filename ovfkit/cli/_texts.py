"""Help texts more than one subcommand shows."""

from __future__ import annotations

__all__ = ["OVF_VERSION_HELP"]

#: Which importers read which OVF version (the README's "Importers" table has the sources).
OVF_VERSION_HELP = (
    "1.0 (envelope/1, default) is read by every importer. 2.0 (envelope/2, NICs and disks as "
    "EthernetPortItem/StorageItem) is read by VirtualBox and Glance only: Proxmox, oVirt/vdsm "
    "and virt-v2v read envelope/1 only, VMware ovftool refuses StorageItem/EthernetPortItem "
    "and govmomi drops them"
)
