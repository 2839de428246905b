"""The real service for tests: ``ovfkit serve`` (uvicorn) in a subprocess on a free localhost port,
with a temp data folder holding an account, a local backup storage and, on demand, stopped VMs
with small real qcow2 disks made by qemu-img. Always stopped afterwards.

    def test_x(live_server):
        token = live_server.login()
        r = live_server.client.get("/zstack/v1/image-packages", headers=live_server.auth(token))
"""

from __future__ import annotations

import copy
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ovfkit.zstack.auth import AuthStore
from ovfkit.zstack.catalog import FolderCatalog
from ovfkit.zstack.config import Config, LocalStorageConfig, save_config

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_INVENTORY = REPO / "fixtures" / "zstack" / "vm-inventory-example.json"

USER = "admin"
PASSWORD = "s3cret-Pa55"
BS_UUID = "1f2e3d4c5b6a47988a7b6c5d4e3f2a1b"

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _inventory_template() -> dict[str, Any]:
    """A VmInstanceInventory shaped like ZStack's QueryVmInstance reply."""
    doc = json.loads(EXAMPLE_INVENTORY.read_text())
    inv: dict[str, Any] = doc["inventories"][0]
    return inv


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    client: httpx.Client
    vms: list[str] = field(default_factory=list)

    def login(self, user: str = USER, password: str = PASSWORD) -> str:
        from ovfkit.zstack.auth import wire_password

        r = self.client.put(
            "/zstack/v1/accounts/login",
            json={"logInByAccount": {"accountName": user, "password": wire_password(password)}},
        )
        assert r.status_code == 200, r.text
        token: str = r.json()["inventory"]["uuid"]
        return token

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"OAuth {token}"}

    def export(
        self, vm: str, token: str | None = None, *, timeout: float = 60.0, **params: Any
    ) -> httpx.Response:
        """ExportVmOvaPackage of ``vm`` to the test's backup storage, synchronously; logs in
        as the admin unless ``token`` is given; ``params`` add to or replace the request's."""
        session = token if token is not None else self.login()
        return self.client.post(
            "/zstack/v1/ovf/ova-packages",
            headers=self.auth(session),
            json={"params": {"vmUuid": vm, "backupStorageUuid": BS_UUID, **params}},
            timeout=timeout,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def add_vm(
        self,
        name: str = "vm",
        *,
        disks: Sequence[int] = (4 * MiB, 2 * MiB),
        state: str = "Stopped",
    ) -> str:
        """Register a VM whose volumes are fresh qcow2 files with some data; its uuid."""
        return add_vm(self.data_dir, name, disks=disks, state=state)


def setup_data_dir(data_dir: Path) -> None:
    """An account, a storage root and a local backup storage (packages under the folder)."""
    AuthStore(data_dir).create_account(USER, PASSWORD)
    config = Config(
        storage_roots=(str(data_dir / "volumes"),),
        backup_storages={BS_UUID: LocalStorageConfig(BS_UUID, str(data_dir / "bs"), "bs-local")},
    )
    (data_dir / "volumes").mkdir(parents=True, exist_ok=True)
    (data_dir / "bs").mkdir(parents=True, exist_ok=True)
    save_config(data_dir, config)


def _qcow2_with_data(
    path: Path, size: int, seed: int, *, dense: bool = False, fmt: str = "qcow2"
) -> None:
    """A qcow2 (or, ``fmt="raw"``, a raw image) with data at the start, middle and end;
    ``dense``: random data throughout (incompressible, so exporting it takes a while)."""
    raw = path.with_suffix(".raw")
    with open(raw, "wb") as f:
        f.truncate(size)
        if dense:
            for _ in range(size // MiB):
                f.write(os.urandom(MiB))
            f.seek(0)
        f.write(random.Random(seed).randbytes(65536))
        f.seek(size // 2)
        f.write(f"disk {seed} middle ".encode() * 2000)
        f.seek(size - 512)
        f.write(b"last sector".ljust(512, b"\0"))
    if fmt == "raw":
        raw.rename(path)
        return
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)],
        check=True,
        capture_output=True,
    )
    raw.unlink()


def add_vm(
    data_dir: Path,
    name: str = "vm",
    *,
    disks: Sequence[int] = (4 * MiB, 2 * MiB),
    state: str = "Stopped",
    dense: bool = False,
    fmt: str = "qcow2",
) -> str:
    inv = copy.deepcopy(_inventory_template())
    vm_uuid = uuidlib.uuid4().hex
    inv.update(uuid=vm_uuid, name=name, state=state, memorySize=512 * MiB, cpuNum=1)
    template_volumes = inv.get("allVolumes") or [{}]
    volumes = []
    for i, size in enumerate(disks):
        vol = copy.deepcopy(template_volumes[min(i, len(template_volumes) - 1)])
        vol_uuid = uuidlib.uuid4().hex
        path = data_dir / "volumes" / f"{vol_uuid}.{fmt}"
        _qcow2_with_data(path, size, seed=i + 1, dense=dense, fmt=fmt)
        vol.update(
            uuid=vol_uuid,
            vmInstanceUuid=vm_uuid,
            installPath=str(path),
            type="Root" if i == 0 else "Data",
            format=fmt,
            size=size,
            actualSize=path.stat().st_size,
            deviceId=i,
            isShareable=False,
        )
        volumes.append(vol)
    inv["allVolumes"] = volumes
    inv["rootVolumeUuid"] = volumes[0]["uuid"]
    inv["vmCdRoms"] = []  # no ISO files in the tests' storage roots
    for nic in inv.get("vmNics", []):
        nic["vmInstanceUuid"] = vm_uuid
    FolderCatalog(data_dir).add(inv)
    return vm_uuid


@contextmanager
def run_server(
    data_dir: Path,
    *extra_args: str,
    timeout: float = 30.0,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[LiveServer]:
    """``ovfkit serve`` on a free port; waits until it answers, stops it (SIGTERM, then SIGKILL)
    on the way out whatever happens. ``preexec_fn`` runs in the child before it starts (e.g.
    to lower its resource limits)."""
    port = free_port()
    tls = "--ssl-certfile" in extra_args
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    log_path = data_dir.parent / f"serve-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ovfkit", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--data-dir", str(data_dir), "--log-level", "warning", *extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            preexec_fn=preexec_fn,
        )
    verify: Any = True
    if tls:  # trust exactly the test's self-signed certificate
        import ssl

        verify = ssl.create_default_context(
            cafile=extra_args[extra_args.index("--ssl-certfile") + 1]
        )
    client = httpx.Client(base_url=url, timeout=60.0, verify=verify)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ovfkit serve exited early:\n{log_path.read_text()}")
            try:
                if client.get("/zstack/v1/openapi.json").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ovfkit serve did not answer:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield LiveServer(url, data_dir, process, log_path, client)
    finally:
        client.close()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until(
    done: Callable[[], bool], running: Future[httpx.Response], live: LiveServer
) -> None:
    """Bounded wait (60 s) for ``done()`` while the request ``running`` is in flight; fails at
    once if the request answered first (with its answer), or at the deadline (with the log)."""
    deadline = time.monotonic() + 60
    while not done():
        assert not running.done(), running.result().text
        assert time.monotonic() < deadline, live.log()
        time.sleep(0.01)
