"""Where a VMDK goes, for both engines: anything with ``write()``."""

from __future__ import annotations

from typing import Protocol

from ..errors import OvfkitIOError

__all__ = ["Sink", "write_all"]


class Sink(Protocol):
    """Where the VMDK goes: anything with ``write()`` (a file, a pipe, a socket file, a tar
    member writer). A short write is continued; None (non-blocking, nothing taken) is retried.
    An optional ``writev(pieces)`` (write a list of bytes-like pieces, all of them, in order;
    OSError on failure) is used when present, to hand batches of grains over without joining
    them first.

    The native writer calls the sink from its writer thread (ovfkit.vmdk.output), one call at
    a time, in order; ``write`` or ``writev`` returns before the writer returns. The bytes
    handed over may be views of memory that is reused: they are valid until the call returns
    (write or copy them before returning, never keep a view)."""

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
