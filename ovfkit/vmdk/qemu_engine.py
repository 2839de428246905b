"""The qemu-img engine: ``qemu-img convert`` to streamOptimized, brought to the native rules.

qemu-img cannot write a VMDK to a pipe, so it writes a temporary file, which is then copied to the
sink once, rewritten on the way so both engines hand out the same layout (the rules:
../shared/notes/interop-rules.md, VMware "Virtual Disk Format 5.0"). What qemu-img 7.2 writes and
what the copy changes:

- grain directory, redundant directory and all grain tables *before* the grains (header gdOffset
  and rgdOffset point there, flag bit 1 set) -> header with gdOffset = GD_AT_END, no redundant
  directory; grain tables with GT markers after each 512-grain group, then GD marker + directory,
  footer marker + footer + EOS as the last three sectors (qemu #1357: ESXi rejects files without
  them; siderolabs/image-factory#232);
- no footer, no end-of-stream marker, and zero padding after the last grain (it reads as a run of
  EOS markers) -> dropped, the proper tail is written;
- the descriptor lacks ddb.toolsInstallType, ddb.longContentID, ddb.uuid and encoding, and names
  the temporary file in its extent line -> replaced by the native writer's descriptor
  (``format.encode_descriptor``, same adapter type, hardware version and geometry rule).

Grains are copied byte for byte (qemu's zlib streams are valid RFC 1950 grains), only their sector
offsets move, so the file is never re-compressed and is read once. Digests are computed on the
bytes as they go to the sink.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from ..disk import check_image
from ..disk.mapped import MappedSource
from ..disk.nbd import NbdSource
from ..disk.raw import RawSource
from ..errors import IoError, VmdkFormatError
from ..model import DiskSource
from ..progress import CancelToken, Progress, ProgressCallback, check_cancel
from ..qemu import img
from . import format as fmt
from .hashing import DigestTee
from .options import VmdkOptions, VmdkResult
from .sink import write_all

__all__ = ["QemuGrain", "qemu_convert_options", "walk_grains", "write_vmdk", "write_vmdk_qemu"]

G = fmt.GRAIN_SIZE
_COPY_CHUNK = 4 * 1024 * 1024
# qemu-img's -o toolsversion: the value VMware writes for "tools unmanaged" (open-vm-tools#151).
TOOLS_VERSION = 2147483647


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


class _Extent(Protocol):
    @property
    def start(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def zero(self) -> bool: ...


class _ImageSource(Protocol):
    @property
    def capacity(self) -> int: ...
    def extents(self) -> Iterator[_Extent]: ...
    def readinto(self, offset: int, buf: memoryview) -> int: ...
    def close(self) -> None: ...


def qemu_convert_options(options: VmdkOptions) -> dict[str, object]:
    """``-o`` options of ``qemu-img convert -O vmdk`` for these VmdkOptions."""
    return {
        "subformat": "streamOptimized",
        "adapter_type": options.adapter_type,
        "hwversion": options.hw_version,
        "toolsversion": TOOLS_VERSION,
    }


class QemuGrain:
    """A grain marker as found in the file: ``lba`` in sectors, ``data`` the whole marker
    (12-byte head, compressed bytes, padding to a sector)."""

    __slots__ = ("data", "lba")

    def __init__(self, lba: int, data: bytes) -> None:
        self.lba = lba
        self.data = data


def walk_grains(f: BinaryIO, header: fmt.SparseHeader, file_size: int) -> Iterator[QemuGrain]:
    """The grain markers of a streamOptimized file from ``overHead`` on, in file order, until an
    end-of-stream marker or the end of the file. Metadata (GT, GD, footer) is skipped: the copy
    writes its own. A grain past capacity, out of order or running past EOF is an error."""
    end = file_size // fmt.SECTOR
    pos = header.overhead
    last = -1
    capacity_grains = -(-header.capacity // header.grain_size)
    at = -1  # where the file position is, in sectors: seek only to skip metadata
    while pos < end:
        if pos != at:
            f.seek(pos * fmt.SECTOR)
        head = f.read(fmt.SECTOR)
        if len(head) < fmt.SECTOR:
            raise VmdkFormatError("truncated", f"qemu-img output ends inside sector {pos}")
        m = fmt.decode_marker(head)
        if not m.is_grain:
            if m.type == fmt.MARKER_EOS:
                return
            if m.type not in (fmt.MARKER_GT, fmt.MARKER_GD, fmt.MARKER_FOOTER):
                raise VmdkFormatError("bad-marker", f"marker type {m.type} at sector {pos}")
            pos += 1 + m.val
            at = -1
            continue
        sectors = fmt.grain_marker_sectors(m.size)
        if pos + sectors > end:
            raise VmdkFormatError("truncated", f"grain at sector {pos} runs past the end")
        if m.val % header.grain_size or m.val // header.grain_size >= capacity_grains:
            raise VmdkFormatError("lba-beyond-capacity", f"grain LBA {m.val} at sector {pos}")
        if m.val <= last:
            raise VmdkFormatError("unsorted-grains", f"grain LBA {m.val} follows {last}")
        last = m.val
        rest = f.read(sectors * fmt.SECTOR - fmt.SECTOR)
        yield QemuGrain(m.val, head + rest)
        pos += sectors
        at = pos


class _Out:
    """The sink, its byte count and the digests of everything written."""

    def __init__(self, sink: _Sink | BinaryIO, tee: DigestTee) -> None:
        self.sink = sink
        self.tee = tee
        self.size = 0
        self._pending: list[bytes] = []
        self._pending_size = 0

    @property
    def sector(self) -> int:
        return (self.size + self._pending_size) // fmt.SECTOR

    def write(self, data: bytes) -> None:
        # Small pieces (one grain each) are gathered so the digests and the sink see MiB writes.
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= _COPY_CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        self.tee.update(data)
        self.size += len(data)
        write_all(self.sink, data)


def _copy_repaired(
    src: BinaryIO,
    out: _Out,
    options: VmdkOptions,
    stage: str,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> tuple[int, int]:
    """Copy qemu-img's file to ``out`` in the native layout; returns (capacity sectors, grains)."""
    file_size = os.fstat(src.fileno()).st_size
    src.seek(0)
    header = fmt.decode_header(src.read(fmt.SECTOR))
    if not header.compressed or not header.has_markers or header.grain_size != fmt.GRAIN_SECTORS:
        raise VmdkFormatError(
            "not-stream-optimized",
            f"qemu-img wrote flags {header.flags:#x}, grainSize {header.grain_size}",
        )
    if header.num_gtes_per_gt != fmt.GTES_PER_GT:
        raise VmdkFormatError("bad-gt-size", f"numGTEsPerGT {header.num_gtes_per_gt}")
    capacity_sectors = header.capacity
    capacity = capacity_sectors * fmt.SECTOR
    descriptor = fmt.encode_descriptor(
        capacity_sectors,
        options.filename,
        adapter_type=options.adapter_type,
        hw_version=options.hw_version,
        long_content_id=options.long_content_id or secrets.token_hex(16),
        uuid=options.uuid if options.uuid is not None else secrets.token_bytes(16),
    )
    out.write(fmt.encode_header(fmt.stream_optimized_header(capacity_sectors)))
    out.write(descriptor)
    out.write(bytes((fmt.OVERHEAD_SECTORS - out.sector) * fmt.SECTOR))

    tables = fmt.TableBuilder(capacity_sectors)
    group = -1
    grains = 0
    for grain in walk_grains(src, header, file_size):
        index = grain.lba // fmt.GRAIN_SECTORS
        if index // fmt.GTES_PER_GT != group:
            group = index // fmt.GTES_PER_GT
            check_cancel(cancel, stage)
            if progress is not None:
                progress(Progress(stage, min(grain.lba * fmt.SECTOR, capacity), capacity))
        out.write(tables.enter(index, out.sector))
        tables.place(index, out.sector)
        out.write(grain.data)
        grains += 1
    out.write(tables.finish(out.sector))
    out.flush()
    return capacity_sectors, grains


