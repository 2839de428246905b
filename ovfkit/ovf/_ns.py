"""XML namespaces of OVF descriptors and the vendor extensions ovfkit reads or writes."""

from __future__ import annotations

#: DSP0243 1.x / DSP8023 1.1.1 (OVF 1.0 and 1.1 share it).
OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
#: DSP0243 2.x / DSP8023 2.0.1.
OVF2 = "http://schemas.dmtf.org/ovf/envelope/2"
#: OVF 0.9, VMware's pre-standard draft (ESX 3.5 / ovftool 1.x), read only.
OVF09 = "http://www.vmware.com/schema/ovf/1/envelope"
OVF_NAMESPACES = (OVF1, OVF2, OVF09)

_CIM2 = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
CIM = "http://schemas.dmtf.org/wbem/wscim/1/common"
RASD = _CIM2 + "CIM_ResourceAllocationSettingData"
VSSD = _CIM2 + "CIM_VirtualSystemSettingData"
#: OVF 2.0 EthernetPortItem / StorageItem classes, spelled as the DMTF DSP8023 2.0.1 schema
#: imports them (no ``.xsd``); ovfkit writes these, so its 2.0 descriptors validate.
EPASD = _CIM2 + "CIM_EthernetPortAllocationSettingData"
SASD = _CIM2 + "CIM_StorageAllocationSettingData"
#: The same classes as VirtualBox's OVF 2.0 export writes them, with an ``.xsd`` suffix
#: (``ApplianceImplExport.cpp``; COT's ``OVFNameHelper2`` copies it and fails on the DMTF
#: spelling); its reader matches local names only. ovfkit reads both spellings.
EPASD_XSD = EPASD + ".xsd"
SASD_XSD = SASD + ".xsd"
#: Namespaces of an Item's CIM properties, any OVF version, either spelling.
ITEM_NAMESPACES = (RASD, EPASD, SASD, EPASD_XSD, SASD_XSD)
BOOTC = _CIM2 + "CIM_BootConfigSetting"
BOOTS = _CIM2 + "CIM_BootSourceSetting"

XSI = "http://www.w3.org/2001/XMLSchema-instance"
#: VMware's extension namespace (vmw:osType, vmw:Config, vmw:CoresPerSocket, ...).
VMW = "http://www.vmware.com/schema/ovf"
#: VirtualBox's vbox:Machine / vbox:OSType.
VBOX = "http://www.virtualbox.org/ovf/machine"
#: DSP8027 OVF environment.
OVFENV = "http://schemas.dmtf.org/ovf/environment/1"


def q(ns: str, local: str) -> str:
    """Clark notation ``{ns}local`` as lxml wants it."""
    return f"{{{ns}}}{local}"
