"""Run-time checks of the arguments of public functions.

The signatures are typed for mypy, but a caller without a type checker (or passing ``Any``)
would otherwise meet an AttributeError deep inside, e.g. ``options={"manifest": "sha1"}``. Each
entry point checks what it was given and raises InvalidArgumentError (SYS.1007) naming the
argument, the expected type and the type it got.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import InvalidArgumentError

__all__ = ["require", "require_hooks", "require_path"]


def _describe(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("None" if k is type(None) else k.__name__ for k in kinds)


def require(value: Any, kind: type | tuple[type, ...], name: str) -> None:
    """``value`` is an instance of ``kind``, else InvalidArgumentError."""
    if not isinstance(value, kind):
        raise InvalidArgumentError(
            f"{name} must be {_describe(kind)}, not {type(value).__name__}"
            + (" (build it with the dataclass, not a dict)" if isinstance(value, dict) else "")
        )


def require_path(value: Any, name: str) -> None:
    """``value`` is a str or os.PathLike (not bytes, not a number)."""
    if not isinstance(value, str | os.PathLike):
        raise InvalidArgumentError(f"{name} must be a path (str or os.PathLike), not "
                                   f"{type(value).__name__}")


def require_hooks(progress: Any, cancel: Any) -> None:
    """``progress`` is None or callable; ``cancel`` is None or has ``is_set()`` (a CancelToken,
    i.e. a threading.Event)."""
    if progress is not None and not callable(progress):
        raise InvalidArgumentError(
            f"progress must be a callable taking a Progress, not {type(progress).__name__}"
        )
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise InvalidArgumentError(
            f"cancel must be a threading.Event (CancelToken), not {type(cancel).__name__}"
        )
