"""Reading the command line's input files and writing its outputs: bounded reads (stdin as
``-``), atomic writes (a finished file or none, never half)."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile

from .. import limits
from ..errors import InvalidArgumentError, NotFoundError, OvfkitError, OvfkitIOError

__all__ = ["MAX_INVENTORY_BYTES", "read_input", "write_atomic"]

# Any input file: the largest of the formats' own caps (a descriptor's 12 MiB; an inventory's
# is 4 MiB, applied by its reader). Real ones are a few KiB.
MAX_INVENTORY_BYTES = max(limits.MAX_DESCRIPTOR_SIZE, limits.MAX_INVENTORY_SIZE)


def _io_error(what: str, path: str, exc: OSError) -> OvfkitError:
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(f"{what} {path!r} not found")
    if isinstance(exc, IsADirectoryError) or exc.errno == errno.EISDIR:
        return InvalidArgumentError(f"{what} {path!r} is a directory")
    return OvfkitIOError(f"cannot read {what} {path!r}: {reason}")


def read_input(path: str, *, limit: int = MAX_INVENTORY_BYTES, what: str = "inventory") -> bytes:
    """The bytes of ``path`` (``-``: stdin), refusing more than ``limit`` bytes; errors call the
    file ``what``."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except OSError as exc:
        raise _io_error(what, path, exc) from None
    if len(data) > limit:
        raise InvalidArgumentError(f"{what} {path!r} is larger than {limit} bytes")
    return data


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync'd and
    renamed over ``path``; on any failure the temporary file is removed and ``path`` untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InvalidArgumentError(f"output {path!r} is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ovfkit-", suffix=".tmp", dir=directory)
    except FileNotFoundError:
        raise NotFoundError(f"output directory {directory!r} not found") from None
    except OSError as exc:
        raise OvfkitIOError(f"cannot write output {path!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OvfkitIOError(f"cannot write output {path!r}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
