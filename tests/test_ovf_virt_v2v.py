"""An importer nobody here wrote reads our descriptors: ``virt-v2v -i ova X.ova --print-source``.

The package is made by hand (qemu-img streamOptimized disks, a ustar archive with the .ovf
first) so that only the descriptor is under test here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from ovfkit.model import (
    CdDrive,
    Controller,
    ControllerType,
    Disk,
    Firmware,
    Network,
    Nic,
    NicType,
    VirtualMachine,
)
from ovfkit.ovf import DescriptorOptions, build_descriptor, plan_layout

pytestmark = pytest.mark.skipif(
    shutil.which("virt-v2v") is None or shutil.which("qemu-img") is None,
    reason="virt-v2v / qemu-img not installed (Debian virt-v2v, qemu-utils)",
)
MiB = 1 << 20


def make_ova(tmp: Path, vm: VirtualMachine) -> Path:
    opts = DescriptorOptions()
    layout = plan_layout(vm, opts)
    sizes: dict[str, int] = {}
    for df in layout.disks:
        disk = next(d for d in vm.disks if d.id == df.disk_id)
        raw = tmp / f"{df.disk_id}.raw"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "raw", str(raw), str(disk.capacity)], check=True
        )
        out = tmp / df.file.href
        subprocess.run(
            [
                "qemu-img",
                "convert",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
                str(raw),
                str(out),
            ],
            check=True,
        )
        sizes[df.file.id] = out.stat().st_size
    layout = layout.with_sizes(sizes)
    ovf = tmp / f"{layout.base}.ovf"
    ovf.write_bytes(build_descriptor(vm, opts, layout))
    ova = tmp / f"{layout.base}.ova"
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        for path in [ovf, *(tmp / f.href for f in layout.files)]:
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return ova


def print_source(ova: Path) -> str:
    env = {**os.environ, "LIBGUESTFS_BACKEND": "direct"}
    res = subprocess.run(
        ["virt-v2v", "-i", "ova", str(ova), "--print-source"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_virt_v2v_reads_the_descriptor(tmp_path: Path) -> None:
    vm = VirtualMachine(
        name="v2v-web-01",
        vcpus=6,
        cores_per_socket=3,
        memory_mib=3072,
        firmware=Firmware.EFI,
        controllers=(
            Controller("scsi", ControllerType.SCSI, "lsilogic"),
            Controller("ide", ControllerType.IDE),
            Controller("sata", ControllerType.SATA),
        ),
        disks=(
            Disk("root", 2 * MiB, "scsi", 0, boot_order=1),
            Disk("data", 1 * MiB, "scsi", 1),
            Disk("log", 1 * MiB, "sata", 0),
        ),
        cd_drives=(CdDrive("cd", "ide", 1),),
        nics=(
            Nic("n0", NicType.VMXNET3, "VM Network", "00:50:56:00:00:01"),
            Nic("n1", NicType.E1000, "Backend", "00:50:56:00:00:02"),
        ),
        networks=(Network("VM Network"), Network("Backend")),
    )
    out = print_source(make_ova(tmp_path, vm))
    assert "source name: v2v-web-01" in out
    assert f"memory: {3072 * MiB} (bytes)" in out
    assert "nr vCPUs: 6" in out
    assert "firmware: uefi" in out
    disks = out.split("disks:")[1].split("removable media:")[0]
    assert disks.count("[scsi]") == 2 and disks.count("[sata]") == 1
    assert "CD-ROM [ide]" in out
    assert 'Bridge "VM Network" mac: 00:50:56:00:00:01 [vmxnet3]' in out
    assert 'Bridge "Backend" mac: 00:50:56:00:00:02 [e1000]' in out


def test_virt_v2v_bios_unicode_name(tmp_path: Path) -> None:
    vm = VirtualMachine(
        name="测试 vm",
        memory_mib=512,
        controllers=(Controller("ide", ControllerType.IDE),),
        disks=(Disk("root", 1 * MiB, "ide", 0),),
    )
    out = print_source(make_ova(tmp_path, vm))
    assert "source name: 测试 vm" in out
    assert "firmware: bios" in out
    assert "[ide]" in out.split("disks:")[1]
