"""Digests of a byte stream computed on the way out, in background threads.

hashlib releases the GIL for buffers over 2 KiB and xxhash does too, so each algorithm runs in its
own thread while compression keeps the other cores busy. Updates are applied in submission order
(one single-worker executor per algorithm); the number of buffers waiting is bounded.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import xxhash

from ..errors import InvalidArgumentError

__all__ = ["DigestTee", "new_hash"]


class _Hash(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


def new_hash(name: str) -> _Hash:
    if name == "xxh128":
        h: Any = xxhash.xxh128()
        return h  # type: ignore[no-any-return]
    if name == "md5":
        return hashlib.md5(usedforsecurity=False)
    if name in ("sha1", "sha256", "sha384", "sha512"):
        return hashlib.new(name)
    raise InvalidArgumentError(f"unknown digest algorithm {name!r}")


def _update_all(h: _Hash, pieces: Sequence[bytes | memoryview]) -> None:
    for piece in pieces:
        h.update(piece)


class DigestTee:
    """``update(data)`` queues ``data`` for every algorithm; ``hexdigests()`` waits and returns
    {name: hex}. ``max_pending`` buffers may wait per algorithm before update() blocks.
    ``threaded=False`` hashes in the caller's thread instead (a copy running beside another
    process, e.g. qemu-img, should not compete with it for the cores with extra threads)."""

    def __init__(
        self, algorithms: Iterable[str], *, max_pending: int = 8, threaded: bool = True
    ) -> None:
        self._hashes = {name: new_hash(name) for name in dict.fromkeys(algorithms)}
        self._pools = {
            name: ThreadPoolExecutor(1, thread_name_prefix=f"ovfkit-{name}")
            for name in (self._hashes if threaded else ())
        }
        self._pending: deque[Future[None]] = deque()
        self._limit = max_pending * max(1, len(self._hashes))

    def update(self, data: bytes) -> None:
        if not data:
            return
        if not self._pools:
            for h in self._hashes.values():
                h.update(data)
            return
        for name, h in self._hashes.items():
            self._pending.append(self._pools[name].submit(h.update, data))
        while len(self._pending) > self._limit:
            self._pending.popleft().result()

    def update_many(self, pieces: Sequence[bytes | memoryview]) -> None:
        """``update`` with each of ``pieces`` in order, queued as one task per algorithm."""
        if not self._pools:
            for h in self._hashes.values():
                for piece in pieces:
                    h.update(piece)
            return
        for name, h in self._hashes.items():
            self._pending.append(self._pools[name].submit(_update_all, h, pieces))
        while len(self._pending) > self._limit:
            self._pending.popleft().result()

    def hexdigests(self) -> dict[str, str]:
        while self._pending:
            self._pending.popleft().result()
        return {name: h.hexdigest() for name, h in self._hashes.items()}

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()

    def __enter__(self) -> DigestTee:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
