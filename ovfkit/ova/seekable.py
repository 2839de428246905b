"""The layouts of a package written into a file (``OvaOptions.layout``): "default", written
out of order then hashed, and "one-pass", hashed while it is written.

Both member orders are DSP0243 §5.3's ("the manifest and certificate ... either both placed
after the OVF descriptor file, or both placed at the end of the archive"; docs/interop-rules
"Tar container"), the descriptor first (VMware wants the ``.ovf`` first), the files in
``References`` order.

Default: descriptor, manifest, certificate, files. The descriptor carries each File's exact
size and each Disk's populated size, known only once a disk is compressed. The package is
therefore written out of order into the (temporary) file:

1. The front region (descriptor + manifest + certificate, with their headers) is reserved: the
   descriptor is built with placeholder sizes of the widest possible value (2^64 - 1) and
   measured; the manifest's length depends only on names and the algorithm, an RSA
   certificate's only on the key size.
2. Each file is streamed right after the front, its data directly behind a 512-byte header slot
   (the VMDK from ``ovfkit.vmdk.write_vmdk``, which hands back size, populated size and digests
   computed on the way out); headers are written afterwards with ``pwrite``.
3. The real descriptor is built, padded with trailing XML whitespace (allowed after the root
   element: XML 1.0 ``document ::= prolog element Misc*``) to exactly the reserved length; the
   manifest and certificate follow, and the front is written with ``pwrite``.
4. The whole-package MD5 (ZStack's md5Sum) and xxh128 need the package's bytes in order, and
   MD5 cannot be resumed from a later point: they are taken in one sequential pass over the
   finished file, read back from the page cache (never recompressed), mapped window by window;
   fsync runs in a second thread at the same time, so the pass overlaps the flush to disk
   instead of adding to it. Cost: one MD5 of the package's compressed bytes (2.2 s for the
   1.34 GB package of the reference disk on the 2-core test machine, ~610 MB/s on one core).

One-pass: descriptor, files, manifest, certificate. The descriptor goes out first without the
disks' ``ovf:size`` and ``ovf:populatedSize`` (optional, DSP0243 §7.1, §9.1; an ISO's size is
known and kept); the manifest and certificate follow the files. A thread (:class:`_Follower`)
hashes the package in order from the page cache as soon as the bytes in front are final: the
descriptor at once, each file once its tar header is written (at its end), while the next file
is compressed; the manifest at the end. What is left when the last file ends is that file and
the manifest, hashed beside fsync. The disks' manifest digests (SHA-256 by default) are taken by
that thread too, on the same read of the page cache, not by the VMDK writer: the manifest comes
last, so nothing waits for them earlier, and on the MD5's idle second core they cost no time,
where during compression they take a core from deflate.

What neither order avoids: a tar header holds its member's size and precedes the data
(POSIX.1-1988 ustar), so the 512 bytes in front of a disk are known only once the disk is
compressed, and every byte after them is hashed from a state that depends on them. The last
disk is therefore always hashed after it is written; only chunking the disks into members of a
size fixed in advance avoids that, which :mod:`.stream` does and virt-v2v cannot read
(virt-v2v#189). The one-pass layout saves the MD5 of everything before the last disk (the
other disks, ISO images) where cores are idle during compression, and the disks' digests
during compression everywhere: a one-disk export of the reference disk on 2 cores takes 0.94x
the default layout's time (benchmarks/README.md, bench_layout).

:func:`ovfkit.ova.write_ova` gives these writers the temporary file and renames it over the
target; the streaming layout for targets that cannot seek is :mod:`.stream`.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import xxhash

from ..errors import OvfkitIOError
from ..model import VirtualMachine
from ..progress import CancelToken, ProgressCallback, check_cancel
from ..vmdk.hashing import RunningHash, Updatable, new_hash
from . import tar
from .members import measure_isos, report, write_files
from .plan import (
    OvaOptions,
    PackageFile,
    PackageResult,
    build_package_descriptor,
    digest_all,
    manifest_files,
    plan_package,
)

__all__ = ["write_seekable"]

_SMALL_WRITES = 256 << 10  # writes smaller than this are gathered into one pwritev
_IOV_MAX = 1024  # Linux UIO_MAXIOV: pieces per pwritev call
_HASH_WINDOW = 32 << 20  # a multiple of mmap.ALLOCATIONGRANULARITY


class _Sink:
    """Writes the temporary file at ``count`` with pwritev: small writes (markers, grain tables,
    tar padding) are gathered and go out with the next large one, and ``writev`` takes the
    VMDK writer's pieces uncopied (the kernel gathers them without the GIL)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.count = 0
        self._small: list[bytes | memoryview] = []
        self._small_bytes = 0

    def seek(self, position: int) -> None:
        self.flush()
        self.count = position

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        if n < _SMALL_WRITES:
            self._small.append(bytes(data))
            self._small_bytes += n
            self.count += n
            if self._small_bytes >= _SMALL_WRITES:
                self.flush()
        else:
            self.writev([data])
        return n

    def writev(self, pieces: Sequence[bytes | memoryview]) -> None:
        size = sum(map(len, pieces))
        self.count += size
        self._pwritev([*self._small, *pieces], self.count - size - self._small_bytes)
        self._small.clear()
        self._small_bytes = 0

    def flush(self) -> None:
        if self._small:
            self._pwritev(self._small, self.count - self._small_bytes)
            self._small.clear()
            self._small_bytes = 0

    def _pwritev(self, pieces: Sequence[bytes | memoryview], offset: int) -> None:
        for start in range(0, len(pieces), _IOV_MAX):
            batch = pieces[start : start + _IOV_MAX]
            want = sum(map(len, batch))
            n = os.pwritev(self.fd, batch, offset)
            if n != want:  # rare (a signal, a full disk): write the rest piece by piece
                self._rest(batch, n, offset)
            offset += want

    def _rest(self, pieces: Sequence[bytes | memoryview], done: int, offset: int) -> None:
        for piece in pieces:
            view = memoryview(piece).cast("B")
            if done >= len(view):
                done -= len(view)
                offset += len(view)
                continue
            view = view[done:]
            offset += done
            done = 0
            while view:
                n = os.pwrite(self.fd, view, offset)
                if n <= 0:
                    raise OvfkitIOError(f"writing the package at byte {offset} made no progress")
                view = view[n:]
                offset += n