def _temp_dir(sink: object, tmpdir: str | None) -> str:
    """Beside the sink when it is a named file (same file system), else the temp directory."""
    if tmpdir is not None:
        return tmpdir
    name = getattr(sink, "name", None)
    if isinstance(name, str) and os.path.isabs(name) and os.path.isdir(os.path.dirname(name)):
        return os.path.dirname(name)
    return tempfile.gettempdir()


def _spill(source: _ImageSource, where: str, cancel: CancelToken | None) -> str:
    """A sparse raw copy of an ImageSource qemu cannot open itself (e.g. MemorySource)."""
    fd, path = tempfile.mkstemp(prefix=".ovfkit-src-", suffix=".raw", dir=where)
    try:
        with os.fdopen(fd, "wb") as f:
            f.truncate(source.capacity)
            buf = bytearray(_COPY_CHUNK)
            for e in source.extents():
                if e.zero:
                    continue
                off, end = e.start, e.start + e.length
                while off < end:
                    check_cancel(cancel, "copying the disk for qemu-img")
                    n = source.readinto(off, memoryview(buf)[: min(len(buf), end - off)])
                    if n <= 0:
                        raise IoError(f"the disk source ended at byte {off}")
                    f.seek(off)
                    f.write(memoryview(buf)[:n])
                    off += n
    except BaseException:
        os.unlink(path)
        raise
    return path


