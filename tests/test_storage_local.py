"""The local backup storage, the data folder's config file and postponed file removals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ovfkit.errors import InvalidArgumentError
from ovfkit.zstack.api import delete_image_package
from ovfkit.zstack.config import (
    Config,
    LocalStorageConfig,
    SftpStorageConfig,
    load_config,
    save_config,
)
from ovfkit.zstack.context import open_context
from ovfkit.zstack.inventory import ImagePackageInventory, ImagePackageState
from ovfkit.zstack.storage import LocalBackupStorage, package_download_path

BS = "5b0c8e2f7a6d4c3b8e1f0a9d2c7b6e5a"
SFTP = "9a8b7c6d5e4f4a3b9c2d1e0f9a8b7c6d"


def test_capacity_and_urls(tmp_path: Path) -> None:
    storage = LocalBackupStorage(LocalStorageConfig(BS, str(tmp_path / "bs")))
    st = os.statvfs(tmp_path)
    assert abs(storage.available_capacity() - st.f_bavail * st.f_frsize) < 64 << 20
    assert storage.export_url("a.ova", "u") == (tmp_path / "bs" / "a.ova").resolve().as_uri()
    served = LocalBackupStorage(LocalStorageConfig(BS, str(tmp_path / "bs")), "http://h:1/")
    assert served.export_url("a.ova", "u", "t") == "http://h:1" + package_download_path("u", "t")
    assert package_download_path("u", "t") == "/ova-packages/t/u.ova"


def test_upload_commit_abort_and_leftovers(tmp_path: Path) -> None:
    storage = LocalBackupStorage(LocalStorageConfig(BS, str(tmp_path)))
    src = tmp_path.parent / f"{tmp_path.name}-src.ova"
    src.write_bytes(b"x" * 1000)
    up = storage.begin("p.ova")
    assert up.local_path == tmp_path / "p.ova"
    up.upload_from(src)
    assert not (tmp_path / "p.ova").exists()
    up.commit()
    assert (tmp_path / "p.ova").read_bytes() == b"x" * 1000
    assert storage.size_of("p.ova") == 1000 and storage.size_of("q.ova") is None
    # What a crashed writer leaves: its temporary and a half upload; remove() takes all of it.
    (tmp_path / ".p.ova.abc123.part").write_bytes(b"partial")
    (tmp_path / "p.ova.part").write_bytes(b"partial")
    (tmp_path / "other.ova").write_bytes(b"keep")
    storage.remove("p.ova")
    assert sorted(os.listdir(tmp_path)) == ["other.ova"]
    storage.remove("p.ova")  # missing: fine
    for bad in ("../x.ova", "", "a/b.ova", ".."):
        with pytest.raises(ValueError):
            storage.begin(bad)


def test_config_round_trip_and_relative_paths(tmp_path: Path) -> None:
    config = Config(
        storage_roots=(str(tmp_path / "ps"),),
        backup_storages={
            BS: LocalStorageConfig(BS, str(tmp_path / "bs"), "local"),
            SFTP: SftpStorageConfig(SFTP, "h", "/bs", port=2222, key_file="/k"),
        },
        base_url="http://x:8080",
    )
    save_config(tmp_path, config)
    assert oct((tmp_path / "config.json").stat().st_mode & 0o777) == "0o600"
    assert load_config(tmp_path) == config
    (tmp_path / "config.json").write_text(
        json.dumps({"storageRoots": ["vols"], "backupStorages": {BS: {"path": "pk"}}})
    )
    got = load_config(tmp_path)
    assert got.storage_roots == (str(tmp_path / "vols"),)
    assert got.backup_storages[BS] == LocalStorageConfig(BS, str(tmp_path / "pk"))
    assert load_config(tmp_path / "missing") == Config()


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        "[]",
        {"storageRoots": "/x"},
        {"backupStorages": []},
        {"backupStorages": {"nope": {"path": "x"}}},
        {"backupStorages": {BS: {"type": "nfs", "path": "x"}}},
        {"backupStorages": {BS: {"type": "local"}}},
        {"backupStorages": {BS: {"type": "sftp", "path": "/x"}}},
        {"backupStorages": {BS: {"type": "sftp", "path": "/x", "hostname": "h", "port": 0}}},
        {"backupStorages": {BS: {"type": "sftp", "path": "/x", "hostname": "h", "port": True}}},
        {"baseUrl": 5},
    ],
)
def test_bad_config_is_sys_1007(tmp_path: Path, doc: object) -> None:
    (tmp_path / "config.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(InvalidArgumentError):
        load_config(tmp_path)


def test_postponed_removal_is_retried_at_start_up(tmp_path: Path) -> None:
    """A package deleted while its storage is unreachable: the record goes at once, the file
    removal waits in pending_cleanup and happens at the next open once the storage is back."""
    bs_dir = tmp_path / "bs"
    save_config(tmp_path, Config(backup_storages={BS: LocalStorageConfig(BS, str(bs_dir))}))
    with open_context(tmp_path) as ctx:
        inv = ImagePackageInventory(
            "aaaaaaaaaaaa4aaa8aaaaaaaaaaaaaaa", "p", None, "bbbbbbbbbbbb4bbb8bbbbbbbbbbbbbbb",
            BS, ImagePackageState.EXPORTING,
        )
        ctx.records.create_exporting(inv, f"{inv.uuid}.ova")
        ctx.records.mark_exported(inv.uuid, export_url="x", md5_sum="0" * 32, size=4)
        bs_dir.mkdir()
        (bs_dir / f"{inv.uuid}.ova").write_bytes(b"data")
        # The storage becomes unreachable: its folder cannot be created or written.
        os.rename(bs_dir, tmp_path / "bs-away")
        bs_dir.write_bytes(b"not a folder")
        delete_image_package(ctx, inv.uuid)
        assert ctx.records.get(inv.uuid) is None
        assert ctx.records.pending_cleanup() == [(BS, f"{inv.uuid}.ova")]
    bs_dir.unlink()
    os.rename(tmp_path / "bs-away", bs_dir)
    with open_context(tmp_path) as ctx:
        assert ctx.recovery.removed == [(BS, f"{inv.uuid}.ova")]
        assert ctx.records.pending_cleanup() == []
    assert os.listdir(bs_dir) == []


def test_embedded_default_storage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ovfkit.cli import main as cli_main

    with open_context(tmp_path) as ctx:
        (uuid, storage), = ctx.config.backup_storages.items()
        assert storage == LocalStorageConfig(
            uuid, str(tmp_path.resolve() / "packages"), "default local backup storage"
        )
    with open_context(tmp_path) as ctx:  # the same uuid after a restart
        assert list(ctx.config.backup_storages) == [uuid]
    assert cli_main(["vm", "backup-storages", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split()[:2] == [uuid, "local"]
    # A config naming its own storages gets no default added.
    other = tmp_path / "other"
    save_config(other, Config(backup_storages={BS: LocalStorageConfig(BS, str(other / "x"))}))
    with open_context(other) as ctx:
        assert list(ctx.config.backup_storages) == [BS]
