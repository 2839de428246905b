"""Judging descriptors with readers nobody here wrote: the DMTF XSDs through libxml2 (lxml) and
through the spec-strict ``xmlschema`` package, loaded straight from ``../shared/schemas`` when it
is there (else from the copy bundled in the package), independently of ovfkit.ovf.validate.

    from ovf_helpers import assert_rasd_order, assert_schema_valid  # tests/ is on sys.path
    assert_schema_valid(descriptor_bytes)      # both validators, envelope/1 or /2 by namespace
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import xmlschema
from lxml import etree

REPO = Path(__file__).resolve().parent.parent
SHARED_SCHEMAS = REPO.parent / "shared" / "schemas"
BUNDLED_SCHEMAS = REPO / "ovfkit" / "ovf" / "schemas"
SCHEMAS = SHARED_SCHEMAS if SHARED_SCHEMAS.is_dir() else BUNDLED_SCHEMAS
SAMPLES = REPO / "fixtures" / "ovf" / "samples"  # copied from ../shared/schemas/samples

_ENTRY = {
    "http://schemas.dmtf.org/ovf/envelope/1": "ovf-1.1/dsp8023_1.1.1.xsd",
    "http://schemas.dmtf.org/ovf/envelope/2": "ovf-2.0/dsp8023_2.0.1.xsd",
    "http://schemas.dmtf.org/ovf/environment/1": "ovf-env/dsp8027_1.0.0.xsd",
}
_CIM_ITEM_NS = {
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData",
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData",
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
}
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


@cache
def _lxml_schema(ns: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMAS / _ENTRY[ns]), _PARSER))


@cache
def _strict_schema(ns: str) -> Any:
    return xmlschema.XMLSchema(str(SCHEMAS / _ENTRY[ns]))


def schema_errors(data: bytes) -> list[str]:
    """Schema errors of a descriptor or ovf-env.xml from libxml2 and xmlschema (empty: valid)."""
    root = etree.fromstring(data, _PARSER)
    ns = etree.QName(root).namespace or ""
    if ns not in _ENTRY:
        return [f"root namespace {ns!r} is no OVF namespace"]
    errors: list[str] = []
    schema = _lxml_schema(ns)
    if not schema.validate(root):
        log: Any = schema.error_log
        errors += [f"lxml line {e.line}: {e.message}" for e in log]
    errors += [f"xmlschema {e.path}: {e.reason}" for e in _strict_schema(ns).iter_errors(root)]
    return errors


def assert_schema_valid(data: bytes) -> None:
    errors = schema_errors(data)
    assert not errors, "descriptor does not validate:\n" + "\n".join(errors[:20])


def assert_rasd_order(data: bytes) -> None:
    """Every CIM child list (System, Item, EthernetPortItem, StorageItem) is in code-point order
    and every vendor child comes after the CIM ones (the CIM xs:sequence, then ##other)."""
    root = etree.fromstring(data, _PARSER)
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        if etree.QName(el).localname not in ("System", "Item", "EthernetPortItem", "StorageItem"):
            continue
        kids = [etree.QName(c) for c in el if isinstance(c.tag, str)]
        cim = [k.localname for k in kids if k.namespace in _CIM_ITEM_NS]
        assert cim == sorted(cim), f"CIM children out of order: {cim}"
        first_vendor = next(
            (i for i, k in enumerate(kids) if k.namespace not in _CIM_ITEM_NS), len(kids)
        )
        assert all(k.namespace not in _CIM_ITEM_NS for k in kids[first_vendor:]), kids
