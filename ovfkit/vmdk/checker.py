"""A worker process of :mod:`ovfkit.vmdk.checkers`: it walks and inflates the grains of one
segment of a VMDK per task and reports what it found.

Kept small on purpose: a worker imports this module, :mod:`ovfkit.vmdk.reader` and what that
needs (the pure format module, isal), nothing else. Messages are pickles framed by a 4-byte
length on two pipes between a parent and its own child: (job, task) in, ("ok", result) or
("fail", details) out. The worker ends when its task pipe ends.
"""

from __future__ import annotations

import os
import pickle
import struct

TYPE_CHECKING = False  # not typing's: the worker need not import typing
if TYPE_CHECKING:
    from typing import Any

    from .checkers import Job, Task

__all__ = ["main", "receive", "send"]

_LENGTH = struct.Struct("<I")


def _read_exactly(fd: int, n: int) -> bytes:
    parts = []
    while n:
        part = os.read(fd, n)
        if not part:
            raise EOFError
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def send(fd: int, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def receive(fd: int) -> Any:
    (length,) = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size))
    return pickle.loads(_read_exactly(fd, length))


def main(task_fd: int, result_fd: int) -> None:
    from .reader import check_segment

    while True:
        try:
            message: tuple[Job, Task] = receive(task_fd)
        except EOFError:
            return
        job, task = message
        try:
            send(result_fd, ("ok", check_segment(job, task)))
        except Exception as exc:  # reported to the parent, which raises it there
            details = getattr(exc, "details", None) or f"{type(exc).__name__}: {exc}"
            send(result_fd, ("fail", str(details)))
