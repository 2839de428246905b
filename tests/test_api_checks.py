"""Every check ExportVmOvaPackage makes before work starts, with ZStack's code and message.

Each refused request must leave nothing behind: no record, no file on the backup storage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from ovfkit_demo import DEMO_BS_UUID, make_demo_vm, setup_data_dir

from ovfkit.zstack.adapter import vm_from_zstack
from ovfkit.zstack.api import estimate_package_size, export_vm_ova_package
from ovfkit.zstack.config import LocalStorageConfig, load_config, save_config
from ovfkit.zstack.context import ExportContext, open_context
from ovfkit.zstack.inventory import (
    ExportVmOvaPackageRequest,
    ImagePackageInventory,
    ImagePackageState,
)
from ovfkit.zstack.records import ExportLock

MiB = 1 << 20
VM = "3c2b1a0f9e8d4c7bb6a5f4e3d2c1b0a9"
OTHER_BS = "7e6d5c4b3a2f41e0a9b8c7d6e5f4a3b2"


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ExportContext]:
    volumes = setup_data_dir(tmp_path / "data")
    context = open_context(tmp_path / "data")
    context.catalog.add(make_demo_vm(volumes, vm_uuid=VM, root_size=4 * MiB, data_size=2 * MiB))
    yield context
    context.close()


def body(**params: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"vmUuid": VM, "backupStorageUuid": DEMO_BS_UUID}
    base.update(params)
    return {"params": {k: v for k, v in base.items() if v is not None}}


def error_of(ctx: ExportContext, request: Mapping[str, Any] | str) -> dict[str, Any]:
    reply = export_vm_ova_package(request, context=ctx)
    assert not reply.success and reply.inventory is None and reply.error is not None
    doc = reply.to_json()
    assert set(doc) == {"error"}
    assert ctx.records.query([]) == []
    packages = Path(load_config(ctx.data_dir).backup_storages[DEMO_BS_UUID].path)
    assert not packages.exists() or list(packages.iterdir()) == []
    return dict(doc["error"])


@pytest.mark.parametrize("field", ["vmUuid", "backupStorageUuid"])
def test_mandatory_fields(ctx: ExportContext, field: str) -> None:
    err = error_of(ctx, body(**{field: None}))
    assert err["code"] == "SYS.1007"
    assert err["details"] == (
        f"field[{field}] of message[APIExportVmOvaPackageMsg] is mandatory, can not be null"
    )


@pytest.mark.parametrize("field", ["vmUuid", "backupStorageUuid", "resourceUuid"])
@pytest.mark.parametrize(
    "value",
    ["", "not-a-uuid", "3C2B1A0F9E8D4C7BB6A5F4E3D2C1B0A9", "3c2b1a0f-9e8d-4c7b-b6a5-f4e3d2c1b0a9",
     "3c2b1a0f9e8d0c7bb6a5f4e3d2c1b0a9"],
)
def test_uuid_syntax(ctx: ExportContext, field: str, value: str) -> None:
    err = error_of(ctx, body(**{field: value}))
    assert err["code"] == "SYS.1007"
    assert f"invalid field[{field}]" in err["details"] and "valid uuid" in err["details"]


def test_tag_uuids_syntax(ctx: ExportContext) -> None:
    err = error_of(ctx, body(tagUuids=["nope"]))
    assert err["code"] == "SYS.1007" and "tagUuids[0]" in err["details"]


def test_name_and_description_lengths(ctx: ExportContext) -> None:
    err = error_of(ctx, body(name="n" * 256))
    assert err["code"] == "SYS.1007"
    assert err["details"] == (
        "field[name] of message[APIExportVmOvaPackageMsg] exceeds max length of string. "
        "expected was <= 255, actual was 256"
    )
    err = error_of(ctx, body(description="d" * 2049))
    assert err["code"] == "SYS.1007" and "expected was <= 2048, actual was 2049" in err["details"]


def test_vm_not_found(ctx: ExportContext) -> None:
    missing = "0123456789ab4cde8123456789abcdef"
    err = error_of(ctx, body(vmUuid=missing))
    assert err == {
        "code": "SYS.1003",
        "description": "Resource not found",
        "details": f"invalid field[vmUuid], resource[uuid:{missing}, type:VmInstanceVO] not found",
    }


def test_backup_storage_not_found(ctx: ExportContext) -> None:
    err = error_of(ctx, body(backupStorageUuid=OTHER_BS))
    assert err["code"] == "SYS.1003"
    assert err["details"] == (
        f"invalid field[backupStorageUuid], resource[uuid:{OTHER_BS}, type:BackupStorageVO] "
        "not found"
    )


@pytest.mark.parametrize("state", ["Running", "Starting", "Paused", "Stopping", None])
def test_vm_must_be_stopped(ctx: ExportContext, state: str | None) -> None:
    inv = dict(ctx.catalog(VM) or {})
    inv["state"] = state
    ctx.catalog.add(inv)
    err = error_of(ctx, body())
    assert err["code"] == "SYS.1007"
    assert err["details"] == "Only vm in state: Stopped can be exported."


def test_one_package_per_vm(ctx: ExportContext) -> None:
    held = ImagePackageInventory(
        uuid="aaaaaaaaaaaa4aaa8aaaaaaaaaaaaaaa", name="p", description=None, vm_uuid=VM,
        backup_storage_uuid=DEMO_BS_UUID, state=ImagePackageState.EXPORTED,
    )
    ctx.records.create_exporting(held, "held.ova")
    reply = export_vm_ova_package(body(), context=ctx)
    assert reply.error is not None
    assert reply.error["code"] == "SYS.1007"
    assert reply.error["details"] == (
        f"Vm[uuid: {VM}] is already exported as the ova package[uuid: {held.uuid}], "
        "please delete the package and try again."
    )
    assert len(ctx.records.query([])) == 1


def test_resource_uuid_in_use(ctx: ExportContext) -> None:
    other_vm = "4d3c2b1a0f9e4d8cb7a6f5e4d3c2b1a0"
    volumes = Path(load_config(ctx.data_dir).storage_roots[0])
    ctx.catalog.add(make_demo_vm(volumes, vm_uuid=other_vm, root_size=MiB, data_size=MiB))
    used = "bbbbbbbbbbbb4bbb8bbbbbbbbbbbbbbb"
    held = ImagePackageInventory(
        uuid=used, name="p", description=None, vm_uuid=other_vm,
        backup_storage_uuid=DEMO_BS_UUID, state=ImagePackageState.EXPORTING,
    )
    ctx.records.create_exporting(held, "held.ova")
    reply = export_vm_ova_package(body(resourceUuid=used), context=ctx)
    assert reply.error is not None and reply.error["code"] == "SYS.1007"
    assert f"resourceUuid[{used}]" in reply.error["details"]


def test_paths_outside_storage_roots(ctx: ExportContext, tmp_path: Path) -> None:
    inv = json.loads(json.dumps(ctx.catalog(VM)))
    outside = tmp_path / "elsewhere.qcow2"
    os.link(inv["allVolumes"][1]["installPath"], outside)
    inv["allVolumes"][1]["installPath"] = str(outside)
    ctx.catalog.add(inv)
    err = error_of(ctx, body())
    assert err["code"] == "SYS.1007" and str(outside) in err["details"]
    assert "outside the configured storage roots" in err["details"]

    inv["allVolumes"][1]["installPath"] = "/etc/shadow"
    ctx.catalog.add(inv)
    assert error_of(ctx, body())["code"] == "SYS.1007"

    link = Path(inv["allVolumes"][0]["installPath"]).parent / "escape.qcow2"
    os.symlink(outside, link)
    inv["allVolumes"][1]["installPath"] = str(link)
    ctx.catalog.add(inv)
    assert "outside" in error_of(ctx, body())["details"]


def test_iso_outside_storage_roots(ctx: ExportContext, tmp_path: Path) -> None:
    inv = dict(ctx.catalog(VM) or {})
    iso = tmp_path / "x.iso"
    iso.write_bytes(b"\0" * 4096)
    inv["vmCdRoms"] = [{"uuid": "c" * 32, "deviceId": 0, "isoInstallPath": str(iso)}]
    ctx.catalog.add(inv)
    err = error_of(ctx, body())
    assert err["code"] == "SYS.1007" and str(iso) in err["details"]


def test_capacity(ctx: ExportContext, tmp_path: Path) -> None:
    """A backup storage on a small tmpfs: the estimate (qemu-img measure) exceeds what is free,
    so the export is refused with ZStack's SYS.1006 message before any byte is written."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.system(f"mount -t tmpfs -o size=1m tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        config = load_config(ctx.data_dir).with_backup_storage(
            LocalStorageConfig(OTHER_BS, str(mount / "bs"))
        )
        save_config(ctx.data_dir, config)
        reply = export_vm_ova_package(body(backupStorageUuid=OTHER_BS), context=ctx)
        assert reply.error is not None
        vm = vm_from_zstack(ctx.catalog(VM) or {})
        required = estimate_package_size(vm)
        assert reply.error == {
            "code": "SYS.1006",
            "description": "An operation failed",
            "details": (
                f"backup storage[uuid: {OTHER_BS}] does not have enough available capacity "
                f"for exporting vm[uuid: {VM}], required capacity is: {required}"
            ),
        }
        # 2 x (64 KiB text + 5 x 256 KiB random + 4 KiB end) of data, plus the 1 MiB margin.
        assert required > 2 * (64 + 5 * 256 + 4) * 1024 + MiB
        assert required > os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        assert list((mount / "bs").iterdir()) == []
        assert ctx.records.query([]) == []
    finally:
        os.system(f"umount {mount}")


def test_lock_held_by_someone_else_refuses(ctx: ExportContext) -> None:
    used = "cccccccccccc4ccc8ccccccccccccccc"
    lock = ExportLock.try_acquire(ctx.records.lock_path(used))
    assert lock is not None
    try:
        err = error_of(ctx, body(resourceUuid=used))
        assert err["code"] == "SYS.1007"
    finally:
        lock.release()


def test_request_object_and_json_text_are_accepted(ctx: ExportContext) -> None:
    req = ExportVmOvaPackageRequest(vm_uuid=VM, backup_storage_uuid=None)
    assert error_of(ctx, req.to_json())["code"] == "SYS.1007"
    assert export_vm_ova_package(req, context=ctx).error is not None
    assert error_of(ctx, "{not json")["code"] == "SYS.1007"
