"""ParseOvf's answer: ZStack's ``OvfInfo`` built from a descriptor ovfkit has read (pure).

Shape from ZStack's SDK (sdk/.../OvfInfo, OvfCpuInfo, OvfMemoryInfo, OvfDiskInfo,
OvfNetworkInfo, OvfOSInfo, OvfSystemInfo, OvfEthernetAdapterInfo, OvfCdDriverInfo,
OvfVolumeInfo) and the example of its ovf module (APIParseOvfReply.__example__): memory and disk
sizes in bytes, ``format`` the short disk format name (``vmdk``), a NIC's ``nicModel`` the
VMware adapter name (``E1000``), ``driverType`` the bus (``IDE``, ``SCSI``, ``SATA``). A field
the descriptor does not give is left out, as ZStack's JSON leaves out nulls. Not given because
ovfkit's reader does not keep them: the InstanceIDs of the CPU and memory Items, the CD drives'
ResourceSubType and the OperatingSystemSection's ``ovf:version``.
"""

from __future__ import annotations

from typing import Any

from ..model import Firmware, VirtualMachine
from ..ovf.reader import ParsedDescriptor

__all__ = ["disk_format_name", "ovf_info"]

MiB = 1 << 20


def disk_format_name(uri: str) -> str:
    """``vmdk`` for VMware's format URIs (``.../vmdk.html#streamOptimized``), else the URI's
    last path segment without its extension and fragment."""
    if "vmdk" in uri.lower():
        return "vmdk"
    last = uri.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return last.split(".", 1)[0] or uri


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _bus(vm: VirtualMachine, controller_id: str) -> str:
    return vm.controller(controller_id).type.value.upper()


def ovf_info(parsed: ParsedDescriptor) -> dict[str, Any]:
    """The OvfInfo JSON object of a parsed descriptor."""
    vm = parsed.vm
    capacities = dict(parsed.capacities)
    formats = dict(parsed.formats)
    disks = []
    for index, disk in enumerate(vm.disks):
        df = parsed.layout.disk_file(disk.id)
        disks.append(_drop_none({
            "index": index,  # "index=0 is root volume" (ovf datatype OvfDiskInfo)
            "diskId": disk.id,
            "fileRef": df.file.id if df else None,
            "fileName": df.file.href if df else None,
            "format": disk_format_name(formats[disk.id]) if disk.id in formats else None,
            "populatedSize": df.populated_size if df else None,
            "capacity": capacities.get(disk.id, disk.capacity),
        }))
    return _drop_none({
        "vmName": vm.name,
        "cpu": {"quantity": vm.vcpus, "coresPerSocket": vm.cores_per_socket},
        "memory": {"quantity": vm.memory_mib * MiB},
        "os": _drop_none({
            "id": vm.guest_os.cim_id,
            "osType": vm.guest_os.vmware_id or None,
            "description": vm.guest_os.description or None,
        }),
        "systemInfo": _drop_none({
            "virtualSystemType": parsed.hardware_version or None,
            "firmwareType": "efi" if vm.firmware is Firmware.EFI else "bios",
        }),
        "disks": disks,
        "networks": [{"name": n.name} for n in vm.networks],
        "nics": [
            _drop_none({
                "networkName": nic.network or None,
                "nicModel": nic.adapter.value,
                "nicName": nic.id,
                "autoAllocation": nic.connected,
            })
            for nic in vm.nics
        ],
        "cdDrivers": [
            {"name": cd.id, "driverType": _bus(vm, cd.controller)} for cd in vm.cd_drives
        ],
        "volumes": [
            {
                "name": disk.name or disk.id,
                "diskId": disk.id,
                "driverType": _bus(vm, disk.controller),
            }
            for disk in vm.disks
        ],
    })
