"""Where to cut a disk so several ``qemu-img convert`` runs can share it (pure).

qemu-img compresses a streamOptimized VMDK on one thread (the vmdk driver deflates each grain
in ``vmdk_write_extent`` inside the coroutine that writes it), so the qemu-img engine runs one
qemu-img per window of the disk, as many at once as there are cores, and joins their grains
(grains carry their LBA, VMware "Virtual Disk Format 5.0" stream-optimized markers; the copy
builds the grain tables itself). Cuts fall on grain boundaries, so no grain spans two windows,
and split the *allocated* bytes evenly: holes cost qemu-img nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InvalidArgumentError
from . import format as fmt

__all__ = ["PARTS_PER_JOB", "Part", "plan_parts"]

# More windows than qemu-img processes, so the last ones to end are short and the cores stay
# busy while the copy catches up (one window per job leaves a core idle as soon as the
# faster half is done: random data deflates faster than text).
PARTS_PER_JOB = 4


@dataclass(frozen=True)
class Part:
    """Bytes [start, start + length) of the disk; ``length`` None: to the end (the last part,
    so a virtual size that is not a whole number of grains or sectors stays qemu's business)."""

    start: int
    length: int | None

    def size(self, capacity: int) -> int:
        return capacity - self.start if self.length is None else self.length


def plan_parts(
    data: Iterable[tuple[int, int]], capacity: int, jobs: int, min_part: int
) -> tuple[Part, ...]:
    """Consecutive parts covering [0, capacity): one when ``jobs`` is 1 or there are fewer than
    two ``min_part`` of allocated bytes (``data``: (start, length) extents), else up to
    ``jobs * PARTS_PER_JOB`` parts, each with about the same allocated bytes (within a grain)
    and at least ``min_part`` of them."""
    if jobs < 1 or min_part < fmt.GRAIN_SIZE or capacity < 0:
        raise InvalidArgumentError(f"plan_parts: jobs {jobs}, min_part {min_part}")
    extents = sorted(
        (s, min(s + n, capacity)) for s, n in data if n > 0 and s < capacity and s >= 0
    )
    merged: list[tuple[int, int]] = []
    for s, e in extents:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    total = sum(e - s for s, e in merged)
    count = min(jobs * PARTS_PER_JOB, total // min_part) if jobs > 1 else 1
    if count < 2:
        return (Part(0, None),)
    cuts: list[int] = []
    seen = 0  # allocated bytes before the current extent
    it = iter(merged)
    s, e = next(it)
    for k in range(1, count):
        target = k * total // count
        while seen + (e - s) <= target:
            seen += e - s
            s, e = next(it)
        at = (s + target - seen) // fmt.GRAIN_SIZE * fmt.GRAIN_SIZE
        if at > (cuts[-1] if cuts else 0):
            cuts.append(at)
    bounds = [0, *cuts]
    return (*(Part(a, b - a) for a, b in itertools.pairwise(bounds)), Part(bounds[-1], None))
