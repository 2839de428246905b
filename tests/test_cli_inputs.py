"""The neutral model first: ovfkit's VM JSON (schema, round trip) and ``ovfkit export`` from each
input it detects: the neutral JSON, an .ovf beside its files (a re-pack) and a ZStack inventory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from conftest import MakeImage, MiB
from hypothesis import HealthCheck, given, settings
from strategies import virtual_machines
from test_cli_export import EXAMPLE

from ovfkit.errors import InvalidArgumentError
from ovfkit.model import (
    Controller,
    ControllerType,
    Disk,
    DiskSource,
    Network,
    Nic,
    NicType,
    VirtualMachine,
)
from ovfkit.model_json import FORMAT, vm_from_json, vm_json_schema, vm_to_json
from ovfkit.ova import extract_package, open_package, verify_package

SCHEMA = vm_json_schema()
VALIDATOR = jsonschema_rs.validator_for(SCHEMA)


def ovfkit(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ovfkit", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=300)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(virtual_machines(max_disks=4, max_nics=3))
def test_round_trip_and_schema(vm: VirtualMachine) -> None:
    doc = vm_to_json(vm)
    text = json.dumps(doc)
    assert VALIDATOR.is_valid(json.loads(text)), list(VALIDATOR.iter_errors(doc))[:1]
    assert vm_from_json(text) == vm


def test_schema_is_the_model() -> None:
    VirtualMachine_ = SCHEMA["properties"]
    assert SCHEMA["required"] == ["format", "name"]
    assert VirtualMachine_["format"] == {"const": FORMAT}
    disk = SCHEMA["$defs"]["Disk"]
    assert disk["required"] == ["id", "capacity", "controller", "unit"]
    assert disk["properties"]["capacity"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert SCHEMA["$defs"]["Product"]["properties"]["class_"]["type"] == "string"
    # The schema refuses what the decoder refuses, and the other way round.
    minimal = {"format": FORMAT, "name": "x"}
    assert VALIDATOR.is_valid(minimal) and vm_from_json(minimal) == VirtualMachine("x")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "ovfkit.vm/9"}, "format is 'ovfkit.vm/9'"),
        ({"vcpus": "2"}, 'vm.vcpus must be an integer, not "2"'),
        ({"vcpus": True}, "vm.vcpus must be an integer, not true"),
        ({"firmware": "uefi"}, "vm.firmware is 'uefi'; use one of 'bios', 'efi'"),
        ({"disks": [{"id": "d", "capacity": "1G", "controller": "c", "unit": 0}]},
         'vm.disks[0].capacity must be an integer, not "1G"'),
        ({"disks": [{"id": "d", "controller": "c", "unit": 0}]}, "vm.disks[0].capacity is missing"),
        ({"cpus": 2}, "vm has no field 'cpus'"),
        ({"nics": {}}, "vm.nics must be an array"),
    ],
)
def test_decoder_names_the_field(change: dict[str, Any], message: str) -> None:
    doc = {"format": FORMAT, "name": "x", **change}
    with pytest.raises(InvalidArgumentError) as err:
        vm_from_json(doc)
    assert message in err.value.details
    assert not VALIDATOR.is_valid(doc)


def _hand_built(tmp_path: Path, make_image: MakeImage) -> tuple[Path, Path]:
    root = make_image("qcow2", size=4 * MiB)
    vm = VirtualMachine(
        name="hand-built",
        vcpus=2,
        memory_mib=1024,
        controllers=(Controller("scsi0", ControllerType.SCSI),),
        disks=(Disk("root", None, "scsi0", 0, DiskSource(str(root.path), "qcow2")),),
        networks=(Network("lan"),),
        nics=(Nic("nic0", NicType.VMXNET3, "lan"),),
    )
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(vm_to_json(vm), indent=2))
    return path, root.raw


def test_export_from_the_neutral_json(tmp_path: Path, make_image: MakeImage) -> None:
    vm_json, _ = _hand_built(tmp_path, make_image)
    out = tmp_path / "hand-built.ova"
    proc = ovfkit("export", vm_json, "-o", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["path"] == str(out.resolve()) and result["size"] == out.stat().st_size
    assert [f["name"] for f in result["files"]][:2] == ["hand-built.ovf", "hand-built.mf"]
    assert verify_package(out).ok
    assert open_package(out).vm.disks[0].capacity == 4 * MiB
    # ZStack's flags belong to ZStack input.
    proc = ovfkit("export", vm_json, "-o", tmp_path / "x.ova", "--backup-storage-uuid",
                  "4ed5bbb150a044b5917e7e6c9c4b8170")
    assert proc.returncode == 2 and "ZStack inventory only" in proc.stderr
    assert not (tmp_path / "x.ova").exists()


def test_export_repacks_an_ovf(tmp_path: Path, make_image: MakeImage) -> None:
    vm_json, raw = _hand_built(tmp_path, make_image)
    first = tmp_path / "first.ova"
    assert ovfkit("export", vm_json, "-o", first).returncode == 0
    folder = tmp_path / "unpacked"
    extract_package(first, folder)
    (ovf,) = folder.glob("*.ovf")
    again = tmp_path / "again.ova"
    proc = ovfkit("export", ovf, "-o", again, "--manifest", "sha512")
    assert proc.returncode == 0, proc.stderr
    assert verify_package(again).ok
    assert open_package(again).vm == open_package(first).vm
    # The disk data survived both packings: qemu-img compares the VMDK with the source bytes.
    (vmdk,) = folder.glob("*.vmdk")
    extract_package(again, tmp_path / "again")
    (vmdk2,) = (tmp_path / "again").glob("*.vmdk")
    for disk in (vmdk, vmdk2):
        cmp = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "raw", disk, raw],
                             capture_output=True, text=True, timeout=60)
        assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    # A missing disk file is an error naming it, not a traceback.
    vmdk.unlink()
    proc = ovfkit("export", ovf, "-o", tmp_path / "third.ova")
    assert proc.returncode == 2 and vmdk.name in proc.stderr and "Traceback" not in proc.stderr


def test_inventory_command(tmp_path: Path) -> None:
    proc = ovfkit("inventory", "--schema")
    assert proc.returncode == 0 and json.loads(proc.stdout) == SCHEMA
    proc = ovfkit("inventory", EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["format"] == FORMAT and doc["name"] == "web-01" and VALIDATOR.is_valid(doc)
    # The neutral document of an inventory reads back as the same VM, and as itself.
    path = tmp_path / "vm.json"
    path.write_text(proc.stdout)
    assert json.loads(ovfkit("inventory", path).stdout) == doc
    assert ovfkit("inventory", "-", stdin=proc.stdout).stdout == proc.stdout
    help_text = ovfkit("--help").stdout
    assert "neutral" in help_text and "OVF" in help_text and "ZStack" in help_text
    export_help = ovfkit("export", "--help").stdout
    assert "ZStack inventory input" in export_help
