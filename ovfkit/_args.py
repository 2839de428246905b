"""Run-time checks of the arguments of public functions.

The signatures are typed for mypy, but a caller without a type checker (or passing ``Any``)
would otherwise meet an AttributeError deep inside, e.g. ``options={"manifest": "sha1"}``. Each
entry point checks what it was given and raises InvalidArgumentError (SYS.1007) naming the
argument, the expected type and the type it got.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import sys
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .errors import InvalidArgumentError

__all__ = ["field_types", "optional_of", "require", "require_fields", "require_hooks",
           "require_path"]


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
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        require_fields(value, name)


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


def optional_of(tp: Any) -> Any | None:
    """X for an annotation ``X | None``, else None."""
    if get_origin(tp) in (Union, types.UnionType):
        args = get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return rest[0]
    return None


@functools.cache
def field_types(cls: type) -> tuple[tuple[dataclasses.Field[Any], Any], ...]:
    """The fields of dataclass ``cls`` with their resolved annotations; a field whose annotation
    only a type checker resolves (a name imported under TYPE_CHECKING) is left out."""
    try:
        hints = get_type_hints(cls)
    except (NameError, TypeError):
        hints = {}
        namespace = vars(sys.modules[cls.__module__])
        for f in dataclasses.fields(cls):
            try:
                hints[f.name] = (eval(f.type, namespace) if isinstance(f.type, str)
                                 else f.type)
            except (NameError, TypeError, AttributeError):
                continue
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls) if f.name in hints)


def _check(tp: Any, value: Any, where: str) -> None:
    inner = optional_of(tp)
    if inner is not None:
        if value is not None:
            _check(inner, value, where)
        return
    if get_origin(tp) is tuple:
        if not isinstance(value, tuple):
            raise InvalidArgumentError(f"{where} must be a tuple, not {type(value).__name__}")
        item = get_args(tp)[0]
        for n, v in enumerate(value):
            _check(item, v, f"{where}[{n}]")
        return
    if get_origin(tp) is Literal:
        if value not in get_args(tp):
            allowed = ", ".join(repr(a) for a in get_args(tp))
            raise InvalidArgumentError(f"{where} must be one of {allowed}, not {value!r}")
        return
    if not isinstance(tp, type) or getattr(tp, "_is_protocol", False):
        return  # Mapping[...], a Protocol, ...: left to the code that uses it
    wrong = not (isinstance(value, tp) or (tp is float and type(value) is int)) or (
        tp is int and isinstance(value, bool))
    if issubclass(tp, enum.Enum) and isinstance(value, str) and not isinstance(value, tp):
        try:
            tp(value)
            wrong = True  # the value of a member, not the member: say which member
        except ValueError:
            pass
    if wrong:
        raise InvalidArgumentError(f"{where} must be {tp.__name__}, not {type(value).__name__}")
    if dataclasses.is_dataclass(tp):
        require_fields(value, where)


def require_fields(value: Any, name: str) -> None:
    """Each field of the dataclass ``value``, nested dataclasses and tuples included, holds what
    its annotation says: ``vm.disks[0].capacity must be int, not str``."""
    cls: Any = type(value)
    for f, tp in field_types(cls):
        _check(tp, getattr(value, f.name), f"{name}.{f.name}")
