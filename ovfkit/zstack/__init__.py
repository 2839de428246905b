"""ZStack: the VM inventory adapter, the ExportVmOvaPackage API and its package records."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .adapter import vm_from_zstack
    from .api import (
        delete_image_package,
        export_vm_ova_package,
        get_image_package,
        package_file,
        query_image_packages,
        update_image_package,
    )
    from .context import ExportContext, open_context
    from .inventory import (
        ExportVmOvaPackageRequest,
        ImagePackageInventory,
        ImagePackageState,
        Reply,
    )

_EXPORTS = {
    "vm_from_zstack": ".adapter",
    **dict.fromkeys(
        (
            "delete_image_package", "export_vm_ova_package", "get_image_package", "package_file",
            "query_image_packages", "update_image_package",
        ),
        ".api",
    ),
    **dict.fromkeys(("ExportContext", "open_context"), ".context"),
    **dict.fromkeys(
        ("ExportVmOvaPackageRequest", "ImagePackageInventory", "ImagePackageState", "Reply"),
        ".inventory",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

__all__ = [
    "ExportContext",
    "ExportVmOvaPackageRequest",
    "ImagePackageInventory",
    "ImagePackageState",
    "Reply",
    "delete_image_package",
    "export_vm_ova_package",
    "get_image_package",
    "open_context",
    "package_file",
    "query_image_packages",
    "update_image_package",
    "vm_from_zstack",
]
