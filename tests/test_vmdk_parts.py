"""plan_parts: where the qemu-img engine cuts a disk between parallel converts (pure)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovfkit.errors import InvalidArgumentError
from ovfkit.vmdk.format import GRAIN_SIZE as G
from ovfkit.vmdk.parts import PARTS_PER_JOB, Part, plan_parts


def _data_in(extents: list[tuple[int, int]], a: int, b: int) -> int:
    """Allocated bytes of [a, b) (extents may overlap)."""
    covered: list[tuple[int, int]] = []
    for s, n in sorted(extents):
        lo, hi = max(s, a), min(s + n, b)
        if lo >= hi:
            continue
        if covered and lo <= covered[-1][1]:
            covered[-1] = (covered[-1][0], max(covered[-1][1], hi))
        else:
            covered.append((lo, hi))
    return sum(hi - lo for lo, hi in covered)


@st.composite
def disks(draw: st.DrawFn) -> tuple[list[tuple[int, int]], int]:
    capacity = draw(st.integers(0, 4096 * G + G - 1))
    extents = draw(
        st.lists(
            st.tuples(st.integers(0, capacity + G), st.integers(0, 600 * G + 777)), max_size=30
        )
    )
    return extents, capacity


@given(disks(), st.integers(1, 8), st.integers(1, 200))
def test_parts_cover_the_disk_on_grain_bounds_with_even_data(
    disk: tuple[list[tuple[int, int]], int], jobs: int, min_grains: int
) -> None:
    extents, capacity = disk
    min_part = min_grains * G
    parts = plan_parts(extents, capacity, jobs, min_part)
    total = _data_in(extents, 0, capacity)
    assert parts[0].start == 0 and parts[-1].length is None
    for a, b in itertools.pairwise(parts):
        assert a.length is not None and a.start + a.length == b.start
    assert all(p.start % G == 0 for p in parts)
    assert all(p.size(capacity) > 0 for p in parts[:-1])
    assert parts[-1].start < capacity or parts == (Part(0, None),)
    expected = 1 if jobs == 1 else max(1, min(jobs * PARTS_PER_JOB, total // min_part))
    assert len(parts) == expected
    if len(parts) > 1:
        for p in parts:
            share = _data_in(extents, p.start, p.start + p.size(capacity))
            assert abs(share - total / len(parts)) <= G + 1
            assert share >= min_part - G - 1


def test_cuts_follow_the_data_not_the_size() -> None:
    # 1 GiB disk whose data sits in its last 64 MiB: every cut falls in there.
    cap = 1 << 30
    parts = plan_parts([(cap - 64 * 2**20, 64 * 2**20)], cap, 2, 8 * 2**20)
    assert len(parts) == 8
    assert parts[1].start == cap - 56 * 2**20
    assert [p.start for p in parts[1:]] == [cap - (64 - 8 * k) * 2**20 for k in range(1, 8)]


def test_one_part_when_one_job_or_little_data() -> None:
    assert plan_parts([(0, 1 << 30)], 1 << 30, 1, G) == (Part(0, None),)
    assert plan_parts([(0, 3 * G)], 1 << 30, 4, 2 * G) == (Part(0, None),)
    assert plan_parts([], 0, 4, G) == (Part(0, None),)
    with pytest.raises(InvalidArgumentError):
        plan_parts([], 1 << 20, 0, G)
    with pytest.raises(InvalidArgumentError):
        plan_parts([], 1 << 20, 2, 512)
