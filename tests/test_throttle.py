"""Login throttling (ovfkit.zstack.throttle): backoff per (account, client), pure with a clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ovfkit.zstack.throttle import LoginThrottle, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_the_cap_then_an_hour_forgets() -> None:
    clock = Clock()
    t = LoginThrottle(free_failures=2, base_delay=1.0, max_delay=8.0, clock=clock)
    waits = []
    for _ in range(8):
        clock.now += t.wait("admin", "192.0.2.1")
        t.failed("admin", "192.0.2.1")
        waits.append(t.wait("admin", "192.0.2.1"))
    assert waits == [0, 0, 1, 2, 4, 8, 8, 8]
    assert t.wait("admin", "192.0.2.2") == 0  # another client
    assert t.wait("root", "192.0.2.1") == 0  # the same client, another account
    clock.now += 3601
    t.failed("admin", "192.0.2.1")  # a new series: one failure, no wait
    assert t.wait("admin", "192.0.2.1") == 0


def test_success_clears_the_pair_only() -> None:
    t = LoginThrottle(free_failures=0, client_free_failures=3, clock=Clock())
    for name in ("a", "b", "c"):
        t.failed(name, "192.0.2.1")
    t.succeeded("a", "192.0.2.1")
    assert t.wait("a", "192.0.2.1") == 0
    assert t.wait("b", "192.0.2.1") > 0
    # A fourth name: the client's count across names is over its allowance.
    t.failed("d", "192.0.2.1")
    assert t.wait("e", "192.0.2.1") > 0
    assert t.wait("e", "192.0.2.2") == 0


def test_ipv6_clients_are_counted_per_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.1") == client_key("192.0.2.1") == "192.0.2.1"
    assert client_key(None) == client_key("") == "local"
    assert client_key("not an address") == "not an address"


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 300)), max_size=400))
def test_the_table_stays_bounded(attempts: list[tuple[str, int]]) -> None:
    t = LoginThrottle(max_entries=50, clock=Clock())
    for name, host in attempts:
        t.failed(name, f"10.0.{host // 256}.{host % 256}")
        assert len(t) <= 50
