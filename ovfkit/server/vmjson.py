"""The neutral VM model as JSON, for ParseOvf's ``ovfInfo`` (pure)."""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

from ..model import VirtualMachine

__all__ = ["vm_to_json"]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def vm_to_json(vm: VirtualMachine) -> dict[str, Any]:
    """Every field of the model, snake_case as in :mod:`ovfkit.model`; enums as their values."""
    out: dict[str, Any] = _plain(vm)
    return out
