"""``ovfkit serve`` exporting a raw volume that is truncated mid-export (issue 11): the export
ends with SYS.1016 and leaves nothing, and the server lives on and exports the next VM. Before
the disk workers, the writer mapped the volume and the truncation killed the whole server with
SIGBUS (exit 135), and with it every export in flight."""

from __future__ import annotations

import copy
import hashlib
import os
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from conftest import MiB, random_bytes, text_like
from server_helpers import BS_UUID, LiveServer, add_vm, run_server, setup_data_dir

from ovfkit.zstack.catalog import FolderCatalog

V1 = "/zstack/v1"


def _export(live: LiveServer, vm: str) -> httpx.Response:
    token = live.login()
    return live.client.post(
        f"{V1}/ovf/ova-packages",
        headers=live.auth(token),
        json={"params": {"vmUuid": vm, "backupStorageUuid": BS_UUID}},
        timeout=120,
    )


def _raw_vm(data: Path) -> tuple[str, Path]:
    """A VM whose one volume is a raw file of 64 MiB of data (16 batches of the writer)."""
    vm = add_vm(data, "raw-vm", disks=(MiB,))
    catalog = FolderCatalog(data)
    inv: dict[str, Any] = copy.deepcopy(dict(catalog(vm) or {}))
    raw = data / "volumes" / f"{inv['allVolumes'][0]['uuid']}.raw"
    with raw.open("wb") as f:
        for k in range(32):
            f.write(random_bytes(MiB, seed=k) if k % 3 == 0 else text_like(MiB, seed=k))
            f.write(random_bytes(MiB, seed=200 + k))
    Path(inv["allVolumes"][0]["installPath"]).unlink()
    inv["allVolumes"][0].update(
        installPath=str(raw), format="raw", size=raw.stat().st_size,
        actualSize=raw.stat().st_size,
    )  # fmt: skip
    catalog.add(inv)
    return vm, raw


def _workers_of(pid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"ovfkit.vmdk.worker" in (d / "cmdline").read_bytes():
                found.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _truncate_when_reading(server_pid: int, raw: Path, running: Any) -> bool:
    """Once the server's first disk worker exists (it has not read a batch yet: it is still
    starting), stop it, truncate the volume to 4 MiB, let it go on. Bounded."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not running.done():
        workers = _workers_of(server_pid)
        if workers:
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
            try:
                os.truncate(raw, 4 * MiB)
            finally:
                for pid in workers:
                    os.kill(pid, signal.SIGCONT)
            return True
        time.sleep(0.002)
    return False


def test_serve_survives_a_raw_volume_truncated_mid_export(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup_data_dir(data)
    vm, raw = _raw_vm(data)
    other = add_vm(data, "next-vm", disks=(2 * MiB,))
    bs = data / "bs"
    with run_server(data) as live, ThreadPoolExecutor(1) as pool:
        running = pool.submit(_export, live, vm)
        assert _truncate_when_reading(live.process.pid, raw, running)
        r = running.result(timeout=120)
        assert r.status_code >= 400, r.text
        error = r.json()["error"]
        assert error["code"] == "SYS.1016", error
        assert "truncated" in error["details"], error
        assert live.process.poll() is None, live.log()  # the server is alive
        assert [p.name for p in bs.iterdir()] == []  # no package, no .part file
        with sqlite3.connect(data / "packages.db", timeout=30) as db:
            states = [row[0] for row in db.execute("SELECT state FROM image_packages")]
        assert "Exporting" not in states
        # It goes on serving: the next export works and its package is whole.
        r = _export(live, other)
        assert r.status_code == 200, r.text
        inv = r.json()["inventory"]
        body = (bs / f"{inv['uuid']}.ova").read_bytes()
        assert hashlib.md5(body).hexdigest() == inv["md5Sum"]
        assert live.process.poll() is None
    assert live.process.returncode != -signal.SIGBUS
