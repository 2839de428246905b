"""The neutral VM as JSON: ovfkit's own input format, its JSON Schema, encoder and decoder (pure).

A document is one JSON object: ``"format": "ovfkit.vm/1"`` plus the fields of
:class:`ovfkit.model.VirtualMachine`, named exactly as in the dataclasses (snake_case), nested
objects for the nested dataclasses, arrays for tuples, enum values as strings, ``null``
for None. Only ``format`` and ``name`` are required; every other field has the model's default.
``ovfkit inventory --schema`` prints the JSON Schema (2020-12); ``ovfkit inventory INPUT``
prints the document of any input ``ovfkit export`` reads (a ZStack inventory, an .ovf).

Schema, encoder and decoder are all derived from the model's dataclasses and type hints, so a
field added to the model is in the format at once (and the round-trip test covers it).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin, get_type_hints

from .errors import InvalidArgumentError
from .model import VirtualMachine

__all__ = ["FORMAT", "encode_vm", "vm_from_json", "vm_json_schema", "vm_to_json"]

FORMAT = "ovfkit.vm/1"
_SCHEMA_ID = "https://ovfkit.invalid/schemas/vm-1.json"  # a name, not a download location


def _fields(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _optional(tp: Any) -> Any | None:
    """X for ``X | None``, else None."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0]
    return None


# Schema
# ---------------------------------------------------------------------------------------------


def _schema_of(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    inner = _optional(tp)
    if inner is not None:
        return {"anyOf": [_schema_of(inner, defs), {"type": "null"}]}
    if get_origin(tp) is tuple:
        item, _ = get_args(tp)
        return {"type": "array", "items": _schema_of(item, defs)}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is str:
        return {"type": "string"}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placeholder: a recursive model would stop here
            defs[name] = _object_schema(tp, defs)
        return {"$ref": f"#/$defs/{name}"}
    raise TypeError(f"no JSON Schema for {tp!r}")  # a model field of a new kind: extend this


def _object_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for f, tp in _fields(cls):
        prop = _schema_of(tp, defs)
        if f.default is not dataclasses.MISSING:
            prop = {**prop, "default": _encode(f.default)}
        elif f.default_factory is not dataclasses.MISSING:
            prop = {**prop, "default": _encode(f.default_factory())}
        properties[f.name] = prop
    required = [f.name for f, _ in _fields(cls) if not _has_default(f)]
    out: dict[str, Any] = {
        "type": "object",
        "description": (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "),
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        out["required"] = required
    return out


def vm_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a neutral VM document."""
    defs: dict[str, Any] = {}
    top = _object_schema(VirtualMachine, defs)
    top["properties"] = {"format": {"const": FORMAT}, **top["properties"]}
    top["required"] = ["format", *top.get("required", [])]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": _SCHEMA_ID,
        "title": "ovfkit virtual machine",
        **top,
        "$defs": defs,
    }


# Encoding
# ---------------------------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return value


def encode_vm(vm: VirtualMachine) -> dict[str, Any]:
    """The fields of ``vm`` as JSON values (every field written, defaults included): the
    neutral document without its ``format``, as ParseOvf's ``ovfInfo`` answers it too."""
    out: dict[str, Any] = _encode(vm)
    return out


def vm_to_json(vm: VirtualMachine) -> dict[str, Any]:
    """The neutral document of ``vm``."""
    return {"format": FORMAT, **encode_vm(vm)}


# Decoding
# ---------------------------------------------------------------------------------------------

_KINDS = {bool: "true or false", int: "an integer", str: "a string"}


def _decode(tp: Any, value: Any, where: str) -> Any:
    inner = _optional(tp)
    if inner is not None:
        return None if value is None else _decode(inner, value, where)
    if get_origin(tp) is tuple:
        if not isinstance(value, list):
            raise InvalidArgumentError(f"{where} must be an array")
        item, _ = get_args(tp)
        return tuple(_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in tp)
            raise InvalidArgumentError(f"{where} is {value!r}; use one of {allowed}") from None
    if tp in _KINDS:
        # JSON true/false are Python bools, and bool is an int: keep them apart.
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise InvalidArgumentError(f"{where} must be {_KINDS[tp]}, not {json.dumps(value)}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _decode_object(tp, value, where)
    raise TypeError(f"no JSON decoder for {tp!r}")


def _decode_object(cls: type, value: Any, where: str, skip: tuple[str, ...] = ()) -> Any:
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"{where} must be an object")
    fields = _fields(cls)
    known = {f.name for f, _ in fields}
    unknown = sorted(set(value) - known - set(skip))
    if unknown:
        raise InvalidArgumentError(
            f"{where} has no field {unknown[0]!r} (fields: {', '.join(sorted(known))})"
        )
    kwargs: dict[str, Any] = {}
    for f, tp in fields:
        key = f.name
        if key in value:
            kwargs[f.name] = _decode(tp, value[key], f"{where}.{key}")
        elif not _has_default(f):
            raise InvalidArgumentError(f"{where}.{key} is missing")
    return cls(**kwargs)


def vm_from_json(doc: Mapping[str, Any] | str | bytes) -> VirtualMachine:
    """The VirtualMachine of a neutral document (a parsed object or its JSON text).
    InvalidArgumentError names the first field that does not fit, e.g. ``vm.disks[0].capacity
    must be an integer, not "10G"``."""
    if isinstance(doc, str | bytes):
        try:
            doc = json.loads(doc)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"the VM document is not JSON: {exc}") from None
        except RecursionError:
            raise InvalidArgumentError("the VM document nests JSON too deeply") from None
    if not isinstance(doc, Mapping):
        raise InvalidArgumentError("the VM document must be a JSON object")
    if doc.get("format") != FORMAT:
        raise InvalidArgumentError(
            f"the VM document's format is {doc.get('format')!r}, not {FORMAT!r}"
        )
    vm: VirtualMachine = _decode_object(VirtualMachine, doc, "vm", skip=("format",))
    return vm

