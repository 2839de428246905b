"""Progress reporting and cancellation, shared by every long-running operation.

A caller passes ``progress`` (called with a :class:`Progress` now and then, from the thread doing
the work) and/or ``cancel`` (a :class:`threading.Event`; once set, the operation stops at the next
check, removes what it wrote and raises :class:`ovfkit.errors.OperationCancelledError`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from .errors import OperationCancelledError

__all__ = ["CancelToken", "Progress", "ProgressCallback", "check_cancel"]


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` bytes of ``stage`` (e.g. ``disk vm-disk1.vmdk``); total 0 = unknown."""

    stage: str
    done: int
    total: int


ProgressCallback = Callable[[Progress], None]
CancelToken = threading.Event


def check_cancel(cancel: CancelToken | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise OperationCancelledError(f"{what} was cancelled")
