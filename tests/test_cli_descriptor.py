"""`ovfkit descriptor` end to end, through a real subprocess: output, atomic -o, and one-line
errors with ZStack codes for every kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovfkit.ovf import parse_descriptor, validate_descriptor

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "fixtures" / "zstack" / "vm-inventory-example.json"


def ovfkit(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "ovfkit", "descriptor", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def assert_error(result: subprocess.CompletedProcess[bytes], code: str, text: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"ERROR {code}: "), lines[0]
    assert text in lines[0], lines[0]


def test_prints_a_schema_valid_descriptor() -> None:
    result = ovfkit(str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    xml = result.stdout
    assert b'xmlns="http://schemas.dmtf.org/ovf/envelope/1"' in xml
    validate_descriptor(xml, strict=True)
    vm = parse_descriptor(xml)
    assert vm.name == "web-01"
    assert len(vm.disks) == 2 and len(vm.nics) == 2 and len(vm.cd_drives) == 1
    assert vm.guest_os.vmware_id == "centos7_64Guest"


def test_output_file_is_written_atomically(tmp_path: Path) -> None:
    out = tmp_path / "web-01.ovf"
    out.write_bytes(b"old")
    result = ovfkit(str(EXAMPLE), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert out.read_bytes() == ovfkit(str(EXAMPLE)).stdout
    assert os.listdir(tmp_path) == ["web-01.ovf"]  # no temporary file left
    assert out.stat().st_mode & 0o777 == 0o644


def test_ovf_2_and_stdin_and_system_tags(tmp_path: Path) -> None:
    result = ovfkit(
        "-", "--ovf-version", "2.0", "--system-tag", "bootMode::UEFI", stdin=EXAMPLE.read_bytes()
    )
    assert result.returncode == 0, result.stderr
    assert b'xmlns="http://schemas.dmtf.org/ovf/envelope/2"' in result.stdout
    assert b'vmw:value="efi"' in result.stdout
    validate_descriptor(result.stdout, strict=True)


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    assert_error(ovfkit(str(tmp_path / "nope.json")), "SYS.1003", "nope.json' not found")


def test_directory_as_input(tmp_path: Path) -> None:
    assert_error(ovfkit(str(tmp_path)), "SYS.1007", "is a directory")


def test_unreadable_file_is_an_io_error() -> None:
    # /proc/self/mem opens but reading offset 0 fails with EIO: a real unreadable file,
    # which chmod cannot give when the tests run as root.
    if not Path("/proc/self/mem").exists():
        pytest.skip("no /proc")
    assert_error(ovfkit("/proc/self/mem"), "SYS.1016", "cannot read input")


def test_oversized_input_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(65 << 20)  # sparse: costs no disk
    assert_error(ovfkit(str(big)), "SYS.1007", "larger than")


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"[]", "inventory must be a JSON object"),
        (b'{"inventories": []}', "inventories must hold exactly one VM"),
    ],
)
def test_bad_json(tmp_path: Path, content: bytes, text: str) -> None:
    path = tmp_path / "inv.json"
    path.write_bytes(content)
    assert_error(ovfkit(str(path)), "SYS.1007", text)


def test_bad_field_is_named_and_existing_output_kept(tmp_path: Path) -> None:
    doc = json.loads(EXAMPLE.read_text())
    doc["inventories"][0]["allVolumes"][1]["size"] = -5
    path = tmp_path / "inv.json"
    path.write_text(json.dumps(doc))
    out = tmp_path / "out.ovf"
    out.write_bytes(b"previous")
    assert_error(ovfkit(str(path), "-o", str(out)), "SYS.1007", "allVolumes[1].size")
    assert out.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["inv.json", "out.ovf"]


def test_any_zstack_vm_name_is_kept(tmp_path: Path) -> None:
    """A name ZStack accepts ('/', '..', markup characters) goes into the descriptor as is."""
    doc = json.loads(EXAMPLE.read_text())
    doc["inventories"][0]["name"] = "../../etc/passwd <&\"'>"
    path = tmp_path / "inv.json"
    path.write_text(json.dumps(doc))
    result = ovfkit(str(path))
    assert result.returncode == 0, result.stderr
    assert parse_descriptor(result.stdout).name == "../../etc/passwd <&\"'>"
    validate_descriptor(result.stdout)


def test_vm_name_too_long(tmp_path: Path) -> None:
    doc = json.loads(EXAMPLE.read_text())
    doc["inventories"][0]["name"] = "x" * 256
    path = tmp_path / "inv.json"
    path.write_text(json.dumps(doc))
    assert_error(ovfkit(str(path)), "SYS.1007", "name is longer than 255")


def test_output_in_missing_directory(tmp_path: Path) -> None:
    result = ovfkit(str(EXAMPLE), "-o", str(tmp_path / "no" / "such" / "x.ovf"))
    assert_error(result, "SYS.1003", "output directory")


def test_output_is_a_directory(tmp_path: Path) -> None:
    assert_error(ovfkit(str(EXAMPLE), "-o", str(tmp_path)), "SYS.1007", "is a directory")


def test_bad_ovf_version_is_a_usage_error() -> None:
    result = ovfkit(str(EXAMPLE), "--ovf-version", "3.0")
    assert result.returncode == 2
    assert b"invalid choice" in result.stderr
    assert result.stdout == b""


@pytest.mark.parametrize("command", ["descriptor", "export"])
def test_ovf_version_help_names_the_importers_of_2_0(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from ovfkit.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "2.0 (envelope/2" in text and "read by VirtualBox and Glance only" in text
    assert "Proxmox, oVirt/vdsm and virt-v2v read envelope/1 only" in text
