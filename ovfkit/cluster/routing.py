"""Which worker queue a job goes to (pure: no I/O, no clock).

A worker declares its :class:`Reach`: the storage roots it can read (its data folder's
``storageRoots``) and the backup storages it can write. Workers that declare the same reach
form a group and consume one queue, named from that reach, so Celery spreads the group's jobs
over its members and a job whose worker dies is taken by a sibling. A job needs every volume
path under a root of the worker and its backup storage among the worker's; it goes to the
least loaded group that can take it, or to none (the API answers SYS.1006 at once).

Paths are compared lexically here (the API node cannot resolve symlinks of another host); the
worker checks them again with realpath before it reads anything (``confine_paths``).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["QUEUE_PREFIX", "Reach", "WorkerInfo", "choose_queue", "needs_of", "unroutable"]

QUEUE_PREFIX = "ovfkit.export."


@dataclass(frozen=True)
class Reach:
    roots: tuple[str, ...]
    backup_storages: tuple[str, ...]

    @classmethod
    def of(cls, roots: Iterable[str], backup_storages: Iterable[str]) -> Reach:
        norm = sorted({posixpath.normpath(r) for r in roots})
        return cls(tuple(norm), tuple(sorted(set(backup_storages))))

    @property
    def queue(self) -> str:
        """The queue of every worker with this reach."""
        doc = json.dumps([self.roots, self.backup_storages], separators=(",", ":"))
        return QUEUE_PREFIX + hashlib.sha256(doc.encode()).hexdigest()[:16]

    def reads(self, path: str) -> bool:
        p = posixpath.normpath(path)
        return posixpath.isabs(p) and any(
            p == r or p.startswith(r.rstrip("/") + "/") for r in self.roots
        )

    def can_take(self, paths: Sequence[str], backup_storage: str) -> bool:
        return backup_storage in self.backup_storages and all(self.reads(p) for p in paths)


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as it declared itself; ``lease_ms``: its own lease (it beats every third of
    it), by which every node judges it live, whatever that node's own ``--lease``."""

    uuid: str
    name: str
    reach: Reach
    concurrency: int
    lease_ms: int | None = None


def needs_of(vm: Mapping[str, object]) -> list[str]:
    """The files a VmInstanceInventory's export reads: every volume's installPath (ISOs are
    not packaged by the API's export)."""
    volumes = vm.get("allVolumes")
    paths: list[str] = []
    if isinstance(volumes, list):
        for vol in volumes:
            if isinstance(vol, Mapping) and isinstance(vol.get("installPath"), str):
                paths.append(str(vol["installPath"]))
    return paths


def choose_queue(
    workers: Sequence[WorkerInfo],
    paths: Sequence[str],
    backup_storage: str,
    load: Mapping[str, int],
) -> str | None:
    """The queue of the least loaded group (jobs queued or running per worker thread) whose
    reach covers the job; ties go to the queue name, so the choice is reproducible."""
    capacity: dict[str, int] = {}
    for w in workers:
        if w.reach.can_take(paths, backup_storage):
            capacity[w.reach.queue] = capacity.get(w.reach.queue, 0) + max(1, w.concurrency)
    if not capacity:
        return None
    return min(capacity, key=lambda q: (load.get(q, 0) / capacity[q], q))


def unroutable(workers: Sequence[WorkerInfo], paths: Sequence[str], backup_storage: str) -> str:
    """Why no worker can take a job: the details of its SYS.1006."""
    if not workers:
        return "no ovfkit worker is running (start one with 'ovfkit worker')"
    parts = []
    for w in workers:
        missing = [p for p in paths if not w.reach.reads(p)]
        why = []
        if backup_storage not in w.reach.backup_storages:
            why.append(f"cannot write backup storage {backup_storage}")
        if missing:
            why.append(f"cannot read {', '.join(missing)}")
        parts.append(f"{w.name}: {'; '.join(why)}")
    return (
        f"no live worker can read every volume and write backup storage[uuid: {backup_storage}] "
        f"({' | '.join(parts)})"
    )
