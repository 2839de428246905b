"""Crash recovery: an exporting process killed with SIGKILL mid-write, then the context reopened.

The child runs a real export whose progress callback, at a chosen stage (the second disk being
compressed, or the whole-package checksum pass before the rename), announces itself and stalls,
so the kill lands while the package file exists but is not finished. After the
kill the record is still ``Exporting`` and a partial file exists; opening the context again must
delete the record and the partial file, and the VM must then export normally.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ovfkit_demo import DEMO_BS_UUID, make_demo_vm, setup_data_dir

from ovfkit.zstack.api import export_vm_ova_package, query_image_packages
from ovfkit.zstack.config import load_config
from ovfkit.zstack.context import open_context
from ovfkit.zstack.inventory import ImagePackageState

MiB = 1 << 20
VM = "3c2b1a0f9e8d4c7bb6a5f4e3d2c1b0a9"

CHILD = """
import sys, time
from pathlib import Path
from ovfkit.zstack.api import export_vm_ova_package
from ovfkit.zstack.context import open_context

data, marker, vm, bs, stage = sys.argv[1:6]

def progress(p):
    if p.stage.startswith(stage):
        Path(marker).write_text(p.stage)
        time.sleep(600)

ctx = open_context(data)
export_vm_ova_package({"vmUuid": vm, "backupStorageUuid": bs}, context=ctx, progress=progress)
"""


def start_child(data: Path, marker: Path, stage: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data), str(marker), VM, DEMO_BS_UUID, stage],
        stderr=subprocess.PIPE,
    )


def wait_for(marker: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors='replace') if proc.stderr else ''
            raise AssertionError(f"child ended early: {err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("child never reached the disk")
        time.sleep(0.05)


@pytest.mark.parametrize("stage", ["disk demo-vm-disk2", "checksum"])
def test_sigkill_mid_write_is_rolled_back_at_start_up(tmp_path: Path, stage: str) -> None:
    data = tmp_path / "data"
    volumes = setup_data_dir(data)
    with open_context(data) as ctx:
        ctx.catalog.add(make_demo_vm(volumes, vm_uuid=VM, root_size=4 * MiB, data_size=2 * MiB))
    packages = Path(load_config(data).backup_storages[DEMO_BS_UUID].path)
    marker = tmp_path / "marker"
    proc = start_child(data, marker, stage)
    try:
        wait_for(marker, proc)
        # Mid-write: the record says Exporting and a partial file lies on the storage.
        with open_context(data, recover=False) as peek:
            records = query_image_packages(peek)
            assert [r.state for r in records] == [ImagePackageState.EXPORTING]
            # Recovery in another process while the exporter lives must not touch it.
            assert peek.recover().rolled_back == []
            assert len(query_image_packages(peek)) == 1
        partial = os.listdir(packages)
        assert partial and all(name.endswith(".part") for name in partial), partial
        if stage == "checksum":  # every member written, the package not yet renamed
            assert any(os.path.getsize(packages / n) > 2 * MiB for n in partial)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    with open_context(data) as ctx:
        assert ctx.recovery.rolled_back == [records[0].uuid]
        assert query_image_packages(ctx) == []
        assert os.listdir(packages) == []
        assert ctx.records.pending_cleanup() == []
        reply = export_vm_ova_package(
            {"vmUuid": VM, "backupStorageUuid": DEMO_BS_UUID}, context=ctx
        )
        assert reply.success, reply.error
    # A second start-up finds nothing more to do.
    with open_context(data) as ctx:
        assert ctx.recovery.rolled_back == []
        assert [r.state for r in query_image_packages(ctx)] == [ImagePackageState.EXPORTED]
