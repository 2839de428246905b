"""XML plumbing shared by the writer and the reader: untrusted-input parsing, XML 1.0 text
checks, and RawXml fragments both ways (canonical on read, moved into the written namespace on
write)."""

from __future__ import annotations

import copy
import re
from typing import Any

from lxml import etree

from .. import limits
from ..errors import InvalidArgumentError, InvalidOvfError, OvfParseError
from ..model import RawXml
from . import _ns as ns
from ._ns import q

__all__ = [
    "INVALID_XML_CHARS",
    "MAX_DESCRIPTOR_ELEMENTS",
    "MAX_DESCRIPTOR_SIZE",
    "check_text",
    "element_from_raw",
    "instance_id",
    "raw_from_element",
    "safe_fromstring",
]

INVALID_XML_CHARS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def check_text(where: str, value: str) -> str:
    bad = INVALID_XML_CHARS.search(value)
    if bad:
        raise InvalidArgumentError(
            f"{where} contains {bad.group()!r}, which XML 1.0 cannot carry: {value!r}"
        )
    return value


#: Real descriptors are a few hundred KiB at most (a VM with 60 disks is ~100 KiB); the cap is
#: VMware Cloud Director's default (see ovfkit.limits).
MAX_DESCRIPTOR_SIZE = limits.MAX_DESCRIPTOR_SIZE

#: Elements in one descriptor: one with vSphere's most devices (636 storage devices, 64 NICs,
#: ~15 elements each) and hundreds of vApp properties stays far below.
MAX_DESCRIPTOR_ELEMENTS = 100_000
_FEED = 64 << 10  # the cap is checked after each slice: ~16,000 elements at most past it

_DTD_MARKERS = tuple(
    marker.encode(enc)
    for marker in ("<!DOCTYPE", "<!ENTITY")
    for enc in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
)


