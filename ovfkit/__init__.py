"""ovfkit: turn a virtual machine into a standard OVA package.

The public API is a set of plain functions over frozen dataclasses. Importing ``ovfkit`` has no
side effects and loads submodules only when one of their names is first used (PEP 562). Type
checkers read the ``TYPE_CHECKING`` imports below, which name the same objects as the lazy map
(a test keeps the two equal), so ``ovfkit.write_ova`` has its real signature under mypy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"  # the one place the version is written (pyproject reads it from here)

if TYPE_CHECKING:
    from .disk import open_source
    from .disk.source import Extent, ImageSource
    from .errors import (
        CancelledError,
        InternalError,
        InvalidArgumentError,
        InvalidOvfError,
        IoError,
        MissingExtraError,
        NotFoundError,
        NotReadyError,
        OperationCancelledError,
        OperationFailedError,
        OperationTimeoutError,
        OvfkitError,
        OvfkitIOError,
        OvfParseError,
        ToolMissingError,
        UnimplementedError,
        VmdkFormatError,
    )
    from .model import (
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
        RawXml,
        VirtualMachine,
    )
    from .model_json import vm_from_json, vm_json_schema, vm_to_json
    from .ova.reader import Member, Package, Report, extract_package, open_package, verify_package
    from .ova.signing import Signer, load_signer
    from .ova.stream import write_ova_stream
    from .ova.writer import OvaOptions, PackageFile, PackageResult, write_ova
    from .ovf.descriptor import DescriptorOptions, build_descriptor
    from .ovf.layout import FileRef, PackageLayout, plan_layout, safe_basename
    from .ovf.reader import ParsedDescriptor, parse_descriptor
    from .ovf.validate import validate_descriptor
    from .progress import CancelToken, Progress, ProgressCallback
    from .vmdk.options import VmdkOptions, VmdkResult
    from .vmdk.reader import VmdkInfo, inspect_vmdk, read_vmdk_data
    from .vmdk.writer import write_vmdk
    from .zstack.adapter import vm_from_zstack
    from .zstack.api import (
        delete_image_package,
        export_vm_ova_package,
        get_image_package,
        query_image_packages,
        update_image_package,
    )
    from .zstack.context import open_context
    from .zstack.inventory import ExportVmOvaPackageRequest, ImagePackageInventory, Reply


def _names(module: str, *names: str) -> dict[str, str]:
    return dict.fromkeys(names, module)


# public name -> module that defines it (the same modules as the TYPE_CHECKING imports above)
_EXPORTS: dict[str, str] = {
    **_names("ovfkit.disk", "open_source"),
    **_names("ovfkit.disk.source", "Extent", "ImageSource"),
    **_names(
        "ovfkit.errors",
        "CancelledError", "InternalError", "InvalidArgumentError", "InvalidOvfError", "IoError",
        "MissingExtraError", "NotFoundError", "NotReadyError", "OperationCancelledError",
        "OperationFailedError", "OperationTimeoutError", "OvfkitError", "OvfkitIOError",
        "OvfParseError", "ToolMissingError", "UnimplementedError", "VmdkFormatError",
    ),
    **_names(
        "ovfkit.model",
        "CdDrive", "Controller", "ControllerType", "Disk", "DiskSource", "Firmware", "GuestOs",
        "Network", "Nic", "NicType", "Product", "Property", "RawXml", "VirtualMachine",
    ),
    **_names("ovfkit.model_json", "vm_from_json", "vm_json_schema", "vm_to_json"),
    **_names(
        "ovfkit.ova.reader",
        "Member", "Package", "Report", "extract_package", "open_package", "verify_package",
    ),
    **_names("ovfkit.ova.signing", "Signer", "load_signer"),
    **_names("ovfkit.ova.stream", "write_ova_stream"),
    **_names("ovfkit.ova.writer", "OvaOptions", "PackageFile", "PackageResult", "write_ova"),
    **_names("ovfkit.ovf.descriptor", "DescriptorOptions", "build_descriptor"),
    **_names("ovfkit.ovf.layout", "FileRef", "PackageLayout", "plan_layout", "safe_basename"),
    **_names("ovfkit.ovf.reader", "ParsedDescriptor", "parse_descriptor"),
    **_names("ovfkit.ovf.validate", "validate_descriptor"),
    **_names("ovfkit.progress", "CancelToken", "Progress", "ProgressCallback"),
    **_names("ovfkit.vmdk.options", "VmdkOptions", "VmdkResult"),
    **_names("ovfkit.vmdk.reader", "VmdkInfo", "inspect_vmdk", "read_vmdk_data"),
    **_names("ovfkit.vmdk.writer", "write_vmdk"),
    **_names("ovfkit.zstack.adapter", "vm_from_zstack"),
    **_names(
        "ovfkit.zstack.api",
        "delete_image_package", "export_vm_ova_package", "get_image_package",
        "query_image_packages", "update_image_package",
    ),
    **_names("ovfkit.zstack.context", "open_context"),
    **_names(
        "ovfkit.zstack.inventory", "ExportVmOvaPackageRequest", "ImagePackageInventory", "Reply"
    ),
}

__all__ = [
    "CancelToken",
    "CancelledError",
    "CdDrive",
    "Controller",
    "ControllerType",
    "DescriptorOptions",
    "Disk",
    "DiskSource",
    "ExportVmOvaPackageRequest",
    "Extent",
    "FileRef",
    "Firmware",
    "GuestOs",
    "ImagePackageInventory",
    "ImageSource",
    "InternalError",
    "InvalidArgumentError",
    "InvalidOvfError",
    "IoError",
    "Member",
    "MissingExtraError",
    "Network",
    "Nic",
    "NicType",
    "NotFoundError",
    "NotReadyError",
    "OperationCancelledError",
    "OperationFailedError",
    "OperationTimeoutError",
    "OvaOptions",
    "OvfParseError",
    "OvfkitError",
    "OvfkitIOError",
    "Package",
    "PackageFile",
    "PackageLayout",
    "PackageResult",
    "ParsedDescriptor",
    "Product",
    "Progress",
    "ProgressCallback",
    "Property",
    "RawXml",
    "Reply",
    "Report",
    "Signer",
    "ToolMissingError",
    "UnimplementedError",
    "VirtualMachine",
    "VmdkFormatError",
    "VmdkInfo",
    "VmdkOptions",
    "VmdkResult",
    "__version__",
    "build_descriptor",
    "delete_image_package",
    "export_vm_ova_package",
    "extract_package",
    "get_image_package",
    "inspect_vmdk",
    "load_signer",
    "open_context",
    "open_package",
    "open_source",
    "parse_descriptor",
    "plan_layout",
    "query_image_packages",
    "read_vmdk_data",
    "safe_basename",
    "update_image_package",
    "validate_descriptor",
    "verify_package",
    "vm_from_json",
    "vm_from_zstack",
    "vm_json_schema",
    "vm_to_json",
    "write_ova",
    "write_ova_stream",
    "write_vmdk",
]

if not TYPE_CHECKING:  # hidden from type checkers, so that a misspelt name is an error there
    __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
