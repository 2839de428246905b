"""The qemu-img edge: one typed function per subcommand, every failure an ovfkit error.

qemu-img (Debian package ``qemu-utils``) is run as a child process with an argument list, never a
shell string, and its JSON output (``--output=json``) is parsed into frozen dataclasses. The shape
follows ovirt-imageio's ``qemu_img.py``: thin wrappers, exit codes and stderr mapped to typed
errors, qemu-img's own message kept in the error details.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import stat
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import (
    NotFoundError,
    OperationCancelledError,
    OperationFailedError,
    OvfkitError,
    OvfkitIOError,
    ToolMissingError,
    UnimplementedError,
)
from ..progress import CancelToken, Progress, ProgressCallback

__all__ = [
    "QEMU_IMG",
    "CheckResult",
    "ImageInUseError",
    "ImageInfo",
    "ImageWindow",
    "MapExtent",
    "Measure",
    "check",
    "classify_failure",
    "compare",
    "convert",
    "format_options",
    "info",
    "map",
    "measure",
    "path_arg",
    "run",
]

QEMU_IMG = "qemu-img"
DEBIAN_PACKAGE = "qemu-utils"

# qemu-img's messages are not translated, but the C library's strerror() texts are.
_ENV_OVERRIDES = {"LC_ALL": "C", "LANG": "C"}


class ImageInUseError(OperationFailedError):
    """The image is open read-write by another process (a running VM): qemu holds its write lock.

    qemu's image locking (qemu 2.10+, ``file.locking``) makes every other opener fail with
    ``Failed to get shared "write" lock``; reading anyway needs force-share (``-U``).
    """


@dataclass(frozen=True)
class ImageInfo:
    """``qemu-img info --output=json``; ``backing_chain`` holds the images below this one,
    nearest first (empty without a backing file or when asked without the chain)."""

    filename: str
    format: str
    virtual_size: int
    actual_size: int | None
    cluster_size: int | None
    backing_filename: str | None
    backing_format: str | None
    dirty: bool
    corrupt: bool
    encrypted: bool
    compression_type: str | None
    backing_chain: tuple[ImageInfo, ...] = ()
    data_file: str | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], chain: Sequence[ImageInfo] = ()) -> ImageInfo:
        specific = obj.get("format-specific", {}).get("data", {})
        return cls(
            filename=str(obj["filename"]),
            format=str(obj["format"]),
            virtual_size=int(obj["virtual-size"]),
            actual_size=_opt_int(obj.get("actual-size")),
            cluster_size=_opt_int(obj.get("cluster-size")),
            backing_filename=obj.get("full-backing-filename", obj.get("backing-filename")),
            backing_format=obj.get("backing-filename-format"),
            dirty=bool(obj.get("dirty-flag", False)),
            corrupt=bool(specific.get("corrupt", False)),
            encrypted=bool(obj.get("encrypted", False)),
            compression_type=specific.get("compression-type"),
            backing_chain=tuple(chain),
            data_file=specific.get("data-file"),
        )


@dataclass(frozen=True)
class MapExtent:
    """One line of ``qemu-img map --output=json``: ``data`` is allocated data, ``zero`` reads as
    zeros; ``depth`` is the chain layer that holds it (0 = top); ``offset`` is the host offset,
    None when there is none (zero, hole, compressed cluster)."""

    start: int
    length: int
    data: bool
    zero: bool
    depth: int
    present: bool
    offset: int | None


@dataclass(frozen=True)
class ImageWindow:
    """The bytes [offset, offset + length) of an image as a disk of their own (``length`` None:
    to the end), for qemu-img to read: qemu's raw format driver over the image's format node
    (qemu docs "raw" driver options offset/size; QMP blockdev-add BlockdevOptionsRaw). A
    window's virtual size is its length; qemu reads the backing chain of the image as usual."""

    path: str
    fmt: str  # the image's format ("raw": the file's bytes as they are)
    offset: int
    length: int | None = None

    def spec(self) -> str:
        """The ``json:`` pseudo-filename qemu-img accepts in place of a path."""
        path = os.path.abspath(self.path)
        # qemu's "file" protocol driver refuses a block device: "host_device" reads those.
        try:
            proto = "host_device" if stat.S_ISBLK(os.stat(path).st_mode) else "file"
        except OSError:
            proto = "file"  # qemu-img then says what is wrong with the path
        node: dict[str, object] = {"driver": proto, "filename": path}
        if self.fmt != "raw":
            node = {"driver": self.fmt, "file": node}
        top: dict[str, object] = {"driver": "raw", "offset": self.offset, "file": node}
        if self.length is not None:
            top["size"] = self.length
        return "json:" + json.dumps(top, separators=(",", ":"))


