"""Schema validation of OVF descriptors and OVF environments against the bundled DMTF XSDs.

The XSDs live in ``schemas/`` (package data, see ``schemas/README.txt`` for their sources) and are
read with :mod:`importlib.resources`; every ``xs:import`` names a sibling file, so nothing is
fetched from the network. The schema is picked by the root element's namespace: envelope/1 ->
DSP8023 1.1.1 (OVF 1.0 and 1.1), envelope/2 -> DSP8023 2.0.1, environment/1 -> DSP8027 1.0.0.

libxml2 (lxml) accepts vendor elements interleaved with Items although the schema's
``Item*, ##other*`` sequence forbids it (schemas/README.txt); ``strict=True`` adds the
spec-strict pure-Python ``xmlschema`` package (a test dependency, imported only then).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from lxml import etree

from ..errors import InvalidOvfError
from . import _ns as ns
from ._xml import safe_fromstring

__all__ = ["validate_descriptor", "validate_environment"]

_ENTRY = {
    ns.OVF1: ("ovf-1.1", "dsp8023_1.1.1.xsd"),
    ns.OVF2: ("ovf-2.0", "dsp8023_2.0.1.xsd"),
    ns.OVFENV: ("ovf-env", "dsp8027_1.0.0.xsd"),
}
_MAX_ERRORS = 20
_lock = threading.Lock()


@contextlib.contextmanager
def _schema_path(folder: str, entry: str) -> Iterator[Path]:
    ref = resources.files("ovfkit.ovf").joinpath("schemas", folder, entry)
    with resources.as_file(ref) as path:
        yield path


def _safe_parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


@cache
def _lxml_schema(namespace: str) -> etree.XMLSchema:
    folder, entry = _ENTRY[namespace]
    with _lock, _schema_path(folder, entry) as path:
        # The path must be a real file so that relative xs:import schemaLocations resolve.
        return etree.XMLSchema(etree.parse(str(path), _safe_parser()))


@cache
def _strict_schema(namespace: str) -> Any:
    import xmlschema  # test dependency; imported only for strict validation

    folder, entry = _ENTRY[namespace]
    with _lock, _schema_path(folder, entry) as path:
        return xmlschema.XMLSchema(str(path))


def _parse(data: bytes) -> etree._Element:
    # Same hardening as the reader: no entities, no network, no DTD.
    return safe_fromstring(data)


def _errors(schema: etree.XMLSchema) -> list[Any]:
    log: Any = schema.error_log  # lxml-stubs do not declare _ErrorLog iterable
    return list(log)


def _validate(data: bytes, allowed: tuple[str, ...], what: str, strict: bool) -> None:
    root = _parse(data)
    namespace = etree.QName(root).namespace or ""
    if namespace not in allowed:
        raise InvalidOvfError(
            f"{what}: root element {etree.QName(root).localname!r} is in namespace "
            f"{namespace!r}; expected one of {list(allowed)}"
        )
    schema = _lxml_schema(namespace)
    if not schema.validate(root):
        errors = [f"line {e.line}: {e.message}" for e in _errors(schema)[:_MAX_ERRORS]]
        raise InvalidOvfError(
            f"{what} does not validate against the DMTF schema: " + "; ".join(errors)
        )
    if strict:
        strict_schema = _strict_schema(namespace)
        errs = []
        for e in strict_schema.iter_errors(root):
            errs.append(f"{e.path}: {e.reason}")
            if len(errs) >= _MAX_ERRORS:
                break
        if errs:
            raise InvalidOvfError(
                f"{what} does not validate against the DMTF schema (strict): " + "; ".join(errs)
            )


def validate_descriptor(data: bytes, *, strict: bool = False) -> None:
    """Validate an OVF descriptor (envelope/1 or envelope/2) against DSP8023.

    Raises OvfParseError (OVF.1001) for malformed XML and InvalidOvfError (OVF.1002) with the
    schema messages when it does not validate, or when DTDs/entities are present.
    """
    _validate(data, (ns.OVF1, ns.OVF2), "OVF descriptor", strict)


def validate_environment(data: bytes, *, strict: bool = False) -> None:
    """Validate an ``ovf-env.xml`` (DSP8027 1.0.0, environment/1 namespace)."""
    _validate(data, (ns.OVFENV,), "OVF environment", strict)