class _Digests:
    """The whole-package MD5 and xxh128, fed in order with windows of the file at ``fd``.

    Each window is mapped (``_HASH_WINDOW`` bytes) and unmapped before the next: no copy into
    Python buffers (10% faster than pread here), while RSS stays bounded (mapped page-cache
    pages count in RSS, so one whole-file map would grow with the package). xxh128 runs in a
    second thread beside MD5 (both release the GIL). pread where mmap is refused.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.xxh = xxhash.xxh128()
        self.done = 0  # bytes hashed so far, from the start of the file
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ovfkit-xxh128")
        # (start, end, hashes): byte ranges of the file (members) hashed on the way as well
        self.ranges: list[tuple[int, int, Sequence[Updatable]]] = []

    def close(self) -> None:
        self._pool.shutdown()

    def hexdigests(self) -> tuple[str, str]:
        return self.md5.hexdigest(), self.xxh.hexdigest()

    def feed(self, end: int, window_done: Callable[[int], None]) -> None:
        """Hash the file from ``done`` to ``end``; ``window_done(position)`` after each window
        (progress, cancellation)."""
        while self.done < end:
            start = self.done
            # Windows start on multiples of the window size, as mmap offsets must be aligned.
            length = min(_HASH_WINDOW - start % _HASH_WINDOW, end - start)
            aligned = start - start % mmap.ALLOCATIONGRANULARITY
            try:
                mm: mmap.mmap | None = mmap.mmap(
                    self.fd, start + length - aligned, prot=mmap.PROT_READ, offset=aligned
                )
            except (OSError, ValueError):
                mm = None
            if mm is None:
                data = os.pread(self.fd, length, start)
                if len(data) != length:
                    raise OvfkitIOError(f"the package shrank while it was hashed (at byte {start})")
                self._update(data, start)
            else:
                with mm:
                    with contextlib.suppress(AttributeError, OSError):
                        mm.madvise(mmap.MADV_SEQUENTIAL)
                    # Both views released on the way out, even by an exception (a signal
                    # handler's), before the map is closed.
                    with memoryview(mm) as whole, whole[start - aligned :] as window:
                        self._update(window, start)
            self.done = start + length
            window_done(self.done)

    def _beside(self, part: bytes | memoryview, start: int) -> None:
        self.xxh.update(part)
        end = start + len(part)
        for first, last, hashes in self.ranges:
            if first < end and last > start:
                with memoryview(part) as view:
                    piece = view[max(first, start) - start : min(last, end) - start]
                    for h in hashes:
                        h.update(piece)
                    piece.release()

    def _update(self, part: bytes | memoryview, start: int) -> None:
        beside = self._pool.submit(self._beside, part, start)
        try:
            self.md5.update(part)
        finally:
            wait([beside])  # the window stays mapped until xxh128 is done with it
        beside.result()


def _hash_file(
    fd: int, size: int, progress: ProgressCallback | None, cancel: CancelToken | None
) -> tuple[str, str]:
    """MD5 and xxh128 of the first ``size`` bytes of ``fd`` in one sequential pass."""
    digests = _Digests(fd)
    try:

        def window_done(position: int) -> None:
            report(progress, "checksum", position, size)
            check_cancel(cancel, "checksum")

        check_cancel(cancel, "checksum")
        digests.feed(size, window_done)
        return digests.hexdigests()
    finally:
        digests.close()


class _Follower:
    """The one-pass layout's digests: a thread hashes the package in order, up to the point
    where every byte before is final (``advance``), while the writer goes on."""

    def __init__(self, fd: int) -> None:
        self._digests = _Digests(fd)
        self._cond = threading.Condition()
        self._final = 0
        self._closing = False
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ovfkit-package-md5")
        self._thread.start()

    def advance(self, final: int) -> None:
        """Every byte before ``final`` is written and will not change."""
        with self._cond:
            self._final = max(self._final, final)
            self._cond.notify_all()

    def add_range(self, start: int, end: int, algorithms: Sequence[str]) -> dict[str, RunningHash]:
        """Hash bytes ``start`` to ``end`` with ``algorithms`` on the way as well (a member's
        digests for the manifest); call it before ``advance`` passes ``start``."""
        hashes = {name: new_hash(name) for name in algorithms}
        with self._cond:
            if self._digests.done > start:
                raise AssertionError("a range added behind the hashing thread")
            self._digests.ranges.append((start, end, tuple(hashes.values())))
        return hashes

    def wait_until(
        self, position: int, progress: ProgressCallback | None, cancel: CancelToken | None,
        size: int,
    ) -> None:
        """Return once the first ``position`` bytes are hashed (``advance`` passed them)."""
        while self._digests.done < position and self._thread.is_alive():
            check_cancel(cancel, "checksum")
            report(progress, "checksum", self._digests.done, size)
            self._thread.join(0.05)
        if self._error is not None:
            raise self._error
        if self._digests.done < position:
            raise OvfkitIOError(f"hashed {self._digests.done} bytes of the first {position}")

    def finish(
        self, size: int, progress: ProgressCallback | None, cancel: CancelToken | None
    ) -> tuple[str, str]:
        """Wait for the digests of the first ``size`` bytes (the whole package)."""
        self.advance(size)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        try:
            while self._thread.is_alive():
                check_cancel(cancel, "checksum")
                report(progress, "checksum", self._digests.done, size)
                self._thread.join(0.1)
        except BaseException:
            self.stop()
            raise
        if self._error is not None:
            raise self._error
        report(progress, "checksum", self._digests.done, size)
        if self._digests.done != size:
            raise OvfkitIOError(f"hashed {self._digests.done} bytes of a {size}-byte package")
        return self._digests.hexdigests()

    def stop(self) -> None:
        """Stop hashing (the package failed); returns once the thread has ended."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
        self._digests.close()

    def _run(self) -> None:
        def window_done(_position: int) -> None:
            if self._stop:
                raise _Stopped

        try:
            while True:
                with self._cond:
                    while not self._stop and self._final <= self._digests.done:
                        if self._closing:
                            return
                        self._cond.wait()
                    if self._stop:
                        return
                    final = self._final
                self._digests.feed(final, window_done)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the writer by finish()
            self._error = exc
        finally:
            self._digests.close()


