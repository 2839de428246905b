"""ovfkit: turn a virtual machine into a standard OVA package.

The public API is a set of plain functions over frozen dataclasses. Importing ``ovfkit`` has no
side effects and loads submodules only when one of their names is first used.
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    **{
        name: "ovfkit.model"
        for name in (
            "CdDrive", "Controller", "ControllerType", "Disk", "DiskSource", "Firmware", "GuestOs",
            "Network", "Nic", "NicType", "Product", "Property", "RawXml", "VirtualMachine",
        )
    },
    **{
        name: "ovfkit.errors"
        for name in (
            "OvfkitError", "InvalidArgumentError", "NotFoundError", "OperationFailedError",
            "IoError", "CancelledError", "InvalidOvfError", "OvfParseError", "VmdkFormatError",
            "ToolMissingError", "OperationTimeoutError", "InternalError", "NotReadyError",
            "UnimplementedError",
        )
    },
    **{
        name: "ovfkit.ovf"
        for name in (
            "build_descriptor", "DescriptorOptions", "parse_descriptor", "plan_layout",
            "PackageLayout", "FileRef", "validate_descriptor", "safe_basename",
        )
    },
    **{
        name: "ovfkit.ova"
        for name in (
            "write_ova", "OvaOptions", "PackageResult", "open_package", "verify_package",
            "extract_package",
        )
    },
    **{
        name: "ovfkit.vmdk"
        for name in ("write_vmdk", "VmdkOptions", "VmdkResult", "inspect_vmdk", "read_vmdk_data")
    },
    **{
        name: "ovfkit.zstack"
        for name in (
            "vm_from_zstack", "open_context", "export_vm_ova_package", "query_image_packages",
            "get_image_package", "update_image_package", "delete_image_package",
            "ExportVmOvaPackageRequest", "ImagePackageInventory", "Reply",
        )
    },
    "open_source": "ovfkit.disk",
    "Progress": "ovfkit.progress",
}

__all__ = sorted([*_EXPORTS, "__version__"])


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
