"""Routing (pure): which queue a job goes to, and why none can take it."""

from __future__ import annotations

from ovfkit.cluster.routing import QUEUE_PREFIX, Reach, WorkerInfo, choose_queue, unroutable

A, B = "a" * 32, "b" * 32


def worker(name: str, roots: list[str], bs: list[str], n: int = 2) -> WorkerInfo:
    return WorkerInfo(name, name, Reach.of(roots, bs), n)


def test_queue_is_named_by_reach_alone() -> None:
    one = Reach.of(["/ps1/", "/ps2"], [B, A])
    two = Reach.of(["/ps2", "/ps1"], [A, B, A])
    assert one == two and one.queue == two.queue and one.queue.startswith(QUEUE_PREFIX)
    assert Reach.of(["/ps1"], [A]).queue != one.queue


def test_reads_is_by_path_component_not_prefix() -> None:
    reach = Reach.of(["/zstack_ps"], [A])
    assert reach.reads("/zstack_ps/vol/a.qcow2")
    assert reach.reads("/zstack_ps/x/../y.qcow2")
    assert not reach.reads("/zstack_ps2/a.qcow2")
    assert not reach.reads("/zstack_ps/../etc/shadow")
    assert not reach.reads("relative/a.qcow2")
    assert Reach.of(["/"], [A]).reads("/anything")


def test_only_workers_that_read_every_volume_and_write_the_storage() -> None:
    h1 = worker("h1", ["/ps1"], [A])
    h2 = worker("h2", ["/ps1", "/ps2"], [A, B])
    h3 = worker("h3", ["/ps2"], [B])
    workers = [h1, h2, h3]
    both = ["/ps1/a", "/ps2/b"]
    assert choose_queue(workers, both, A, {}) == h2.reach.queue
    assert choose_queue(workers, ["/ps1/a"], B, {}) == h2.reach.queue
    assert choose_queue(workers, ["/ps3/a"], A, {}) is None
    assert choose_queue([h1, h3], both, A, {}) is None


def test_least_loaded_group_per_thread() -> None:
    small = worker("s", ["/ps"], [A], n=1)
    big = [worker(f"b{i}", ["/ps", "/other"], [A], n=2) for i in range(2)]  # one group, 4 slots
    workers = [small, *big]
    q_small, q_big = small.reach.queue, big[0].reach.queue
    assert choose_queue(workers, ["/ps/x"], A, {q_small: 1, q_big: 3}) == q_big  # 1.0 vs 0.75
    assert choose_queue(workers, ["/ps/x"], A, {q_small: 0, q_big: 1}) == q_small


def test_unroutable_says_what_each_worker_lacks() -> None:
    text = unroutable([worker("h1", ["/ps1"], [A])], ["/ps2/v"], B)
    assert "h1" in text and f"cannot write backup storage {B}" in text and "/ps2/v" in text
    assert "no ovfkit worker is running" in unroutable([], ["/x"], A)
