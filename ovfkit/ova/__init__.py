"""The OVA package: writer (``write_ova``), reader and verifier, signing, ISO media.

Wire formats are pure (``tar``, ``manifest``); ``writer``, ``stream`` and ``reader`` are the I/O
edges that drive them.
"""

from __future__ import annotations

from .reader import Member, Package, Report, extract_package, open_package, verify_package
from .signing import Signer, load_signer
from .writer import OvaOptions, PackageFile, PackageResult, write_ova

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