@dataclass(frozen=True)
class Measure:
    """Bytes an image needs in ``out_fmt``: ``required`` for the data as it is, ``fully_allocated``
    if every cluster were written. ``estimated`` is True when qemu-img cannot measure the format
    (vmdk in qemu 7.2) and ovfkit computed an upper bound instead."""

    required: int
    fully_allocated: int
    estimated: bool = False


@dataclass(frozen=True)
class CheckResult:
    """``qemu-img check``: ``supported`` is False for formats without checks (raw)."""

    supported: bool
    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    image_end_offset: int | None = None

    @property
    def ok(self) -> bool:
        return self.corruptions == 0 and self.check_errors == 0


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


# ---------------------------------------------------------------------------------------------
# Failures


_LOCK_RE = re.compile(r'Failed to get (shared )?"(write|read|consistent read)" lock')
_NOT_FOUND = ("No such file or directory",)
_IO = (
    "No space left on device",
    "Disk quota exceeded",
    "Input/output error",
    "Cannot grow device files",
    "File too large",
)
_UNSUPPORTED = ("does not support", "not supported")


def classify_failure(command: str, stderr: str, exit_code: int | None = None) -> OvfkitError:
    """The ovfkit error for a failed qemu-img run, from its stderr (pure, so it can be tested
    for every message). qemu-img's messages come from the block layer and strerror()."""
    message = " ".join(line.strip() for line in stderr.strip().splitlines() if line.strip())
    if not message:
        message = f"exit code {exit_code}"
    details = f"{command}: {message}"
    opaque = {"stderr": stderr, "exitCode": exit_code}
    if _LOCK_RE.search(message):
        return ImageInUseError(
            details + " (the image is in use, e.g. by a running VM; stop it, or read with"
            " force_shared at your own risk)",
            opaque=opaque,
        )
    if any(s in message for s in _NOT_FOUND):
        return NotFoundError(details, opaque=opaque)
    if any(s in message for s in _IO):
        return OvfkitIOError(details, opaque=opaque)
    if "size measurement" in message and any(s in message for s in _UNSUPPORTED):
        return UnimplementedError(details, opaque=opaque)
    # Not an image, unknown driver, corrupt image, permission denied, ...: the operation failed.
    return OperationFailedError(details, opaque=opaque)


