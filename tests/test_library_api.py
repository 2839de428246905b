"""The library surface a consumer meets at run time: wrong argument types are
InvalidArgumentError (never an AttributeError from deep inside), the Disk.capacity rule, the
error names and their old aliases."""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import io
import os
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
from conftest import MiB, write_raw

import ovfkit
from ovfkit import errors


def hand_built_vm(image: Path, capacity: int | None = None) -> ovfkit.VirtualMachine:
    return ovfkit.VirtualMachine(
        name="web-01",
        vcpus=2,
        memory_mib=2048,
        controllers=(ovfkit.Controller("scsi0", ovfkit.ControllerType.SCSI),),
        disks=(ovfkit.Disk("root", capacity, "scsi0", 0, ovfkit.DiskSource(str(image), "raw")),),
        networks=(ovfkit.Network("lan"),),
        nics=(ovfkit.Nic("nic0", ovfkit.NicType.VMXNET3, "lan"),),
    )


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "root.raw"
    write_raw(path, 3 * MiB, [(0, b"boot sector" * 40), (2 * MiB, b"data" * 100)])
    return path


def _wrong_calls(vm: ovfkit.VirtualMachine, out: str) -> list[tuple[str, Any]]:
    o: Any = ovfkit
    return [
        ("options", lambda: o.write_ova(vm, out, {"manifest": "sha1"})),
        ("vm", lambda: o.write_ova({"name": "web"}, out)),
        ("target", lambda: o.write_ova(vm, 42)),
        ("progress", lambda: o.write_ova(vm, out, progress="yes")),
        ("cancel", lambda: o.write_ova(vm, out, cancel=True)),
        ("options", lambda: o.write_ova_stream(vm, io.BytesIO(), {"manifest": "sha1"})),
        ("options", lambda: o.build_descriptor(vm, {"ovf_version": "2.0"})),
        ("vm", lambda: o.build_descriptor("web")),
        ("options", lambda: o.write_vmdk(vm.disks[0].source, io.BytesIO(), {"engine": "x"})),
        ("source", lambda: o.write_vmdk("disk.raw", io.BytesIO())),
        # fields of the dataclasses, nested ones included, hold what their annotations say
        ("vm.vcpus", lambda: o.write_ova(dataclasses.replace(vm, vcpus="2"), out)),
        ("vm.disks", lambda: o.write_ova(dataclasses.replace(vm, disks=list(vm.disks)), out)),
        ("vm.disks[0].capacity", lambda: o.write_ova(
            dataclasses.replace(vm, disks=(dataclasses.replace(vm.disks[0], capacity="3"),)),
            out)),
        ("vm.firmware", lambda: o.write_ova(dataclasses.replace(vm, firmware="uefi"), out)),
        ("options.threads", lambda: o.write_ova(vm, out, ovfkit.OvaOptions(threads="4"))),
        ("options.fsync", lambda: o.write_ova(vm, out, ovfkit.OvaOptions(fsync=1))),
        ("vm.nics[0].network", lambda: o.build_descriptor(dataclasses.replace(
            vm, nics=(dataclasses.replace(vm.nics[0], network=7),)))),
    ]


def test_wrong_argument_types_are_invalid_argument(image: Path, tmp_path: Path) -> None:
    vm = hand_built_vm(image)
    out = str(tmp_path / "web.ova")
    for name, call in _wrong_calls(vm, out):
        with pytest.raises(ovfkit.InvalidArgumentError) as err:
            call()
        assert err.value.details.startswith(f"{name} must be"), err.value.details
    assert os.listdir(tmp_path) == ["root.raw"]


def test_capacity_none_takes_the_image_size(image: Path, tmp_path: Path) -> None:
    vm = hand_built_vm(image)
    result = ovfkit.write_ova(vm, tmp_path / "web.ova")
    assert ovfkit.open_package(result.path).vm.disks[0].capacity == 3 * MiB
    # The streaming layout writes the descriptor before the disk: the size is read up front.
    with open(tmp_path / "streamed.ova", "wb") as f:
        ovfkit.write_ova(vm, f)
    assert ovfkit.open_package(tmp_path / "streamed.ova").vm.disks[0].capacity == 3 * MiB
    # The same size given, in bytes not a sector multiple of it, is the image's size too.
    ovfkit.write_ova(hand_built_vm(image, 3 * MiB - 100), tmp_path / "same.ova")
    with pytest.raises(ovfkit.InvalidArgumentError, match="has no capacity"):
        ovfkit.build_descriptor(vm)


@pytest.mark.parametrize("capacity", [0, 1, 2 * MiB, 4 * MiB])
def test_a_capacity_other_than_the_image_is_refused(
    image: Path, tmp_path: Path, capacity: int
) -> None:
    vm = hand_built_vm(image, capacity)
    with pytest.raises(ovfkit.InvalidArgumentError) as err:
        ovfkit.write_ova(vm, tmp_path / "web.ova")
    assert str(capacity) in err.value.details
    with pytest.raises(ovfkit.InvalidArgumentError):
        ovfkit.write_ova(vm, io.BytesIO())
    assert sorted(os.listdir(tmp_path)) == ["root.raw"]


def test_error_names_and_their_aliases() -> None:
    assert ovfkit.IoError is ovfkit.OvfkitIOError is errors.OvfkitIOError
    assert ovfkit.CancelledError is ovfkit.OperationCancelledError
    assert ovfkit.OvfkitIOError.code == "SYS.1016"
    assert ovfkit.OperationCancelledError.code == "SYS.1017"
    # No class is named like a builtin or asyncio/concurrent.futures name (the aliases above
    # are other names for these classes, kept for one release).
    taken = {n.lower() for n in (*dir(builtins), *dir(asyncio), *dir(futures))}
    classes = {getattr(errors, n).__name__ for n in errors.__all__}
    assert {c for c in classes if c.lower() in taken} == set()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ovfkit.OperationCancelledError):
        from ovfkit.progress import check_cancel

        check_cancel(cancel, "export")


def test_readme_library_example_runs(tmp_path: Path) -> None:
    """The README's "Use as a library" example, run as written on a real qcow2 image."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Use as a library\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "ovfkit.VirtualMachine(" in code  # the neutral model first
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "root.qcow2"),
                    "8M"], check=True, timeout=60)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 64k", "-f", "qcow2",
                    str(tmp_path / "root.qcow2")], check=True, capture_output=True, timeout=60)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == str(8 * MiB)
