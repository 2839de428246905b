"""The SFTP backup storage against a real OpenSSH sshd on localhost (tests/sshd.py)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from ovfkit_demo import make_demo_vm, setup_data_dir
from sshd import SshServer, running_sshd, sshd_available

from ovfkit.errors import OperationFailedError
from ovfkit.ova import verify_package
from ovfkit.progress import Progress
from ovfkit.zstack.api import delete_image_package, export_vm_ova_package, query_image_packages
from ovfkit.zstack.config import SftpStorageConfig, load_config, save_config
from ovfkit.zstack.context import ExportContext, open_context
from ovfkit.zstack.storage import open_backup_storage

pytestmark = pytest.mark.skipif(not sshd_available(), reason="openssh-server is not installed")

MiB = 1 << 20
VM = "3c2b1a0f9e8d4c7bb6a5f4e3d2c1b0a9"
SFTP_BS = "9a8b7c6d5e4f4a3b9c2d1e0f9a8b7c6d"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with running_sshd(tmp_path_factory.mktemp("ssh")) as server:
        yield server


def sftp_config(server: SshServer, remote: Path, **kw: object) -> SftpStorageConfig:
    base: dict[str, object] = dict(
        uuid=SFTP_BS,
        hostname=server.host,
        port=server.port,
        username=server.username,
        path=str(remote),
        key_file=str(server.user_key),
        known_hosts_file=str(server.known_hosts),
    )
    base.update(kw)
    return SftpStorageConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def ctx(tmp_path: Path, sshd: SshServer) -> Iterator[ExportContext]:
    data = tmp_path / "data"
    volumes = setup_data_dir(data)
    save_config(
        data, load_config(data).with_backup_storage(sftp_config(sshd, tmp_path / "remote" / "bs"))
    )
    context = open_context(data)
    context.catalog.add(make_demo_vm(volumes, vm_uuid=VM, root_size=3 * MiB, data_size=2 * MiB))
    yield context
    context.close()


def test_capacity_is_read_from_the_server(tmp_path: Path, sshd: SshServer) -> None:
    remote = tmp_path / "cap"
    storage = open_backup_storage(sftp_config(sshd, remote))
    try:
        assert remote.is_dir()  # created on connect
        got = storage.available_capacity()
        st = os.statvfs(remote)
        assert abs(got - st.f_bavail * st.f_frsize) < 256 * MiB
    finally:
        storage.close()


def test_unknown_host_key_is_refused(tmp_path: Path, sshd: SshServer) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(OperationFailedError) as info:
        open_backup_storage(sftp_config(sshd, tmp_path / "x", known_hosts_file=str(empty)))
    assert "127.0.0.1" in info.value.details
    other = tmp_path / "other_key"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {other}")
    with pytest.raises(OperationFailedError):
        open_backup_storage(sftp_config(sshd, tmp_path / "x", key_file=str(other)))


def download(server: SshServer, url: str, dest: Path) -> None:
    prefix = f"sftp://{server.username}@{server.host}:{server.port}"
    assert url.startswith(prefix)
    client = paramiko.SSHClient()
    client.load_host_keys(str(server.known_hosts))
    client.connect(
        server.host, server.port, server.username, key_filename=str(server.user_key),
        look_for_keys=False, allow_agent=False,
    )
    try:
        sftp = client.open_sftp()
        sftp.get(url[len(prefix):], str(dest))
    finally:
        client.close()


def test_export_to_sftp(ctx: ExportContext, sshd: SshServer, tmp_path: Path) -> None:
    remote = tmp_path / "remote" / "bs"
    reply = export_vm_ova_package({"vmUuid": VM, "backupStorageUuid": SFTP_BS}, context=ctx)
    assert reply.success and reply.inventory is not None, reply.error
    inv = reply.inventory
    assert inv.export_url == (
        f"sftp://{sshd.username}@127.0.0.1:{sshd.port}{remote}/{inv.uuid}.ova"
    )
    assert inv.export_url is not None
    assert os.listdir(remote) == [f"{inv.uuid}.ova"]
    assert os.listdir(ctx.spool_dir) == []  # the local spool is gone
    got = tmp_path / "downloaded.ova"
    download(sshd, inv.export_url, got)
    assert got.stat().st_size == inv.size
    assert hashlib.md5(got.read_bytes(), usedforsecurity=False).hexdigest() == inv.md5_sum
    report = verify_package(got)
    assert report.ok, report.problems

    delete_image_package(ctx, inv.uuid)
    assert os.listdir(remote) == []
    assert query_image_packages(ctx) == []
    assert ctx.records.pending_cleanup() == []


def test_cancel_during_upload_rolls_back(ctx: ExportContext, tmp_path: Path) -> None:
    cancel = threading.Event()
    stages: list[str] = []

    def progress(p: Progress) -> None:
        stages.append(p.stage)
        if p.stage.startswith("upload"):
            cancel.set()

    reply = export_vm_ova_package(
        {"vmUuid": VM, "backupStorageUuid": SFTP_BS}, context=ctx, progress=progress,
        cancel=cancel,
    )
    assert reply.error is not None and reply.error["code"] == "SYS.1017", reply.error
    assert any(s.startswith("upload sftp://") for s in stages)
    assert os.listdir(tmp_path / "remote" / "bs") == []
    assert os.listdir(ctx.spool_dir) == []
    assert query_image_packages(ctx) == []


def test_unreachable_storage_fails_before_any_record(ctx: ExportContext, sshd: SshServer) -> None:
    bad = sftp_config(sshd, Path("/nonexistent"), port=1)
    save_config(ctx.data_dir, load_config(ctx.data_dir).with_backup_storage(bad))
    reply = export_vm_ova_package({"vmUuid": VM, "backupStorageUuid": SFTP_BS}, context=ctx)
    assert reply.error is not None and reply.error["code"] == "SYS.1006"
    assert "cannot connect to backup storage" in reply.error["details"]
    assert query_image_packages(ctx) == []


def test_crashed_sftp_export_is_cleaned_at_start_up(ctx: ExportContext, tmp_path: Path) -> None:
    """What a process killed mid-upload leaves: its Exporting row (lock free: the owner is
    gone), the spooled package and the writer's temporary locally, a ``.part`` on the server.
    Opening the context removes all of it, over SFTP for the remote part."""
    from ovfkit.zstack.inventory import ImagePackageInventory, ImagePackageState

    uuid = "eeeeeeeeeeee4eee8eeeeeeeeeeeeeee"
    ctx.records.create_exporting(
        ImagePackageInventory(uuid, "p", None, VM, SFTP_BS, ImagePackageState.EXPORTING),
        f"{uuid}.ova",
    )
    remote = tmp_path / "remote" / "bs"
    remote.mkdir(parents=True, exist_ok=True)
    (remote / f"{uuid}.ova.part").write_bytes(b"half an upload")
    ctx.spool_dir.mkdir(exist_ok=True)
    (ctx.spool_dir / f"{uuid}.ova").write_bytes(b"spooled")
    (ctx.spool_dir / f".{uuid}.ova.x1y2.part").write_bytes(b"writer temp")
    ctx.close()
    with open_context(ctx.data_dir) as again:
        assert again.recovery.rolled_back == [uuid]
        assert again.recovery.removed == [(SFTP_BS, f"{uuid}.ova")]
        assert query_image_packages(again) == []
        assert again.records.pending_cleanup() == []
    assert os.listdir(remote) == []
    assert os.listdir(ctx.spool_dir) == []
