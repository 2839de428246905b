"""ISO media of a package: the OVF environment ISO (DSP0243 §11, DSP8027) and CD-ROM images.

The environment document ``ovf-env.xml`` sits at the root of a small ISO 9660 image (pycdlib),
with Joliet and Rock Ridge names so every reader sees ``ovf-env.xml`` (cloud-init's OVF datasource
looks for ``ovf-env.xml``, VMware names the volume ``OVF ENV``). ``ovfenv:id`` is the
VirtualSystem's ``ovf:id``; properties carry their fully qualified keys
(``[class.]key[.instance]``, DSP0243 §9.5) with the values the deployer chose, or the defaults from
the descriptor's ProductSections.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Mapping

import pycdlib
from lxml import etree

from ..errors import InvalidArgumentError, NotFoundError, OvfkitIOError
from ..model import VirtualMachine

__all__ = [
    "ENV_NS",
    "build_ovf_env",
    "check_iso_image",
    "environment_properties",
    "make_env_iso",
    "read_env_iso",
]

ENV_NS = "http://schemas.dmtf.org/ovf/environment/1"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_ISO_MAGIC_OFFSET = 16 * 2048 + 1  # ECMA-119 §8.1: volume descriptors from sector 16, "CD001"


def _qualified_key(class_: str, key: str, instance: str) -> str:
    return ".".join(p for p in (class_, key, instance) if p)


def environment_properties(
    vm: VirtualMachine, values: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment's properties: every ProductSection property of ``vm`` under its fully
    qualified key, with the value from ``values`` or else its default (DSP0243 §9.5.1: the
    environment holds every property). A key in ``values`` the VM does not declare is an
    InvalidArgumentError, as a deployment platform would refuse it."""
    values = dict(values or {})
    out: dict[str, str] = {}
    for product in vm.products:
        for prop in product.properties:
            key = _qualified_key(product.class_, prop.key, product.instance)
            value = values.pop(key, prop.value)
            out[key] = "" if value is None else str(value)
    if values:
        declared = ", ".join(sorted(out)) or "none"
        raise InvalidArgumentError(
            f"OVF environment properties {', '.join(sorted(values))} are not declared by the VM's"
            f" ProductSections (declared: {declared})"
        )
    return out


def build_ovf_env(
    system_id: str, properties: Mapping[str, str], *, platform: str = "ovfkit"
) -> bytes:
    """``ovf-env.xml`` (DSP8027): Environment with ``ovfenv:id``, a PlatformSection and a
    PropertySection of ``key``/``value`` pairs. Pure."""
    q = f"{{{ENV_NS}}}"
    root = etree.Element(q + "Environment", nsmap={"oe": ENV_NS, "xsi": _XSI})
    root.set(q + "id", system_id)
    platform_section = etree.SubElement(root, q + "PlatformSection")
    etree.SubElement(platform_section, q + "Kind").text = platform
    section = etree.SubElement(root, q + "PropertySection")
    for key, value in properties.items():
        if not key:
            raise InvalidArgumentError("OVF environment property with an empty key")
        prop = etree.SubElement(section, q + "Property")
        prop.set(q + "key", key)
        prop.set(q + "value", value)
    return bytes(
        etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    )


def make_env_iso(ovf_env_xml: bytes) -> bytes:
    """A small ISO 9660 image (Joliet + Rock Ridge) holding ``ovf-env.xml`` at its root."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="OVF ENV", joliet=3, rock_ridge="1.09")
    iso.add_fp(
        io.BytesIO(ovf_env_xml),
        len(ovf_env_xml),
        iso_path="/OVF_ENV.XML;1",
        rr_name="ovf-env.xml",
        joliet_path="/ovf-env.xml",
        file_mode=0o100444,
    )
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def read_env_iso(image: bytes) -> bytes:
    """``ovf-env.xml`` read back from an environment ISO (for verification and tests)."""
    iso = pycdlib.PyCdlib()
    try:
        iso.open_fp(io.BytesIO(image))
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path="/ovf-env.xml")
        iso.close()
    except pycdlib.pycdlibexception.PyCdlibException as exc:
        raise InvalidArgumentError(f"not an OVF environment ISO: {exc}") from None
    return out.getvalue()


def check_iso_image(path: str) -> int:
    """Size of the ISO 9660 image at ``path``, after checking its "CD001" volume descriptor
    (ECMA-119 §8.1), so a CD drive's stray file is not packed as an ISO by mistake."""
    try:
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            # open() of a FIFO blocks until a writer comes: the export would hang for ever.
            raise InvalidArgumentError(
                f"ISO image {path!r} is not a regular file or a block device"
            )
        with open(path, "rb") as f:
            f.seek(_ISO_MAGIC_OFFSET)
            magic = f.read(5)
            size = f.seek(0, io.SEEK_END)
    except FileNotFoundError:
        raise NotFoundError(f"ISO image {path!r} not found") from None
    except OSError as exc:
        raise OvfkitIOError(f"cannot read ISO image {path!r}: {exc.strerror}") from None
    if magic != b"CD001":
        raise InvalidArgumentError(f"{path!r} is not an ISO 9660 image (no CD001 descriptor)")
    return size
