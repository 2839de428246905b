"""What a VMDK writer is asked to do and what it hands back (shared by both engines)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..errors import InvalidArgumentError
from .format import ADAPTER_TYPES

__all__ = ["DIGEST_ALGORITHMS", "Engine", "VmdkOptions", "VmdkResult"]

Engine = Literal["native", "qemu-img"]

# Manifest algorithms (SHA1 for old vCenter, SHA256 default, SHA512 accepted by ovftool;
# docs/interop-rules.md), plus md5 and xxh128 for callers that want them. Only
# the asked ones are computed: each costs CPU time on every byte written.
DIGEST_ALGORITHMS = ("sha1", "sha256", "sha512", "md5", "xxh128")


@dataclass(frozen=True)
class VmdkOptions:
    """``engine``: "native" (ovfkit's parallel writer) or "qemu-img". ``adapter_type`` and
    ``hw_version`` go to the descriptor (ddb.adapterType, ddb.virtualHWVersion). ``digests``:
    the algorithms computed over the bytes written (any of DIGEST_ALGORITHMS). ``threads``:
    lanes that read and compress the disk (native engine: threads of worker processes, two to
    a process; ovfkit.vmdk.writer), None = one per core and two more (at most 32); or
    qemu-img processes (qemu-img engine), None = one per core.

    Extensions to the ARCHITECTURE contract, all defaulted: ``filename`` is the extent file name
    the embedded descriptor names (the member name in the OVA); ``compress_level`` the isal level
    0-3 (2 keeps qemu-img's zlib-6 size, see benchmarks/bench_vmdk.py); ``long_content_id`` (32
    hex) and ``uuid`` (16 bytes) make the descriptor reproducible, None = random.
    ``force_shared``: read a source image that a running VM holds locked (a crash-consistent
    read at best; without it such a source is refused, see ovfkit.disk.open_source).
    """

    engine: Engine = "native"
    adapter_type: str = "lsilogic"
    hw_version: int = 13
    digests: tuple[str, ...] = ("sha256",)
    threads: int | None = None
    filename: str = "disk.vmdk"
    compress_level: int = 2
    long_content_id: str | None = None
    uuid: bytes | None = None
    force_shared: bool = False

    def __post_init__(self) -> None:
        if self.engine not in ("native", "qemu-img"):
            raise InvalidArgumentError(f"engine {self.engine!r}: use 'native' or 'qemu-img'")
        if self.adapter_type not in ADAPTER_TYPES:
            raise InvalidArgumentError(
                f"adapter_type {self.adapter_type!r} is not one of {', '.join(ADAPTER_TYPES)}"
            )
        for d in self.digests:
            if d not in DIGEST_ALGORITHMS:
                raise InvalidArgumentError(
                    f"digest {d!r} is not one of {', '.join(DIGEST_ALGORITHMS)}"
                )
        if self.threads is not None and self.threads < 1:
            raise InvalidArgumentError(f"threads {self.threads} must be at least 1")
        if not 0 <= self.compress_level <= 3:
            raise InvalidArgumentError(f"compress_level {self.compress_level} must be 0..3")


@dataclass(frozen=True)
class VmdkResult:
    """``size``: bytes written; ``capacity``: virtual size in bytes (whole sectors);
    ``populated_size``: bytes of stored grains (grains x 64 KiB, VMware's ovf:populatedSize);
    ``digests``: lower-case hex of every byte written, keyed by algorithm name."""

    size: int
    capacity: int
    populated_size: int
    grains: int
    digests: Mapping[str, str] = field(default_factory=dict)