class _Stopped(Exception):
    pass


def write_seekable(
    vm: VirtualMachine,
    fd: int,
    options: OvaOptions,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> PackageResult:
    """Write ``vm``'s package into the empty file open at ``fd``, in ``options.layout``;
    ``path`` of the result is None (the caller knows where the file goes)."""
    if options.layout == "one-pass":
        return _write_one_pass(vm, fd, options, progress, cancel)
    return _write_default(vm, fd, options, progress, cancel)


def _beside_fsync(fd: int, fsync: bool, digests: Callable[[], tuple[str, str]]) -> tuple[str, str]:
    """``digests()`` (from the page cache) while a second thread flushes ``fd`` to disk, so the
    hashing overlaps the writeback instead of adding to it (see the module docstring)."""
    errors: list[OSError] = []

    def sync() -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            errors.append(exc)

    syncer = threading.Thread(target=sync, name="ovfkit-fsync") if fsync else None
    if syncer is not None:
        syncer.start()
    try:
        result = digests()
    finally:
        if syncer is not None:
            syncer.join()
    if errors:
        raise errors[0]
    return result


def _write_default(
    vm: VirtualMachine,
    fd: int,
    options: OvaOptions,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> PackageResult:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    mtime = int(time.time()) if options.mtime is None else options.mtime
    plan = plan_package(vm, options, measure_isos(vm, options))
    timings["plan"] = time.perf_counter() - t0
    headers: list[tuple[int, bytes]] = []
    sink = _Sink(fd)
    position = plan.front
    current: dict[str, int] = {}

    def begin(name: str) -> None:
        current[name] = position
        sink.seek(position + tar.BLOCK)

    def end(name: str, size: int) -> None:
        nonlocal position
        sink.write(bytes(tar.padding(size)))
        headers.append((current[name], tar.encode_header(name, size, mtime)))
        position = sink.count

    sink.seek(position)
    written = write_files(plan, sink, options, progress, cancel, begin, end, timings)
    sink.write(tar.END_OF_ARCHIVE)
    sink.flush()
    total = sink.count
    t1 = time.perf_counter()
    descriptor = build_package_descriptor(
        plan, written.sizes, written.populated, written.capacities, pad=True
    )
    digests = digest_all(descriptor, plan.algorithms)
    first = PackageFile(plan.descriptor_name, len(descriptor), digests)
    members = [(first, descriptor), *manifest_files(plan, options, [first, *written.files])]
    front = bytearray()
    for member, data in members:
        front += tar.encode_member(member.name, data, mtime)
    if len(front) != plan.front:
        raise OvfkitIOError(f"front region is {len(front)} bytes, {plan.front} were reserved")
    os.pwrite(fd, bytes(front), 0)
    for offset, header in headers:
        os.pwrite(fd, header, offset)
    timings["descriptor"] = time.perf_counter() - t1
    check_cancel(cancel, "package")
    t2 = time.perf_counter()
    md5, xxh = _beside_fsync(fd, options.fsync, lambda: _hash_file(fd, total, progress, cancel))
    timings["checksum+sync"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    files = tuple(member for member, _ in members) + written.files
    return PackageResult(path=None, size=total, md5=md5, xxh128=xxh, files=files, timings=timings)


def _write_one_pass(
    vm: VirtualMachine,
    fd: int,
    options: OvaOptions,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> PackageResult:
    """The one-pass layout (see the module docstring): descriptor without the disks' sizes,
    the files, then the manifest and certificate; hashed by a :class:`_Follower`."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    mtime = int(time.time()) if options.mtime is None else options.mtime
    plan = plan_package(vm, options, measure_isos(vm, options))
    # Only the ISO sizes are known before the files are written (the stream layout's rule).
    descriptor = build_package_descriptor(plan, plan.iso_sizes, {}, {})
    descriptor_digests = digest_all(descriptor, plan.algorithms)
    timings["plan"] = time.perf_counter() - t0
    sink = _Sink(fd)
    sink.write(tar.encode_member(plan.descriptor_name, descriptor, mtime))
    sink.flush()
    follower = _Follower(fd)
    # The disks' manifest digests are taken by the follower from the page cache, beside the
    # package MD5 it takes anyway, not by the VMDK writer: the last disk is hashed after it
    # is written in any case (module docstring), and SHA-256 on the second core during that
    # MD5 (640 MB/s on one core) is free, where during compression it takes a core from
    # deflate (bench_ova --layout one-pass, benchmarks/README.md).
    disk_names = {
        ref.href for ref in plan.layout.files if any(d.file.id == ref.id for d in plan.layout.disks)
    }
    deferred: dict[str, dict[str, RunningHash]] = {}
    try:
        follower.advance(sink.count)
        header_at = 0

        def begin(_name: str) -> None:
            nonlocal header_at
            header_at = sink.count
            sink.seek(header_at + tar.BLOCK)

        def end(name: str, size: int) -> None:
            sink.write(bytes(tar.padding(size)))
            sink.flush()
            os.pwrite(fd, tar.encode_header(name, size, mtime), header_at)
            if name in disk_names:
                start = header_at + tar.BLOCK
                deferred[name] = follower.add_range(start, start + size, plan.algorithms)
            follower.advance(sink.count)  # the file and everything before it are final

        written = write_files(
            plan, sink, options, progress, cancel, begin, end, timings, defer_disk_digests=True
        )
        check_cancel(cancel, "package")
        files_end = sink.count
        t2 = time.perf_counter()
        total = 0
        result_files: list[PackageFile] = []

        def rest() -> tuple[str, str]:
            nonlocal total
            if deferred:
                follower.wait_until(files_end, progress, cancel, files_end)
            t1 = time.perf_counter()
            files = [PackageFile(plan.descriptor_name, len(descriptor), descriptor_digests)]
            files += [
                PackageFile(f.name, f.size, {n: h.hexdigest() for n, h in deferred[f.name].items()})
                if f.name in deferred
                else f
                for f in written.files
            ]
            for member, data in manifest_files(plan, options, list(files)):
                sink.write(tar.encode_member(member.name, data, mtime))
                files.append(member)
            sink.write(tar.END_OF_ARCHIVE)
            sink.flush()
            total = sink.count
            result_files[:] = files
            timings["descriptor"] = time.perf_counter() - t1
            return follower.finish(total, progress, cancel)

        # fsync starts with the wait for the disks' digests; what the manifest adds after it
        # is flushed by a second, short fsync.
        md5, xxh = _beside_fsync(fd, options.fsync, rest)
        if options.fsync:
            os.fsync(fd)
    except BaseException:
        follower.stop()
        raise
    files = result_files
    timings["checksum+sync"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    return PackageResult(
        path=None, size=total, md5=md5, xxh128=xxh, files=tuple(files), timings=timings
    )
