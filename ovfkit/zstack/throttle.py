"""Login throttling per (account name, client address), with exponential backoff (pure: the
clock is injected, nothing here does I/O).

A lockout keyed by account name alone lets anyone keep ``admin`` locked out by sending wrong
passwords; so failures are counted per (name, client) pair. A client that is not failing is
never refused, whatever other clients do. Each pair may fail :attr:`free_failures` times in a
row; after that, every further attempt from it has to wait ``base_delay * 2**k`` seconds (k = the
failures beyond the free ones, capped at :attr:`max_delay`) since its last failure, and is
refused without looking at the password while it waits (the answer tells nothing about the
password). A success clears the pair; so does an hour without failures.

A client spraying many account names is slowed the same way by a per-client count with a larger
allowance. IPv6 clients are counted per /64, the smallest block one host is usually given
(RFC 6177), so a host cannot reset its count by changing its address within that block.

Counts live in memory (a restart forgets them) in a bounded table: when full, the entries
whose wait is over go first, then the oldest.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LoginThrottle", "client_key"]


def client_key(address: str | None) -> str:
    """The unit a client is counted in: its IPv4 address, its IPv6 /64, else the text given
    (``None``, a Unix socket or a test client: one shared ``local`` client)."""
    if not address:
        return "local"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class _Series:
    failures: int
    last: float


class LoginThrottle:
    """Thread-safe failure counts with backoff; see the module docstring."""

    def __init__(
        self,
        *,
        free_failures: int = 5,
        client_free_failures: int = 50,
        base_delay: float = 1.0,
        max_delay: float = 900.0,
        forget_after: float = 3600.0,
        max_entries: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.client_free_failures = client_free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = max(forget_after, max_delay)
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._series: dict[tuple[str | None, str], _Series] = {}

    def _delay(self, series: _Series, free: int) -> float:
        beyond = series.failures - free
        if beyond <= 0:
            return 0.0
        # 2**beyond overflows a float past ~1024; the cap is reached long before.
        return min(self.max_delay, self.base_delay * math.pow(2, min(beyond - 1, 64)))

    def _wait_of(self, key: tuple[str | None, str], free: int, now: float) -> float:
        series = self._series.get(key)
        if series is None:
            return 0.0
        return max(0.0, series.last + self._delay(series, free) - now)

    def wait(self, name: str, client: str | None) -> float:
        """Seconds before ``client`` may try ``name`` again; 0.0 when it may now."""
        where = client_key(client)
        now = self._clock()
        with self._lock:
            return max(
                self._wait_of((name, where), self.free_failures, now),
                self._wait_of((None, where), self.client_free_failures, now),
            )

    def failed(self, name: str, client: str | None) -> None:
        where = client_key(client)
        now = self._clock()
        with self._lock:
            for key in ((name, where), (None, where)):
                series = self._series.pop(key, None)  # re-inserted last: the newest entry
                if series is None or now - series.last > self.forget_after:
                    series = _Series(0, now)
                series.failures += 1
                series.last = now
                self._series[key] = series
            self._bound(now)

    def succeeded(self, name: str, client: str | None) -> None:
        """The right password: the pair starts afresh. The client's count across names is
        left as it is (one right guess among many names is no reason to forget the rest)."""
        with self._lock:
            self._series.pop((name, client_key(client)), None)

    def _bound(self, now: float) -> None:
        if len(self._series) <= self.max_entries:
            return
        over = [
            k for k, s in self._series.items()
            if now - s.last > self.forget_after
        ]
        for key in over:
            del self._series[key]
        while len(self._series) > self.max_entries:
            del self._series[next(iter(self._series))]

    def __len__(self) -> int:
        with self._lock:
            return len(self._series)
