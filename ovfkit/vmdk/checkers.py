"""Worker processes that walk and inflate a VMDK's grains for ``inspect_vmdk``, one segment of
the file per task, so that checking a disk uses every core (a thread per core would share one
GIL with the per-grain Python work of the walk, a quarter of its time). This is the parent's
side; the worker's is :mod:`ovfkit.vmdk.checker`.

Each worker is started with subprocess (fork + exec of ``sys.executable -I -S``), never as a
bare fork of the parent, which may be a threaded server holding locks. ``-I`` keeps the
environment and the user's site out, ``-S`` the site-packages: the worker's sys.path is the
directories of ovfkit and isal, and ovfkit's packages enter as bare stubs, so it loads only
:mod:`ovfkit.vmdk.checker`, :mod:`ovfkit.vmdk.reader` and the pure :mod:`ovfkit.vmdk.format`
(~0.1 s to start). It inherits the file's descriptor and reads it with pread (never a mapping:
a file truncated meanwhile gives a short read, not SIGBUS). Tasks and results are pickles on
two pipes between a parent and its own children. A worker ends when its task pipe closes; the
parent kills any still running when the check ends early (a fault that stops the walk,
cancellation, an error), so none outlives it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from ..errors import OperationFailedError
from ._boot import boot_code
from ._frames import receive, send

if TYPE_CHECKING:
    from ..progress import CancelToken

__all__ = ["Crew", "Job", "Result", "Task", "worker_count"]

Job = tuple[int, int, int, bytes, bool]
"""(file descriptor, VMDK offset in the file, VMDK size, header sector, has_eos)."""
Task = tuple[int, int, int, bytes, tuple[int, int]]
"""(first sector, stop sector, index of the first grain table entry, those entries as u32
bytes, LBA range [lo, hi) in sectors the segment's grains must fall in)."""
Result = tuple[int, int, list[tuple[str, str]], int, bool, bool]
"""(grains, grain table entries matched, faults as (name, details), end sector, a grain outside
the LBA range seen, the walk reached the end of the file)."""

_POLL = 0.25  # seconds between looks at the cancel token while waiting for a result


def _boot_code() -> str:
    return boot_code("checker:main(int(sys.argv[1]), int(sys.argv[2]))")


def worker_count(workers: int | None) -> int:
    """``workers``, or the cores this process may run on."""
    if workers is not None:
        return max(1, workers)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Worker:
    def __init__(self, fd: int) -> None:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _boot_code(), str(task_r), str(result_w)],
                pass_fds=(fd, task_r, result_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C goes to the parent alone
            )
        except BaseException:
            os.close(task_w)
            os.close(result_r)
            raise
        finally:
            os.close(task_r)
            os.close(result_w)
        self.tasks = task_w
        self.results = result_r

    def run(self, job: Job, task: Task) -> Result:
        try:
            send(self.tasks, (job, task))
            reply: tuple[str, Any] = receive(self.results)
        except (EOFError, OSError):
            code = self.proc.poll()
            raise OperationFailedError(
                "a VMDK grain checker process ended in the middle of a segment"
                + (f" (exit status {code})" if code is not None else "")
            ) from None
        kind, value = reply
        if kind != "ok":
            raise OperationFailedError(f"checking grains failed: {value}")
        result: Result = value
        return result

    def stop(self, kill: bool) -> None:
        if kill:
            with contextlib.suppress(OSError):
                self.proc.kill()
        os.close(self.tasks)  # a worker waiting for a task sees the end and exits
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.results)


class Crew:
    """Up to ``count`` workers; ``run`` gives each task's Result in task order, the tasks
    spread over the workers (one per pool thread, started on its first task). A context
    manager: leaving it ends every worker, killing those still busy."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._closed = False

    def __enter__(self) -> Crew:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(kill=exc[0] is not None)

    def _one(self, job: Job, task: Task) -> Result:
        worker: _Worker | None = getattr(self._local, "worker", None)
        if worker is None:
            with self._lock:
                if self._closed:
                    raise OperationFailedError("the grain checkers were stopped")
                worker = _Worker(job[0])
                self._workers.append(worker)
            self._local.worker = worker
        return worker.run(job, task)

    def run(
        self, job: Job, tasks: Sequence[Task], cancel: CancelToken | None = None
    ) -> Iterator[Result]:
        """Results in task order; stopping early (an error, cancellation, the caller closing
        the iterator) kills the workers still busy."""
        from ..progress import check_cancel

        with ThreadPoolExecutor(self._count, thread_name_prefix="ovfkit-check") as pool:
            futures: list[Future[Result]] = [pool.submit(self._one, job, t) for t in tasks]
            try:
                for future in futures:
                    while True:
                        check_cancel(cancel, "verify")
                        try:
                            result = future.result(timeout=_POLL)
                        except FutureTimeout:
                            continue
                        break
                    yield result
            finally:
                for future in futures:
                    future.cancel()
                if not all(f.done() for f in futures):
                    self.close(kill=True)  # unblocks the pool's threads before it is joined

    def close(self, kill: bool = False) -> None:
        with self._lock:
            workers, self._workers, self._closed = self._workers, [], True
        for worker in workers:
            worker.stop(kill)
