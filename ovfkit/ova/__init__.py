"""The OVA package: writer (``write_ova``), reader and verifier, signing, ISO media.

Wire formats and the package plan are pure (``tar``, ``manifest``, ``plan``); ``writer`` (with
``seekable`` and ``members``), ``stream`` and ``reader`` are the I/O edges that drive them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .reader import Member, Package, Report, extract_package, open_package, verify_package
    from .signing import Signer, load_signer
    from .writer import OvaOptions, PackageFile, PackageResult, write_ova

_EXPORTS = {
    **dict.fromkeys(
        ("Member", "Package", "Report", "extract_package", "open_package", "verify_package"),
        ".reader",
    ),
    **dict.fromkeys(("Signer", "load_signer"), ".signing"),
    **dict.fromkeys(("OvaOptions", "PackageFile", "PackageResult", "write_ova"), ".writer"),
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
__all__ = [
    "Member",
    "OvaOptions",
    "Package",
    "PackageFile",
    "PackageResult",
    "Report",
    "Signer",
    "extract_package",
    "load_signer",
    "open_package",
    "verify_package",
    "write_ova",
]
