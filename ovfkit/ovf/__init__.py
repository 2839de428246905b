"""OVF descriptors (DMTF DSP0243 / DSP8023): package layout, writer, reader and validation."""

from __future__ import annotations

from .descriptor import STREAM_OPTIMIZED, DescriptorOptions, build_descriptor, descriptor_view
from .layout import DiskFile, FileRef, IsoFile, PackageLayout, plan_layout, safe_basename
from .reader import ParsedDescriptor, parse_descriptor, parse_package_descriptor
from .validate import validate_descriptor, validate_environment

__all__ = [
    "STREAM_OPTIMIZED",
    "DescriptorOptions",
    "DiskFile",
    "FileRef",
    "IsoFile",
    "PackageLayout",
    "ParsedDescriptor",
    "build_descriptor",
    "descriptor_view",
    "parse_descriptor",
    "parse_package_descriptor",
    "plan_layout",
    "safe_basename",
    "validate_descriptor",
    "validate_environment",
]
