"""Disk sources: reading any image qemu can open, extent by extent (holes are never read)."""