def safe_fromstring(data: bytes) -> etree._Element:
    """Parse untrusted XML: size cap, DTDs and entities refused (OVF.1002), malformed XML
    (OVF.1001). The parser never loads a DTD, resolves an entity or touches the network."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidOvfError(f"descriptor must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_DESCRIPTOR_SIZE:
        raise InvalidOvfError(
            f"descriptor is {len(data)} bytes, more than the {MAX_DESCRIPTOR_SIZE}-byte limit"
        )
    if any(m in data for m in _DTD_MARKERS):
        raise InvalidOvfError(
            "descriptor contains a DTD or entity declaration (<!DOCTYPE/<!ENTITY); OVF needs "
            "neither and they are refused (entity expansion, external entities)"
        )
    # A pull parser fed in slices, counting elements: a tree costs ~400 bytes an element, so
    # 12 MiB of "<a/>" would take over 1 GB; stopping at the cap bounds what parsing costs.
    parser = etree.XMLPullParser(
        events=("start",),
        resolve_entities=False,
        no_network=True,
        huge_tree=False,
        load_dtd=False,
    )
    elements = 0
    try:
        for at in range(0, len(data), _FEED):
            parser.feed(data[at : at + _FEED])
            elements += sum(1 for _ in parser.read_events())
            if elements > MAX_DESCRIPTOR_ELEMENTS:
                raise InvalidOvfError(
                    f"descriptor has more than {MAX_DESCRIPTOR_ELEMENTS} XML elements; a real"
                    " one has a few thousand at most"
                )
        root = parser.close()
    except etree.XMLSyntaxError as exc:
        raise OvfParseError(f"descriptor is not well-formed XML: {exc}") from None
    if root is None:
        raise OvfParseError("descriptor is empty")
    docinfo: Any = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:  # second line of defence
        raise InvalidOvfError("descriptor has a DTD; refused")
    for node in root.iter(etree.Entity):
        raise InvalidOvfError(f"descriptor uses entity {node.text!r}; refused")
    return root


def _strip_blank(el: etree._Element) -> etree._Element:
    """Drop layout-only whitespace so that a kept fragment is the same string however the
    surrounding document was indented (the writer re-indents)."""
    for e in el.iter():
        if len(e) and e.text is not None and not e.text.strip():
            e.text = None
        if e is not el and e.tail is not None and not e.tail.strip():
            e.tail = None
    el.tail = None
    return el


_PREFIXES = {
    ns.OVF1: "ovf",
    ns.OVF2: "ovf",
    ns.OVF09: "ovf",
    ns.RASD: "rasd",
    ns.VSSD: "vssd",
    ns.EPASD: "epasd",
    ns.SASD: "sasd",
    ns.BOOTC: "bootc",
    ns.BOOTS: "boots",
    ns.CIM: "cim",
    ns.VMW: "vmw",
    ns.VBOX: "vbox",
    ns.XSI: "xsi",
}


def _canonical(el: etree._Element, ovf: str) -> etree._Element:
    """A copy of ``el`` with fixed prefixes (ovf, rasd, vmw, ...; others ``ns<n>``), all declared
    on the fragment's root, so the kept text does not depend on how the source document, or
    ovfkit's own writer, spelled its namespaces. ``ovf`` and ``xsi`` are always declared: QName
    values such as ``xsi:type="ovf:DiskSection_Type"`` use them."""
    used = {ovf, ns.XSI}
    for e in el.iter():
        if isinstance(e.tag, str):
            used.add(etree.QName(e).namespace or "")
            used.update(etree.QName(a).namespace or "" for a in e.attrib)
    used.discard("")
    nsmap: dict[str, str] = {}
    for i, uri in enumerate(sorted(used)):
        prefix = _PREFIXES.get(uri, f"ns{i}")
        if prefix in nsmap:
            prefix = f"ns{i}"
        nsmap[prefix] = uri

    def clone(src: etree._Element, parent: etree._Element | None) -> etree._Element:
        if parent is None:
            dst = etree.Element(src.tag, nsmap=nsmap)
        else:
            dst = etree.SubElement(parent, src.tag)
        for k, v in src.attrib.items():
            dst.set(k, v)
        dst.text = src.text
        for c in src:
            if isinstance(c.tag, str):
                clone(c, dst).tail = c.tail
            else:  # comments and processing instructions
                dst.append(copy.copy(c))
        return dst

    return clone(el, None)


def raw_from_element(el: etree._Element, where: str, ovf: str) -> RawXml:
    frag = _strip_blank(_canonical(el, ovf))
    return RawXml(where, etree.tostring(frag, encoding="unicode", with_tail=False))


def instance_id(el: etree._Element) -> str | None:
    for child in el:
        if not isinstance(child.tag, str):
            continue
        if etree.QName(child).localname in ("InstanceID", "InstanceId"):
            return (child.text or "").strip()
    return None


_RAW_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, huge_tree=False, remove_blank_text=True
)


def element_from_raw(xml: str, where: str, ovf: str) -> etree._Element:
    """A kept fragment, moved into the OVF namespace being written (a section read from an
    envelope/1 descriptor goes into envelope/2 as the same section)."""
    try:
        el = etree.fromstring(xml.encode("utf-8"), _RAW_PARSER)
    except etree.XMLSyntaxError as exc:
        raise InvalidArgumentError(f"{where}: RawXml is not well-formed XML: {exc}") from None
    others = set(ns.OVF_NAMESPACES) - {ovf}
    for e in el.iter():
        if not isinstance(e.tag, str):
            continue
        qn = etree.QName(e)
        if qn.namespace in others:
            e.tag = q(ovf, qn.localname)
        for name in list(e.attrib):
            aq = etree.QName(name)
            if aq.namespace in others:
                e.set(q(ovf, aq.localname), e.attrib.pop(name))
    etree.cleanup_namespaces(el, top_nsmap={"ovf": ovf}, keep_ns_prefixes=["xsi"])
    return el
