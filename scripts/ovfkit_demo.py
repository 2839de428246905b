"""The whole job on the embedded default, end to end (``bash scripts/demo``). Not part of the
package (the wheel leaves it out); the tests import its helpers from here.

1. A data folder (``demo-data/`` in the working directory, or ``--data-dir``) with a config: one
   storage root for the demo volumes and a local backup storage.
2. A demo VM: a qcow2 root disk with data written in (text, random blocks, a block at the very
   end, holes between) and a smaller qcow2 data disk, made with the real qemu-img; its
   VmInstanceInventory (ZStack's shape) registered in the catalog.
3. ExportVmOvaPackage through the same function API the HTTP service calls.
4. The package checked with ``ovfkit.ova.verify_package``, and the reply JSON printed.

Running it again works: the previous package of the demo VM is deleted first (DeleteImagePackage)
and the disks are made afresh. ``--no-export`` stops after step 2: the data folder is then ready
for the HTTP service's export (README, "HTTP service").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ovfkit.errors import OvfkitError

__all__ = ["DEMO_BS_UUID", "DEMO_VM_UUID", "main", "make_demo_vm", "setup_data_dir"]

MiB = 1 << 20
DEMO_VM_UUID = "0d5e3f0a6c1b4e7a9f3d2b1c0a9e8d7c"
DEMO_BS_UUID = "5b0c8e2f7a6d4c3b8e1f0a9d2c7b6e5a"


def _write_raw(path: Path, size: int, blocks: Sequence[tuple[int, bytes]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in blocks:
            f.seek(offset)
            f.write(data)


def make_qcow2(path: Path, size: int, blocks: Sequence[tuple[int, bytes]]) -> None:
    """A qcow2 of virtual ``size`` holding ``blocks`` (offset, bytes), made by qemu-img convert
    from a sparse raw file, so only the written clusters are allocated."""
    from ovfkit.qemu import img

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "disk.raw"
        _write_raw(raw, size, blocks)
        part = Path(tmp) / "disk.qcow2"
        img.convert(raw, part, src_fmt="raw", dst_fmt="qcow2")
        os.replace(part, path)


def _demo_blocks(size: int, seed: int, label: str) -> list[tuple[int, bytes]]:
    rnd = random.Random(seed)
    text = (f"ovfkit demo {label}\n" * 4096).encode()[: 64 * 1024]
    blocks = [(0, text)]
    for i in range(1, 6):
        offset = (size // 7) * i // (64 * 1024) * (64 * 1024)
        blocks.append((offset, rnd.randbytes(256 * 1024)))
    blocks.append((size - 4096, b"end of disk\n".ljust(4096, b"\0")))
    return blocks


def make_demo_vm(
    volumes_dir: str | os.PathLike[str],
    *,
    vm_uuid: str = DEMO_VM_UUID,
    name: str = "demo-vm",
    root_size: int = 32 * MiB,
    data_size: int = 16 * MiB,
    state: str = "Stopped",
    seed: int = 1,
) -> dict[str, Any]:
    """Make the VM's qcow2 disks under ``volumes_dir/<vm_uuid>/`` and return its
    VmInstanceInventory (ZStack's QueryVmInstance shape, one root and one data volume, a virtio
    and an e1000 NIC)."""
    folder = Path(volumes_dir) / vm_uuid
    root = folder / "root.qcow2"
    data = folder / "data.qcow2"
    make_qcow2(root, root_size, _demo_blocks(root_size, seed, f"{name} root disk"))
    make_qcow2(data, data_size, _demo_blocks(data_size, seed + 1, f"{name} data disk"))
    date = "May 10, 2022 5:24:03 AM"
    l3 = "2ac1b70fdb0f48769a29c6ebd0262cca"
    root_uuid = f"{vm_uuid[:24]}00000001"
    data_uuid = f"{vm_uuid[:24]}00000002"

    def volume(uuid: str, kind: str, path: Path, size: int, device: int) -> dict[str, Any]:
        return {
            "uuid": uuid, "name": f"{kind.upper()}-for-{name}", "vmInstanceUuid": vm_uuid,
            "installPath": str(path), "type": kind, "format": "qcow2", "size": size,
            "actualSize": path.stat().st_size, "deviceId": device, "state": "Enabled",
            "status": "Ready", "isShareable": False, "createDate": date, "lastOpDate": date,
        }

    def nic(index: int, driver: str, mac: str) -> dict[str, Any]:
        return {
            "uuid": f"{vm_uuid[:24]}0000010{index}", "vmInstanceUuid": vm_uuid,
            "l3NetworkUuid": l3, "mac": mac, "driverType": driver, "deviceId": index,
            "type": "VNIC", "state": "enable", "createDate": date, "lastOpDate": date,
        }

    return {
        "uuid": vm_uuid, "name": name, "description": "ovfkit demo VM",
        "platform": "Linux", "architecture": "x86_64", "guestOsType": "CentOS 7",
        "rootVolumeUuid": root_uuid, "type": "UserVm", "hypervisorType": "KVM",
        "memorySize": 1 << 30, "cpuNum": 2, "state": state,
        "createDate": date, "lastOpDate": date,
        "vmNics": [nic(0, "virtio", "fa:f0:08:8c:20:00"), nic(1, "e1000", "fa:e3:87:b1:71:01")],
        "allVolumes": [
            volume(root_uuid, "Root", root, root_size, 0),
            volume(data_uuid, "Data", data, data_size, 1),
        ],
        "vmCdRoms": [],
    }


def setup_data_dir(data_dir: str | os.PathLike[str]) -> Path:
    """Config with ``<data>/volumes`` as storage root and ``<data>/packages`` as the local
    backup storage DEMO_BS_UUID; returns the volumes folder."""
    from ovfkit.zstack.config import LocalStorageConfig, load_config, save_config

    data = Path(data_dir).resolve()
    volumes = data / "volumes"
    volumes.mkdir(parents=True, exist_ok=True)
    config = load_config(data).with_storage_root(str(volumes)).with_backup_storage(
        LocalStorageConfig(DEMO_BS_UUID, str(data / "packages"), "demo local backup storage")
    )
    save_config(data, config)
    return volumes


def run(data_dir: Path, out: Any = sys.stdout, *, export: bool = True) -> Mapping[str, Any]:
    from ovfkit.ova.reader import verify_package
    from ovfkit.zstack import api
    from ovfkit.zstack.context import open_context

    volumes = setup_data_dir(data_dir)
    with open_context(data_dir) as ctx:
        # Idempotent: one package per VM, so the previous run's package goes first.
        for old in api.query_image_packages(ctx, [f"vmUuid={DEMO_VM_UUID}"]):
            api.delete_image_package(ctx, old.uuid)
        inventory = make_demo_vm(volumes)
        ctx.catalog.add(inventory)
        print(f"demo VM {DEMO_VM_UUID} registered in {ctx.catalog.folder}", file=sys.stderr)
        if not export:
            return inventory
        body = {
            "params": {"vmUuid": DEMO_VM_UUID, "backupStorageUuid": DEMO_BS_UUID},
            "systemTags": [],
            "userTags": [],
        }
        reply = api.export_vm_ova_package(body, context=ctx)
        if not reply.success or reply.inventory is None:
            print(json.dumps(reply.to_json(), indent=2), file=out)
            raise SystemExit(1)
        _, path = api.package_file(ctx, reply.inventory.uuid)
        report = verify_package(path)
        if not report.ok:
            for problem in report.problems:
                print(f"{path}: {problem}", file=sys.stderr)
            raise SystemExit(1)
        print(f"package {path} verified: {len(report.checked)} checks passed", file=sys.stderr)
        doc = reply.to_json()
        print(json.dumps(doc, indent=2), file=out)
        return doc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/demo", description="Export a demo VM to an OVA, end to end."
    )
    parser.add_argument("--data-dir", type=Path, default=Path("demo-data"))
    parser.add_argument(
        "--no-export", action="store_true",
        help="only make and register the demo VM (its storage root and backup storage too)",
    )
    args = parser.parse_args(argv)
    try:
        run(args.data_dir, export=not args.no_export)
    except OvfkitError as exc:
        print(f"ERROR {exc.code}: {exc.details}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