def write_vmdk_qemu(
    source: DiskSource | _ImageSource,
    sink: _Sink | BinaryIO,
    options: VmdkOptions = VmdkOptions(engine="qemu-img"),  # noqa: B008 - frozen
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    tmpdir: str | None = None,
) -> VmdkResult:
    """Write ``source`` as a streamOptimized VMDK with ``qemu-img convert``, then copy it to
    ``sink`` in the native writer's layout (see the module docstring), hashing on the way.

    ``source`` is a model DiskSource (qemu-img opens it and its backing chain directly) or an
    open ImageSource (a raw or qemu-nbd source is opened by path again; any other is first
    copied to a sparse raw file). The temporary files go to ``tmpdir``, else beside the sink
    when it is a named file, else the system temp directory, and are always removed.
    Errors: those of ``ovfkit.qemu.img`` (missing file, image in use, no space ...), IoError when
    the sink fails, CancelledError when ``cancel`` is set (the sink then holds a partial file).
    """
    stage = f"disk {options.filename}"
    where = _temp_dir(sink, tmpdir)
    with contextlib.ExitStack() as stack:
        force_share = options.force_shared
        if isinstance(source, DiskSource):
            info = check_image(source, force_shared=options.force_shared)
            path, src_fmt = source.path, info.format
        elif isinstance(source, RawSource):
            # open_source already refused a locked raw image unless asked to share it; qemu-img
            # convert (unlike info) would refuse a locked one, so share as the caller decided.
            path, src_fmt, force_share = source.path, "raw", True
        elif (nbd := _nbd_of(source)) is not None and nbd.server is not None:
            path, src_fmt = nbd.server.path, nbd.server.format
            force_share = nbd.server.force_share
        else:
            path, src_fmt = _spill(source, where, cancel), "raw"
            stack.callback(_unlink, path)
        fd, tmp = tempfile.mkstemp(prefix=".ovfkit-qemu-", suffix=".vmdk", dir=where)
        os.close(fd)
        stack.callback(_unlink, tmp)

        def convert_progress(p: Progress) -> None:
            if progress is not None:
                progress(Progress(f"{stage} (qemu-img convert)", p.done, p.total))

        img.convert(
            path,
            tmp,
            src_fmt=src_fmt,
            dst_fmt="vmdk",
            options=qemu_convert_options(options),
            progress=convert_progress if progress is not None else None,
            cancel=cancel,
            force_share=force_share,
        )
        check_cancel(cancel, stage)
        with open(tmp, "rb", buffering=_COPY_CHUNK) as src, DigestTee(options.digests) as tee:
            out = _Out(sink, tee)
            capacity_sectors, grains = _copy_repaired(src, out, options, stage, progress, cancel)
            digests = tee.hexdigests()
    flush = getattr(sink, "flush", None)
    if flush is not None:
        try:
            flush()
        except OSError as e:
            raise IoError(f"writing the VMDK failed: {e}") from e
    capacity = capacity_sectors * fmt.SECTOR
    if progress is not None:
        progress(Progress(stage, capacity, capacity))
    return VmdkResult(
        size=out.size,
        capacity=capacity,
        populated_size=grains * G,
        grains=grains,
        digests=digests,
    )


# The name ovfkit.vmdk.writer dispatches to for engine="qemu-img".
write_vmdk = write_vmdk_qemu


def _nbd_of(source: object) -> NbdSource | None:
    if isinstance(source, MappedSource):
        return source.nbd
    return source if isinstance(source, NbdSource) else None


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
