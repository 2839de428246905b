"""PEP 562 lazy exports: a package names its public API without importing the modules behind it,
so ``import ovfkit`` (or a subpackage) costs nothing until a name is used. The export path of the
CLI, for one, never needs the verifier, signing or ISO code and their imports (~0.2 s)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose names map to the modules defining
    them (absolute, or relative to ``package`` when starting with a dot)."""
    names = sorted(exports)

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*names, *namespace.get("__all__", ())})

    return __getattr__, __dir__
