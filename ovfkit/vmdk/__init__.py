"""streamOptimized VMDK (VMware Virtual Disk Format 5.0): writers and a reader.

``write_vmdk`` streams a disk into a VMDK (engine "native" or "qemu-img"); ``inspect_vmdk``
checks a file's structure; ``read_vmdk_data`` reads its virtual disk back.
"""

from .options import VmdkOptions, VmdkResult
from .reader import VmdkInfo, inspect_vmdk, read_vmdk_data
from .writer import write_vmdk

__all__ = ["VmdkInfo", "VmdkOptions", "VmdkResult", "inspect_vmdk", "read_vmdk_data", "write_vmdk"]
