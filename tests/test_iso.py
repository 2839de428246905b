"""OVF environment ISO: schema-valid ovf-env.xml, readable by bsdtar (libarchive) and pycdlib."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import xmlschema
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from ovfkit.errors import InvalidArgumentError
from ovfkit.model import Product, Property, VirtualMachine
from ovfkit.ova.iso import (
    ENV_NS,
    build_ovf_env,
    check_iso_image,
    environment_properties,
    make_env_iso,
    read_env_iso,
)

SCHEMA = Path(__file__).parents[1] / "ovfkit/ovf/schemas/ovf-env/dsp8027_1.0.0.xsd"


@pytest.fixture(scope="module")
def env_schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(SCHEMA))


VM = VirtualMachine(
    name="web-01",
    products=(
        Product(product="web", properties=(Property("hostname", value="web"),
                                           Property("port", type="uint16", value="80"))),
        Product(class_="com.example", instance="1",
                properties=(Property("token", password=True),)),
    ),
)


def test_properties_defaults_and_overrides() -> None:
    assert environment_properties(VM) == {"hostname": "web", "port": "80",
                                          "com.example.token.1": ""}
    got = environment_properties(VM, {"com.example.token.1": "s3cret", "port": "8080"})
    assert got["com.example.token.1"] == "s3cret" and got["port"] == "8080"
    with pytest.raises(InvalidArgumentError, match="not declared"):
        environment_properties(VM, {"nope": "1"})


XML_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)


@settings(max_examples=40, deadline=None)
@given(system_id=XML_TEXT, props=st.dictionaries(XML_TEXT.filter(bool), XML_TEXT, max_size=5))
def test_env_document_is_schema_valid(
    env_schema: xmlschema.XMLSchema, system_id: str, props: dict[str, str]
) -> None:
    xml = build_ovf_env(system_id, props)
    env_schema.validate(xml.decode())
    root = etree.fromstring(xml)
    q = f"{{{ENV_NS}}}"
    assert root.tag == q + "Environment" and root.get(q + "id") == system_id
    got = {p.get(q + "key"): p.get(q + "value") for p in root.iter(q + "Property")}
    assert got == props


def test_iso_round_trip_and_independent_reader(tmp_path: Path) -> None:
    xml = build_ovf_env("web-01", environment_properties(VM))
    image = make_env_iso(xml)
    assert read_env_iso(image) == xml
    path = tmp_path / "env.iso"
    path.write_bytes(image)
    assert check_iso_image(str(path)) == len(image)
    if shutil.which("bsdtar") is None:
        pytest.skip("bsdtar (libarchive-tools) not installed")
    listing = subprocess.run(["bsdtar", "tf", str(path)], check=True, capture_output=True,
                             text=True).stdout.split()
    assert "ovf-env.xml" in listing
    content = subprocess.run(["bsdtar", "xOf", str(path), "ovf-env.xml"], check=True,
                             capture_output=True).stdout
    assert content == xml


def test_check_iso_image_refuses_non_iso(tmp_path: Path) -> None:
    bogus = tmp_path / "x.iso"
    bogus.write_bytes(bytes(40000))
    with pytest.raises(InvalidArgumentError, match="ISO 9660"):
        check_iso_image(str(bogus))
    with pytest.raises(Exception, match="not found"):
        check_iso_image(str(tmp_path / "missing.iso"))


def make_cd_iso(path: Path, text: bytes = b"hello from a CD\n") -> Path:
    """A small ISO 9660 CD image holding README.TXT (a stand-in for an installer ISO)."""
    import io

    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="CD")
    iso.add_fp(io.BytesIO(text), len(text), iso_path="/README.TXT;1")
    iso.write(str(path))
    iso.close()
    return path


def test_iso_that_is_a_fifo_or_directory_is_refused(tmp_path: Path) -> None:
    # open() of a FIFO waits for a writer: --include-iso hung for ever.
    fifo = tmp_path / "cd.iso"
    os.mkfifo(fifo)
    for path in (tmp_path, fifo):
        with pytest.raises(InvalidArgumentError, match="not a regular file"):
            check_iso_image(str(path))
