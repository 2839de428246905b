"""Where a VMDK goes, for both engines: anything with ``write()``."""

from __future__ import annotations

from typing import Protocol

from ..errors import OvfkitIOError

__all__ = ["Sink", "write_all"]


class Sink(Protocol):
    """Where the VMDK goes: anything with ``write()`` (a file, a pipe, a socket file, a tar
    member writer). A short write is continued; None (non-blocking, nothing taken) is retried.
    The native writer also uses an optional ``writev(pieces)`` (write a list of bytes-like
    pieces, all of them, in order; OSError on failure) to hand its grains over without joining
    them first."""

    def write(self, data: bytes, /) -> int | None: ...


def write_all(sink: Sink, data: bytes) -> None:
    """Hand all of ``data`` to ``sink``; its failures become OvfkitIOError (SYS.1016)."""
    try:
        while data:
            n = sink.write(data)
            if n is None:  # a non-blocking sink that could not take it now
                continue
            data = data[n:] if n < len(data) else b""
    except OSError as e:
        raise OvfkitIOError(f"writing the VMDK failed: {e}") from e
