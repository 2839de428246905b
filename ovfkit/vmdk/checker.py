"""A worker process of :mod:`ovfkit.vmdk.checkers`: it walks and inflates the grains of one
segment of a VMDK per task (:func:`ovfkit.vmdk.reader.check_segment`) and reports what it found.

Kept small on purpose: a worker imports this module, :mod:`ovfkit.vmdk.reader` and what that
needs (the pure format module, isal), nothing else. Messages (:mod:`._frames`): (job, task) in,
("ok", result) or ("fail", details) out. The worker ends when its task pipe ends.
"""

from __future__ import annotations

from ._frames import receive, send
from .reader import check_segment

TYPE_CHECKING = False  # not typing's: the worker need not import typing
if TYPE_CHECKING:
    from .checkers import Job, Task

__all__ = ["main"]


def main(task_fd: int, result_fd: int) -> None:
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
