"""ZStack: the VM inventory adapter (and, later, the ExportVmOvaPackage API)."""

from __future__ import annotations

from .adapter import vm_from_zstack

__all__ = ["vm_from_zstack"]
