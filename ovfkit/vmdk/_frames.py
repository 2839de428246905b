"""Messages between the grain checkers' parent (:mod:`.checkers`) and its workers
(:mod:`.checker`): pickles framed by a 4-byte length on a pipe. Both ends are one parent and its
own children, so both trust what they read. Imports only what a worker can afford."""

from __future__ import annotations

import os
import pickle
import struct

TYPE_CHECKING = False  # not typing's: the worker need not import typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["receive", "send"]

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
