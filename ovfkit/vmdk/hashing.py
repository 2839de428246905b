"""Digests of a byte stream computed on the way out, in background threads.

hashlib releases the GIL for buffers over 2 KiB and xxhash does too, so each algorithm runs in its
own thread while compression keeps the other cores busy. Updates are applied in submission order
(one single-worker executor per algorithm); the number of buffers waiting is bounded.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import xxhash

from ..errors import InvalidArgumentError

__all__ = ["DigestTee", "RunningHash", "Updatable", "new_hash"]


class Updatable(Protocol):
    """A running hash (hashlib, xxhash or alike): all it takes is ``update``."""

    def update(self, data: bytes | memoryview, /) -> None: ...


class _Hash(Updatable, Protocol):
    def hexdigest(self) -> str: ...


RunningHash = _Hash  # what new_hash gives: update() and hexdigest()


def new_hash(name: str) -> _Hash:
    if name == "xxh128":
        h: Any = xxhash.xxh128()
        return h  # type: ignore[no-any-return]
    if name == "md5":
        return hashlib.md5(usedforsecurity=False)
    if name in ("sha1", "sha256", "sha384", "sha512"):
        return hashlib.new(name)
    raise InvalidArgumentError(f"unknown digest algorithm {name!r}")


def _update_all(h: Updatable, pieces: Sequence[bytes | memoryview]) -> None:
    for piece in pieces:
        h.update(piece)


class _Countdown:
    """Runs ``done`` once ``count`` futures have finished (in the thread finishing the last)."""

    __slots__ = ("_count", "_done", "_lock")

    def __init__(self, count: int, done: Callable[[], None]) -> None:
        self._count = count
        self._done = done
        self._lock = threading.Lock()

    def __call__(self, _future: object) -> None:
        with self._lock:
            self._count -= 1
            last = self._count == 0
        if last:
            self._done()


class DigestTee:
    """``update(data)`` queues ``data`` for every algorithm; ``hexdigests()`` waits and returns
    {name: hex}. ``max_pending`` buffers may wait per algorithm before update() blocks.
    ``threaded=False`` hashes in the caller's thread instead (a copy running beside another
    process, e.g. qemu-img, should not compete with it for the cores with extra threads).
    ``extra``: running hash objects of the caller's (anything with ``update``) fed the same
    bytes in the same order, each in a thread of its own; their results are the caller's."""

    def __init__(
        self,
        algorithms: Iterable[str],
        *,
        extra: Sequence[Updatable] = (),
        max_pending: int = 8,
        threaded: bool = True,
    ) -> None:
        self._hashes = {name: new_hash(name) for name in dict.fromkeys(algorithms)}
        self._all: list[tuple[str, Updatable]] = [*self._hashes.items()]
        self._all += [(f"extra{k}", h) for k, h in enumerate(extra)]
        self._pools = {
            name: ThreadPoolExecutor(1, thread_name_prefix=f"ovfkit-{name}")
            for name, _ in (self._all if threaded else ())
        }
        self._pending: deque[Future[None]] = deque()
        self._limit = max_pending * max(1, len(self._all))

    def update(self, data: bytes) -> None:
        if data:
            self.update_many((data,))

    def update_many(
        self, pieces: Sequence[bytes | memoryview], done: Callable[[], None] | None = None
    ) -> None:
        """``update`` with each of ``pieces`` in order, queued as one task per algorithm.
        ``done`` runs once every algorithm has taken them (the pieces may then be reused),
        in a hashing thread or, when nothing is left to do, in the caller's."""
        if not self._pools:
            for _, h in self._all:
                for piece in pieces:
                    h.update(piece)
            if done is not None:
                done()
            return
        countdown = _Countdown(len(self._all), done) if done is not None else None
        for name, h in self._all:
            future = self._pools[name].submit(_update_all, h, pieces)
            if countdown is not None:
                future.add_done_callback(countdown)
            self._pending.append(future)
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