def _tool_missing(exc: OSError) -> ToolMissingError:
    return ToolMissingError(
        f"{QEMU_IMG} is not installed or not on PATH ({exc.strerror}); install the Debian "
        f"package {DEBIAN_PACKAGE} (apt-get install {DEBIAN_PACKAGE})"
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(_ENV_OVERRIDES)
    return env


def run(args: Sequence[str], *, ok_codes: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
    """Run ``qemu-img ARGS``; an exit code outside ``ok_codes`` becomes an ovfkit error."""
    cmd = [QEMU_IMG, *args]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            errors="replace",  # a path in a message need not be UTF-8
            env=_env(),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as exc:
        raise _tool_missing(exc) from None
    if proc.returncode not in ok_codes:
        raise classify_failure(f"qemu-img {args[0]}", proc.stderr, proc.returncode)
    return proc


def path_arg(path: str | os.PathLike[str]) -> str:
    """A local path as a qemu-img argument: a relative path that starts with "-" would be read
    as an option, and one with ":" before any "/" as a protocol prefix (qemu's
    path_has_protocol), so those get "./" in front. ovfkit passes files, never qemu URIs."""
    text = os.fspath(path)
    if not os.path.isabs(text) and (text.startswith("-") or ":" in text.split("/", 1)[0]):
        return "./" + text
    return text


def _image_arg(src: str | os.PathLike[str] | ImageWindow) -> str:
    return src.spec() if isinstance(src, ImageWindow) else path_arg(src)


def _fmt_args(flag: str, fmt: str | None) -> list[str]:
    return [flag, fmt] if fmt else []


def format_options(options: Mapping[str, object]) -> str:
    """``-o`` value: ``k=v,k=v``; a comma inside a value is doubled (QemuOpts escaping)."""
    parts = []
    for key, value in options.items():
        text = ("on" if value else "off") if isinstance(value, bool) else str(value)
        parts.append(f"{key}={text.replace(',', ',,')}")
    return ",".join(parts)


def _parse_json(proc: subprocess.CompletedProcess[str], what: str) -> Any:
    try:
        return json.loads(proc.stdout)
    except ValueError as exc:
        raise OperationFailedError(f"qemu-img {what}: unreadable JSON output: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Subcommands


def info(
    path: str | os.PathLike[str] | ImageWindow,
    fmt: str | None = None,
    backing_chain: bool = True,
    force_share: bool = False,
) -> ImageInfo:
    """``qemu-img info``; with ``backing_chain`` every backing file is opened too, so a missing
    or locked backing file is reported here. An ImageWindow brings its own format."""
    if isinstance(path, ImageWindow):
        fmt = None
    args = ["info", "--output=json", *_fmt_args("-f", fmt)]
    if backing_chain:
        args.append("--backing-chain")
    if force_share:
        args.append("-U")
    args.append(_image_arg(path))
    obj = _parse_json(run(args), "info")
    if isinstance(obj, list):
        images = [ImageInfo.from_json(o) for o in obj]
        if not images:
            raise OperationFailedError(f"qemu-img info: empty backing chain for {path}")
        return ImageInfo.from_json(obj[0], images[1:])
    return ImageInfo.from_json(obj)


def map(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    force_share: bool = False,
    *,
    start: int | None = None,
    length: int | None = None,
) -> list[MapExtent]:
    """``qemu-img map --output=json``: allocation of the whole chain as seen by the guest,
    optionally of the window [start, start + length) only."""
    args = ["map", "--output=json", *_fmt_args("-f", fmt)]
    if force_share:
        args.append("-U")
    if start is not None:
        args.append(f"--start-offset={start}")
    if length is not None:
        args.append(f"--max-length={length}")
    args.append(path_arg(path))
    return [
        MapExtent(
            start=int(e["start"]),
            length=int(e["length"]),
            data=bool(e["data"]),
            zero=bool(e["zero"]),
            depth=int(e.get("depth", 0)),
            present=bool(e.get("present", True)),
            offset=_opt_int(e.get("offset")),
        )
        for e in _parse_json(run(args), "map")
    ]


# streamOptimized upper bounds (VMware Virtual Disk Format 5.0): 64 KiB grains, 512 grain table
# entries of 4 bytes, markers of one sector; a stored deflate block costs 5 bytes per 64 KiB at
# worst plus the zlib header and Adler-32, so one sector covers marker and expansion.
_GRAIN = 64 * 1024
_GT_COVERAGE = 512 * _GRAIN
_SECTOR = 512


def _vmdk_stream_bound(capacity: int, data_bytes: int) -> int:
    grains = -(-data_bytes // _GRAIN)
    tables = -(-capacity // _GT_COVERAGE)
    gd_bytes = -(-tables * 4 // _SECTOR) * _SECTOR
    overhead = 64 * 1024  # header, embedded descriptor, padding (qemu uses 128 sectors)
    return (
        overhead
        + grains * (_GRAIN + _SECTOR)
        + tables * (2048 + _SECTOR)
        + gd_bytes
        + _SECTOR
        + 3 * _SECTOR
    )


def measure(
    path_or_size: str | os.PathLike[str] | int,
    out_fmt: str = "vmdk",
    *,
    fmt: str | None = None,
    options: Mapping[str, object] | None = None,
    force_share: bool = False,
) -> Measure:
    """``qemu-img measure``: bytes the image needs in ``out_fmt``. qemu 7.2 cannot measure vmdk;
    then the streamOptimized upper bound is computed from ``qemu-img map`` (allocated data
    in whole grains, each possibly stored uncompressed, plus tables and markers)."""
    args = ["measure", "--output=json", "-O", out_fmt]
    if options:
        args += ["-o", format_options(options)]
    if isinstance(path_or_size, int):
        args += ["--size", str(path_or_size)]
    else:
        args += _fmt_args("-f", fmt)
        if force_share:
            args.append("-U")
        args.append(path_arg(path_or_size))
    try:
        obj = _parse_json(run(args), "measure")
    except UnimplementedError:
        if out_fmt != "vmdk":
            raise
        if isinstance(path_or_size, int):
            capacity, data = path_or_size, 0
        else:
            extents = map(path_or_size, fmt, force_share=force_share)
            capacity = sum(e.length for e in extents)
            data = _grain_aligned_data(extents)
        return Measure(
            required=_vmdk_stream_bound(capacity, data),
            fully_allocated=_vmdk_stream_bound(capacity, capacity),
            estimated=True,
        )
    return Measure(required=int(obj["required"]), fully_allocated=int(obj["fully-allocated"]))


def _grain_aligned_data(extents: Sequence[MapExtent]) -> int:
    """Bytes of the grains that hold any data (a grain touched by data is written whole)."""
    grains: set[int] = set()
    for e in extents:
        if e.data and not e.zero:
            grains.update(range(e.start // _GRAIN, -(-(e.start + e.length) // _GRAIN)))
    return len(grains) * _GRAIN


def compare(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    fmt_a: str | None = None,
    fmt_b: str | None = None,
    *,
    strict: bool = False,
    force_share: bool = False,
) -> bool:
    """``qemu-img compare``: True if the guest sees the same bytes (exit 0), False if they
    differ (exit 1); any other exit is an error. Without ``strict`` a size difference is fine
    when the larger image's tail reads as zeros (qemu-img's rule)."""
    args = ["compare", *_fmt_args("-f", fmt_a), *_fmt_args("-F", fmt_b)]
    if strict:
        args.append("-s")
    if force_share:
        args.append("-U")
    args += [path_arg(a), path_arg(b)]
    proc = run(args, ok_codes=(0, 1))
    return proc.returncode == 0


def check(path: str | os.PathLike[str], fmt: str | None = None) -> CheckResult:
    """``qemu-img check``: exit 0 clean, 2 corruptions, 3 leaks only, 63 format without checks;
    exit 1 (the check itself failed) is an error."""
    args = ["check", "--output=json", *_fmt_args("-f", fmt), path_arg(path)]
    proc = run(args, ok_codes=(0, 2, 3, 63))
    if proc.returncode == 63:
        return CheckResult(supported=False)
    obj = _parse_json(proc, "check")
    return CheckResult(
        supported=True,
        corruptions=int(obj.get("corruptions", 0)),
        leaks=int(obj.get("leaks", 0)),
        check_errors=int(obj.get("check-errors", 0)),
        image_end_offset=_opt_int(obj.get("image-end-offset")),
    )


# ``qemu-img convert -p`` prints "    (12.34/100%)\r" on stdout at every 1% step (and more
# often on small images); it prints progress whether or not stdout is a terminal.
_PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
_POLL_SECONDS = 0.1
_TERMINATE_GRACE = 5.0


def convert(
    src: str | os.PathLike[str] | ImageWindow,
    dst: str | os.PathLike[str],
    *,
    src_fmt: str | None,
    dst_fmt: str,
    options: Mapping[str, object] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    force_share: bool = False,
    stage: str = "qemu-img convert",
    extra_args: Sequence[str] = (),
    total: int | None = None,
) -> None:
    """``qemu-img convert``, reporting progress in bytes of the source's virtual size (``total``
    when given, else asked of ``qemu-img info``). An ImageWindow source brings its own format
    (``src_fmt`` is ignored).

    On failure or cancellation the child is ended and ``dst`` is removed if this call created
    it, so no half-written output is left behind. ``cancel`` is polled every 0.1 s.
    """
    dst_path = os.fspath(dst)
    if isinstance(src, ImageWindow):
        src_fmt = None
    if total is None:
        total = 0
        if progress is not None:
            total = info(src, src_fmt, backing_chain=False, force_share=force_share).virtual_size
    args = ["convert", "-p", *_fmt_args("-f", src_fmt), "-O", dst_fmt]
    if options:
        args += ["-o", format_options(options)]
    if force_share:
        args.append("-U")
    args += [*extra_args, _image_arg(src), path_arg(dst_path)]
    existed = os.path.lexists(dst_path)

    def discard() -> None:
        if not existed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst_path)

    with tempfile.TemporaryFile() as errfile:
        try:
            proc = subprocess.Popen(
                [QEMU_IMG, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errfile,
                env=_env(),
            )
        except FileNotFoundError as exc:
            raise _tool_missing(exc) from None
        assert proc.stdout is not None
        try:
            _follow(proc, proc.stdout, stage, total, progress, cancel)
        except BaseException:
            _end(proc)
            discard()
            raise
        finally:
            proc.stdout.close()
        if proc.returncode != 0:
            discard()
            errfile.seek(0)
            stderr = errfile.read().decode("utf-8", "replace")
            raise classify_failure("qemu-img convert", stderr, proc.returncode)
    if progress is not None:
        progress(Progress(stage, total, total))


def _follow(
    proc: subprocess.Popen[bytes],
    stdout: Any,
    stage: str,
    total: int,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> None:
    """Read the progress lines until the child exits; raise OperationCancelledError once cancel
    is set."""
    fd = stdout.fileno()
    os.set_blocking(fd, False)
    pending = b""
    last = -1
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            if cancel is not None and cancel.is_set():
                raise OperationCancelledError(f"{stage} was cancelled")
            if not sel.select(_POLL_SECONDS):
                continue
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\r")
            for line in lines:
                m = _PROGRESS_RE.search(line)
                if m and progress is not None:
                    done = min(total, int(float(m.group(1)) * total / 100))
                    if done != last:
                        last = done
                        progress(Progress(stage, done, total))
    proc.wait()


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(_TERMINATE_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
