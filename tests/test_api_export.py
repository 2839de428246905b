"""ExportVmOvaPackage end to end on the local backup storage, and the record APIs around it.

Packages are judged by ``ovfkit.ova.verify_package`` and by hashing the file independently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ovfkit_demo import DEMO_BS_UUID, make_demo_vm, setup_data_dir

from ovfkit.errors import InvalidArgumentError, NotFoundError
from ovfkit.model import Firmware
from ovfkit.ova import verify_package
from ovfkit.progress import Progress
from ovfkit.zstack.api import (
    delete_image_package,
    export_vm_ova_package,
    get_image_package,
    package_file,
    query_image_packages,
    update_image_package,
)
from ovfkit.zstack.config import LocalStorageConfig, load_config, save_config
from ovfkit.zstack.context import ExportContext, open_context
from ovfkit.zstack.inventory import ImagePackageState, parse_zstack_time
from ovfkit.zstack.storage import package_download_path

MiB = 1 << 20
VM = "3c2b1a0f9e8d4c7bb6a5f4e3d2c1b0a9"


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ExportContext]:
    volumes = setup_data_dir(tmp_path / "data")
    context = open_context(tmp_path / "data")
    context.catalog.add(make_demo_vm(volumes, vm_uuid=VM, root_size=3 * MiB, data_size=2 * MiB))
    yield context
    context.close()


def packages_dir(ctx: ExportContext) -> Path:
    return Path(load_config(ctx.data_dir).backup_storages[DEMO_BS_UUID].path)


def body(**params: Any) -> dict[str, Any]:
    return {"params": {"vmUuid": VM, "backupStorageUuid": DEMO_BS_UUID, **params}}


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def test_export_success(ctx: ExportContext) -> None:
    reply = export_vm_ova_package(body(), context=ctx)
    assert reply.success and reply.error is None and reply.inventory is not None
    inv = reply.inventory
    doc = reply.to_json()["inventory"]
    assert set(doc) == {
        "uuid", "name", "description", "vmUuid", "backupStorageUuid", "state", "exportUrl",
        "md5Sum", "format", "size", "createDate", "lastOpDate",
    }
    assert doc["state"] == "Exported" and doc["format"] == "OVA"
    assert doc["name"] == "exported-vm-demo-vm"
    assert doc["description"] == f"source vm uuid: {VM}"
    assert isinstance(doc["size"], int)
    parse_zstack_time(doc["createDate"])
    _, path = package_file(ctx, inv.uuid)
    assert path == packages_dir(ctx) / f"{inv.uuid}.ova"
    assert doc["exportUrl"] == path.resolve().as_uri()
    assert doc["size"] == path.stat().st_size
    assert doc["md5Sum"] == md5_of(path)
    report = verify_package(path)
    assert report.ok, report.problems
    assert report.vm is not None and len(report.vm.disks) == 2
    assert sorted(os.listdir(packages_dir(ctx))) == [f"{inv.uuid}.ova"]
    assert list((ctx.data_dir / "locks").iterdir()) == []
    assert get_image_package(ctx, inv.uuid) == inv


def test_name_description_resource_uuid_and_boot_mode(ctx: ExportContext) -> None:
    uuid = "dddddddddddd4ddd8ddddddddddddddd"
    reply = export_vm_ova_package(
        {**body(name="my package", description="", resourceUuid=uuid),
         "systemTags": ["bootMode::UEFI"]},
        context=ctx,
    )
    assert reply.inventory is not None, reply.error
    assert (reply.inventory.uuid, reply.inventory.name) == (uuid, "my package")
    assert reply.inventory.description == ""
    _, path = package_file(ctx, uuid)
    report = verify_package(path)
    assert report.ok and report.vm is not None and report.vm.firmware is Firmware.EFI


def test_export_url_with_service_base_url(ctx: ExportContext) -> None:
    ctx.base_url = "http://127.0.0.1:8080/"
    reply = export_vm_ova_package(body(), context=ctx)
    assert reply.inventory is not None
    record = ctx.records.get(reply.inventory.uuid)
    assert record is not None and record.download_token is not None
    assert reply.inventory.export_url == (
        "http://127.0.0.1:8080" + package_download_path(reply.inventory.uuid, record.download_token)
    )
    assert len(record.download_token) >= 43 and record.download_token not in record.inventory.uuid


def test_records_query_update_delete_and_restart(ctx: ExportContext) -> None:
    reply = export_vm_ova_package(body(), context=ctx)
    assert reply.inventory is not None
    uuid = reply.inventory.uuid
    assert [i.uuid for i in query_image_packages(ctx, ["name~=exported-vm-%"])] == [uuid]
    assert query_image_packages(ctx, ["state=Exporting"]) == []
    assert query_image_packages(ctx, [f"vmUuid={VM}", "size>0"])[0].uuid == uuid
    with pytest.raises(InvalidArgumentError):
        query_image_packages(ctx, ["bogus~~"])

    updated = update_image_package(ctx, uuid, name="renamed", description="new text")
    assert (updated.name, updated.description) == ("renamed", "new text")
    assert updated.md5_sum == reply.inventory.md5_sum
    # The error names the message that was sent, not the export's.
    with pytest.raises(InvalidArgumentError, match=r"message\[APIUpdateImagePackageMsg\]"):
        update_image_package(ctx, uuid, name="x" * 256)
    with pytest.raises(InvalidArgumentError, match=r"message\[APIUpdateImagePackageMsg\]"):
        update_image_package(ctx, uuid, description="x" * 2049)
    with pytest.raises(InvalidArgumentError):
        update_image_package(ctx, uuid, name="")
    with pytest.raises(NotFoundError):
        update_image_package(ctx, "eeeeeeeeeeee4eee8eeeeeeeeeeeeeee", name="x")

    # Records survive a restart.
    ctx.close()
    again = open_context(ctx.data_dir)
    try:
        got = get_image_package(again, uuid)
        assert got.name == "renamed" and got.state is ImagePackageState.EXPORTED
        assert again.recovery.rolled_back == []
        _, path = package_file(again, uuid)
        delete_image_package(again, uuid)
        assert not path.exists() and os.listdir(packages_dir(again)) == []
        assert query_image_packages(again) == []
        assert again.records.pending_cleanup() == []
        with pytest.raises(NotFoundError):
            delete_image_package(again, uuid)
        # One package per VM: after the delete the VM can be exported again.
        assert export_vm_ova_package(body(), context=again).success
    finally:
        again.close()


def test_cancel_rolls_back(ctx: ExportContext) -> None:
    cancel = threading.Event()
    seen: list[Progress] = []

    def progress(p: Progress) -> None:
        seen.append(p)
        cancel.set()

    reply = export_vm_ova_package(body(), context=ctx, progress=progress, cancel=cancel)
    assert reply.error is not None and reply.error["code"] == "SYS.1017", reply.error
    assert seen
    assert query_image_packages(ctx) == [] and os.listdir(packages_dir(ctx)) == []
    assert ctx.records.pending_cleanup() == []


def test_disk_that_disappears_rolls_back(ctx: ExportContext) -> None:
    """The data disk is truncated to nothing while the root disk is being written."""
    inv = ctx.catalog(VM)
    assert inv is not None
    data_disk = Path(inv["allVolumes"][1]["installPath"])
    done: list[bool] = []

    def progress(p: Progress) -> None:
        if not done:
            done.append(True)
            os.truncate(data_disk, 0)

    reply = export_vm_ova_package(body(), context=ctx, progress=progress)
    assert done and reply.error is not None, reply.to_json()
    assert reply.error["code"] in ("SYS.1003", "SYS.1006", "SYS.1016"), reply.error
    assert query_image_packages(ctx) == [] and os.listdir(packages_dir(ctx)) == []


def test_storage_that_fills_rolls_back(ctx: ExportContext, tmp_path: Path) -> None:
    """A backup storage on a small tmpfs with room for the package, filled by another writer
    while the export runs: the write fails with ENOSPC, the export answers SYS.1016 and leaves
    nothing behind."""
    mount = tmp_path / "bs"
    mount.mkdir()
    if os.system(f"mount -t tmpfs -o size=12m tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        small = "7e6d5c4b3a2f41e0a9b8c7d6e5f4a3b2"
        save_config(
            ctx.data_dir,
            load_config(ctx.data_dir).with_backup_storage(LocalStorageConfig(small, str(mount))),
        )
        filler = mount / "filler"
        filled: list[bool] = []

        def progress(p: Progress) -> None:
            if not filled:
                filled.append(True)
                with open(filler, "wb") as f, contextlib.suppress(OSError):
                    while True:
                        f.write(b"\xff" * MiB)

        reply = export_vm_ova_package(
            body(backupStorageUuid=small), context=ctx, progress=progress
        )
        assert filled and reply.error is not None, reply.to_json()
        assert reply.error["code"] == "SYS.1016", reply.error
        assert query_image_packages(ctx) == []
        assert sorted(os.listdir(mount)) == ["filler"]
    finally:
        os.system(f"umount {mount}")


def test_concurrent_exports_of_several_vms(ctx: ExportContext) -> None:
    volumes = Path(load_config(ctx.data_dir).storage_roots[0])
    vms = [f"{i:08x}aaaa4aaa8aaa{i:012x}" for i in range(1, 6)]
    for i, vm in enumerate(vms):
        ctx.catalog.add(
            make_demo_vm(volumes, vm_uuid=vm, name=f"vm{i}", root_size=2 * MiB,
                         data_size=MiB, seed=10 + i)
        )
    results: dict[str, Any] = {}
    barrier = threading.Barrier(len(vms))

    def run(vm: str) -> None:
        barrier.wait()
        results[vm] = export_vm_ova_package(body(vmUuid=vm), context=ctx)

    threads = [threading.Thread(target=run, args=(vm,)) for vm in vms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.success for r in results.values()), [r.error for r in results.values()]
    invs = [r.inventory for r in results.values()]
    assert len({i.uuid for i in invs}) == len(vms)
    assert len({i.md5_sum for i in invs}) == len(vms)  # different disk contents
    records = query_image_packages(ctx, ["state=Exported"])
    assert {r.vm_uuid for r in records} == set(vms)
    for inv in invs:
        _, path = package_file(ctx, inv.uuid)
        assert md5_of(path) == inv.md5_sum
        assert verify_package(path, check_data=False).ok
    assert len(os.listdir(packages_dir(ctx))) == len(vms)


def test_two_requests_for_one_vm_exactly_one_succeeds(ctx: ExportContext) -> None:
    replies: list[Any] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        barrier.wait()
        replies.append(export_vm_ova_package(body(), context=ctx))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in replies if r.success]
    failed = [r for r in replies if not r.success]
    assert len(ok) == 1 and len(failed) == 2
    winner = ok[0].inventory
    for r in failed:
        assert r.error["code"] == "SYS.1007"
        assert r.error["details"] == (
            f"Vm[uuid: {VM}] is already exported as the ova package[uuid: {winner.uuid}], "
            "please delete the package and try again."
        )
    assert [i.uuid for i in query_image_packages(ctx)] == [winner.uuid]
    assert os.listdir(packages_dir(ctx)) == [f"{winner.uuid}.ova"]


def test_reply_json_round_trips(ctx: ExportContext) -> None:
    reply = export_vm_ova_package(json.dumps(body()), context=ctx)
    text = json.dumps(reply.to_json())
    assert json.loads(text)["inventory"]["uuid"] == reply.inventory.uuid  # type: ignore[union-attr]


def test_capacity_is_reserved_while_an_export_runs(ctx: ExportContext, tmp_path: Path) -> None:
    """Room for one package, two exports at once: the second is refused (SYS.1006) while the
    first holds its reservation, though the first has hardly written anything yet."""
    from ovfkit.zstack.adapter import vm_from_zstack
    from ovfkit.zstack.api import estimate_package_size

    volumes = Path(load_config(ctx.data_dir).storage_roots[0])
    second_vm = "4d3c2b1a0f9e4d8cb7a6f5e4d3c2b1a0"
    ctx.catalog.add(
        make_demo_vm(volumes, vm_uuid=second_vm, root_size=3 * MiB, data_size=2 * MiB, seed=7)
    )
    estimate = estimate_package_size(vm_from_zstack(ctx.catalog(VM) or {}))
    mount = tmp_path / "bs"
    mount.mkdir()
    size_kib = estimate * 3 // 2 // 1024
    if os.system(f"mount -t tmpfs -o size={size_kib}k tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        small = "7e6d5c4b3a2f41e0a9b8c7d6e5f4a3b2"
        save_config(
            ctx.data_dir,
            load_config(ctx.data_dir).with_backup_storage(LocalStorageConfig(small, str(mount))),
        )
        first_running = threading.Event()
        second_done = threading.Event()

        def hold(p: Progress) -> None:
            first_running.set()
            second_done.wait(60)

        first: list[Any] = []
        t = threading.Thread(
            target=lambda: first.append(
                export_vm_ova_package(body(backupStorageUuid=small), context=ctx, progress=hold)
            )
        )
        t.start()
        assert first_running.wait(60)
        second = export_vm_ova_package(
            body(vmUuid=second_vm, backupStorageUuid=small), context=ctx
        )
        second_done.set()
        t.join()
        assert second.error is not None and second.error["code"] == "SYS.1006", second.error
        assert "does not have enough available capacity" in second.error["details"]
        assert first[0].success, first[0].error
        # Released afterwards: with the first package deleted, the second VM fits.
        delete_image_package(ctx, first[0].inventory.uuid)
        again = export_vm_ova_package(body(vmUuid=second_vm, backupStorageUuid=small), context=ctx)
        assert again.success, again.error
    finally:
        os.system(f"umount {mount}")


def test_caller_supplied_resolver(tmp_path: Path) -> None:
    """A Python caller resolves VMs itself (e.g. from ZStack's QueryVmInstance)."""
    volumes = setup_data_dir(tmp_path / "data")
    inventory = make_demo_vm(volumes, vm_uuid=VM, root_size=2 * MiB, data_size=MiB)
    asked: list[str] = []

    def resolver(uuid: str) -> dict[str, Any] | None:
        asked.append(uuid)
        return {"inventories": [inventory]} if uuid == VM else None

    with open_context(tmp_path / "data", resolver=resolver) as ctx:
        assert ctx.catalog.list() == []  # the folder catalog is not consulted
        reply = export_vm_ova_package(body(), context=ctx)
        assert reply.success, reply.error
        missing = "0123456789ab4cde8123456789abcdef"
        reply = export_vm_ova_package(body(vmUuid=missing), context=ctx)
        assert reply.error is not None and reply.error["code"] == "SYS.1003"
        assert asked == [VM, missing]

    def liar(uuid: str) -> dict[str, Any] | None:
        return {**inventory, "uuid": "4d3c2b1a0f9e4d8cb7a6f5e4d3c2b1a0"}

    def broken(uuid: str) -> dict[str, Any] | None:
        raise RuntimeError("database down")

    for bad, code in ((liar, "SYS.1007"), (broken, "SYS.1000")):
        with open_context(tmp_path / "other", resolver=bad) as ctx:
            save_config(
                ctx.data_dir,
                load_config(ctx.data_dir).with_backup_storage(
                    LocalStorageConfig(DEMO_BS_UUID, str(tmp_path / "other-bs"))
                ),
            )
            reply = export_vm_ova_package(body(), context=ctx)
            assert reply.error is not None and reply.error["code"] == code, reply.error


@pytest.mark.parametrize("how", ["backing", "data-file"])
def test_image_reading_a_file_outside_the_roots_is_refused(
    ctx: ExportContext, tmp_path: Path, how: str
) -> None:
    # A qcow2 inside a storage root can name any file as its backing file or external data
    # file; exporting it would put that file's bytes in a downloadable package.
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"top secret".ljust(MiB, b"\0"))
    inv = ctx.catalog(VM)
    assert inv is not None
    root = next(v["installPath"] for v in inv["allVolumes"] if v["type"] == "Root")
    if how == "backing":
        args = ["rebase", "-u", "-f", "qcow2", "-b", str(secret), "-F", "raw", root]
    else:
        os.unlink(root)
        args = ["create", "-f", "qcow2", "-o", f"data_file={secret},data_file_raw=on", root,
                str(MiB)]
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)
    reply = export_vm_ova_package(body(), context=ctx)
    assert reply.error is not None and reply.inventory is None
    assert reply.error["code"] == "SYS.1007"
    assert str(secret) in reply.error["details"] and "storage roots" in reply.error["details"]
    assert not packages_dir(ctx).exists() or os.listdir(packages_dir(ctx)) == []
    assert query_image_packages(ctx, []) == []


def test_volume_that_is_a_fifo_is_refused_without_hanging(ctx: ExportContext) -> None:
    # qemu-img info on a FIFO waits for a writer for ever; the service worker hung with it.
    inv = ctx.catalog(VM)
    assert inv is not None
    root = next(v["installPath"] for v in inv["allVolumes"] if v["type"] == "Root")
    os.unlink(root)
    os.mkfifo(root)
    replies: list[Any] = []
    worker = threading.Thread(
        target=lambda: replies.append(export_vm_ova_package(body(), context=ctx)), daemon=True
    )
    worker.start()
    worker.join(60)
    if worker.is_alive():  # unblock the stuck open so the test run can end
        with open(root, "wb"):
            pass
        pytest.fail("the export hung on a FIFO volume")
    assert replies[0].error is not None and replies[0].error["code"] == "SYS.1007"
    assert "FIFO" in replies[0].error["details"]
