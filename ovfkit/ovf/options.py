"""Options of the descriptor writer (what ``plan_layout`` and ``build_descriptor`` take)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidArgumentError
from ._xml import INVALID_XML_CHARS

__all__ = ["STREAM_OPTIMIZED", "DescriptorOptions"]

#: VMware's disk format URI for streamOptimized VMDK (docs/interop-rules.md "Descriptor";
#: DSP0243 1.1 §5.2 leaves the URI to the vendor).
STREAM_OPTIMIZED = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


@dataclass(frozen=True)
class DescriptorOptions:
    """How to write the descriptor.

    ``ovf_version`` "1.0" writes the envelope/1 namespace, the only one virt-v2v, Proxmox and
    vdsm read (virt-v2v#18); "2.0" writes envelope/2 with EthernetPortItem/StorageItem (DSP0243
    2.0 clause 8) in the epasd/sasd namespaces of the DMTF DSP8023 2.0.1 schema (no ``.xsd``
    suffix, unlike VirtualBox's export), which only VirtualBox and Glance import (README,
    "Importers").
    ``hardware_version`` is vssd:VirtualSystemType; vmx-13 or lower for broad ESXi support.
    ``include_iso``: pack the ISOs of CD drives as files. ``ovf_env``: declare
    ``ovf:transport="iso"`` (DSP0243 1.1 §11) and carry an OVF environment ISO in a CD drive.
    """

    ovf_version: Literal["1.0", "2.0"] = "1.0"
    hardware_version: str = "vmx-13"
    include_iso: bool = False
    ovf_env: bool = False
    disk_format: str = STREAM_OPTIMIZED

    def __post_init__(self) -> None:
        if self.ovf_version not in ("1.0", "2.0"):
            raise InvalidArgumentError(
                f"ovf_version must be '1.0' or '2.0', not {self.ovf_version!r}"
            )
        if not self.hardware_version or INVALID_XML_CHARS.search(self.hardware_version):
            raise InvalidArgumentError(f"invalid hardware_version {self.hardware_version!r}")
