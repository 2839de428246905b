"""Many hosts on one machine: real redis-server and PostgreSQL on 127.0.0.1, three
``ovfkit worker`` processes with their own data folders standing for three hosts.

Hosts and what they reach (the same paths for all: one machine, but each worker declares and
is held to its own config):

    host1: primary storage ps1             backup storage A
    host2: ps1 and ps2                     A and B
    host3: ps2                             B

so ps1 -> B can only go to host2, ps1 -> A to host1 or host2, ps2 -> B to host2 or host3.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from server_helpers import PASSWORD, REPO, USER, LiveServer, add_vm, run_server
from services import (
    PostgresServer,
    RedisServer,
    postgres_bin,
    redis_available,
    running_postgres,
    running_redis,
)

import ovfkit
from ovfkit.db import Database, open_database
from ovfkit.db.catalog import DatabaseCatalog
from ovfkit.db.packages import PackageStore
from ovfkit.zstack.config import Config, LocalStorageConfig, save_config
from ovfkit.zstack.inventory import ExportVmOvaPackageRequest, ImagePackageState

if TYPE_CHECKING:
    from ovfkit.cluster.jobs import Job
    from ovfkit.cluster.service import ClusterService

pytest.importorskip("celery")
pytestmark = pytest.mark.skipif(
    not redis_available() or postgres_bin() is None,
    reason="redis-server or PostgreSQL missing (scripts/bootstrap test installs them)",
)

MiB = 1024 * 1024
BS_A = "a0a0a0a0a0a04a0a8a0a0a0a0a0a0a0a"
BS_B = "b0b0b0b0b0b04b0b8b0b0b0b0b0b0b0b"
LEASE = 3.0


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@dataclass
class Site:
    base: Path
    db: Database
    url: str
    broker: str
    workers: dict[str, subprocess.Popen[bytes]]

    def ps(self, n: int) -> Path:
        return self.base / f"ps{n}"

    def bs(self, uuid: str) -> Path:
        return self.base / f"bs-{uuid[:1]}"

    def host_dir(self, name: str) -> Path:
        return self.base / name

    def start_worker(self, name: str, roots: list[Path], storages: list[str]) -> None:
        data = self.host_dir(name)
        save_config(data, Config(
            storage_roots=tuple(str(r) for r in roots),
            backup_storages={u: LocalStorageConfig(u, str(self.bs(u)), f"bs-{u[:1]}")
                             for u in storages},
        ))
        log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "ovfkit", "worker", "--database", self.url, "--broker",
             self.broker, "--data-dir", str(data), "--concurrency", "2", "--name", name,
             "--lease", str(LEASE), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        log.close()

    def wait_workers(self, names: set[str], timeout: float = 60.0) -> None:
        from ovfkit.cluster.jobs import JobStore

        store = JobStore(self.db)
        deadline = time.monotonic() + timeout
        while {w.name for w in store.live_workers(int(LEASE * 1000))} < names:
            for name, proc in self.workers.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited: {self.log(name)}")
            assert time.monotonic() < deadline, "workers did not register"
            time.sleep(0.1)
        time.sleep(1.0)  # Celery's consumer starts after the registration

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text(errors="replace")

    def add_vm(self, ps: int, *, disks: tuple[int, ...] = (2 * MiB,), dense: bool = False) -> str:
        """A VM whose volumes are on primary storage ``ps``; registered in the database."""
        folder = self.base / f"vmdata-{ps}"
        (folder / "volumes").mkdir(parents=True, exist_ok=True)
        vm_uuid = add_vm(folder, disks=disks, dense=dense)
        # add_vm writes the volumes under folder/volumes: move them onto ps<N>.
        inv = json.loads((folder / "vms" / f"{vm_uuid}.json").read_text())
        for vol in inv["allVolumes"]:
            target = self.ps(ps) / Path(vol["installPath"]).name
            os.replace(vol["installPath"], target)
            vol["installPath"] = str(target)
        DatabaseCatalog(self.db).add(inv)
        return vm_uuid


@pytest.fixture
def site(tmp_path: Path, postgres: PostgresServer, redis: RedisServer) -> Iterator[Site]:
    name = f"t{os.getpid()}_{time.monotonic_ns()}"
    url = postgres.create_database(name)
    db = open_database(url)
    for n in (1, 2):
        (tmp_path / f"ps{n}").mkdir()
    for u in (BS_A, BS_B):
        (tmp_path / f"bs-{u[:1]}").mkdir()
    s = Site(tmp_path, db, url, redis.url, {})
    try:
        yield s
    finally:
        for proc in s.workers.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in s.workers.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        db.close()


def _service(site: Site) -> ClusterService:
    from ovfkit.cluster.service import ClusterService
    from ovfkit.cluster.worker import ClusterTimings

    return ClusterService(
        site.db, site.broker, resolver=DatabaseCatalog(site.db),
        timings=ClusterTimings(lease=LEASE),
    )


def _wait_running(site: Site, job_uuid: str, timeout: float = 60.0) -> str:
    from ovfkit.cluster.jobs import JobStore

    store = JobStore(site.db)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_uuid)  # None until an API node's background task submits it
        if job is not None and job.state == "running" and job.worker_name:
            return job.worker_name
        assert job is None or job.state != "done", job.body
        time.sleep(0.02)
    raise AssertionError("the job never ran")


def test_twelve_exports_on_three_hosts_one_worker_killed(site: Site) -> None:
    site.start_worker("host1", [site.ps(1)], [BS_A])
    site.start_worker("host2", [site.ps(1), site.ps(2)], [BS_A, BS_B])
    site.start_worker("host3", [site.ps(2)], [BS_B])
    plan: list[tuple[int, str, set[str]]] = (
        [(1, BS_A, {"host1", "host2"})] * 4 + [(2, BS_B, {"host2", "host3"})] * 4
        + [(1, BS_B, {"host2"})] * 4
    )
    vms = [site.add_vm(ps) for ps, _, _ in plan]
    # The victim: a VM on ps1 only host1 and host2 can read, with a large incompressible disk,
    # so host1 is surely still writing it when killed.
    victim_vm = site.add_vm(1, disks=(32 * MiB,), dense=True)
    site.wait_workers({"host1", "host2", "host3"})
    service = _service(site)
    try:
        # Only host1 runs while the victim is queued, so the victim goes to host1.
        site.workers["host2"].send_signal(signal.SIGSTOP)
        try:
            victim = service.submit(
                ExportVmOvaPackageRequest(vm_uuid=victim_vm, backup_storage_uuid=BS_A), "acct"
            )
            assert _wait_running(site, victim.uuid) == "host1"
            site.workers["host1"].kill()  # kill -9 mid-export
            site.workers["host1"].wait(10)
        finally:
            site.workers["host2"].send_signal(signal.SIGCONT)
        # host1 still counts as live for a lease: ps1 -> A jobs may be queued for it, and are
        # routed again to host2 when its heartbeat is too old.
        jobs = [
            service.submit(ExportVmOvaPackageRequest(vm_uuid=vm, backup_storage_uuid=bs), "acct")
            for vm, (_, bs, _) in zip(vms, plan, strict=True)
        ]
        finished = [service.wait(j.uuid, timeout=120) for j in [victim, *jobs]]
    finally:
        service.close()
    assert all(j is not None and j.done for j in finished), [j and j.body for j in finished]
    by_uuid = {j.uuid: j for j in finished if j is not None}
    # The victim ran twice (host1 killed, then a live worker) and ended once, Exported.
    v = by_uuid[victim.uuid]
    assert v.status == 200, v.body
    assert v.attempts == 2 and v.worker_name in {"host2"}
    for job, (_, _, allowed) in zip(jobs, plan, strict=True):
        done = by_uuid[job.uuid]
        assert done.status == 200, done.body
        assert done.worker_name in allowed
    _check_packages(site, [by_uuid[j.uuid] for j in [victim, *jobs]])
    _nobody_can_take_it(site, host1_vm=site.add_vm(1))


def _nobody_can_take_it(site: Site, host1_vm: str) -> None:
    """host1 is dead; host2 (the other reader of ps1) freezes: a job on ps1 queued for it fails
    with SYS.1006 once host2's heartbeat is too old, and a new one is refused at once."""
    from ovfkit.errors import OperationFailedError

    service = _service(site)
    host2 = site.workers["host2"]
    try:
        host2.send_signal(signal.SIGSTOP)
        try:
            job = service.submit(
                ExportVmOvaPackageRequest(vm_uuid=host1_vm, backup_storage_uuid=BS_A), "acct"
            )
            done = service.wait(job.uuid, timeout=60)
            assert done is not None and done.status == 503, done
            assert done.body is not None and done.body["error"]["code"] == "SYS.1006"
            assert "host3: cannot write backup storage" in done.body["error"]["details"]
            assert PackageStore(site.db).get(job.package_uuid) is None
            with pytest.raises(OperationFailedError, match="no live worker can read"):
                service.submit(
                    ExportVmOvaPackageRequest(vm_uuid=host1_vm, backup_storage_uuid=BS_A), "a"
                )
        finally:
            host2.send_signal(signal.SIGCONT)
    finally:
        service.close()


def _check_packages(site: Site, jobs: list[Job]) -> None:
    """One record per job, Exported, its file complete, valid and the md5 of the record;
    nothing else on the backup storages (no partial file of a killed export)."""
    packages = PackageStore(site.db)
    records = packages.query()
    assert len(records) == len(jobs)
    assert all(r.inventory.state is ImagePackageState.EXPORTED for r in records)
    for job in jobs:
        record = packages.get(job.package_uuid)
        assert record is not None
        path = site.bs(job.backup_storage_uuid) / record.install_path
        report = ovfkit.verify_package(path)
        assert report.ok, report
        assert hashlib.md5(path.read_bytes()).hexdigest() == record.inventory.md5_sum
    files = sorted(p.name for u in (BS_A, BS_B) for p in site.bs(u).iterdir())
    assert files == sorted(f"{j.package_uuid}.ova" for j in jobs)


def test_broker_and_database_restarts_lose_nothing(
    site: Site, postgres: PostgresServer, redis: RedisServer
) -> None:
    site.start_worker("host2", [site.ps(1), site.ps(2)], [BS_A, BS_B])
    slow = site.add_vm(1, disks=(16 * MiB,), dense=True)
    small = [site.add_vm(2) for _ in range(3)]
    site.wait_workers({"host2"})
    service = _service(site)
    try:
        first = service.submit(
            ExportVmOvaPackageRequest(vm_uuid=slow, backup_storage_uuid=BS_A), "acct"
        )
        queued = service.submit(
            ExportVmOvaPackageRequest(vm_uuid=small[0], backup_storage_uuid=BS_B), "acct"
        )
        _wait_running(site, first.uuid)
        postgres.restart()  # mid-export: the lease renewals fail for a moment
        redis.restart()  # a queued message and the running one's unacked copy
        later = [
            service.submit(ExportVmOvaPackageRequest(vm_uuid=vm, backup_storage_uuid=BS_B), "a")
            for vm in small[1:]
        ]
        finished = [service.wait(j.uuid, timeout=120) for j in [first, queued, *later]]
    finally:
        service.close()
    assert all(j is not None and j.status == 200 for j in finished), [
        j and j.body for j in finished
    ]
    _check_packages(site, [j for j in finished if j is not None])


def _api_folder(site: Site, name: str) -> Path:
    """An API node's data folder: it knows both backup storages (for SYS.1003 and downloads)."""
    data = site.base / name
    save_config(data, Config(
        storage_roots=(),
        backup_storages={u: LocalStorageConfig(u, str(site.bs(u)), f"bs-{u[:1]}")
                         for u in (BS_A, BS_B)},
    ))
    return data


def _poll(node: LiveServer, token: str, location: str, timeout: float = 90.0) -> httpx.Response:
    path = "/zstack/v1/api-jobs/" + location.rsplit("/", 1)[1]
    deadline = time.monotonic() + timeout
    while True:
        r = node.client.get(path, headers=node.auth(token))
        if r.status_code != 202:
            return r
        assert time.monotonic() < deadline, "the job never ended"
        time.sleep(0.1)


class _Hooks:
    """A webhook receiver on 127.0.0.1 (the allowed hosts by default): what it was POSTed."""

    def __init__(self) -> None:
        import http.server
        import threading

        received: list[tuple[dict[str, str], bytes]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers.items()), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, job_uuid: str, timeout: float = 60.0) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while not any(h.get("X-Job-UUID") == job_uuid for h, _ in self.received):
            assert time.monotonic() < deadline, f"no webhook for job {job_uuid}"
            time.sleep(0.1)
        return [json.loads(b) for h, b in self.received if h.get("X-Job-UUID") == job_uuid]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_two_api_nodes_share_sessions_jobs_and_packages(site: Site) -> None:
    from ovfkit.cluster.jobs import JobStore
    from ovfkit.zstack.auth import AuthStore

    site.start_worker("host2", [site.ps(1), site.ps(2)], [BS_A, BS_B])
    slow = site.add_vm(1, disks=(32 * MiB,), dense=True)
    quick = site.add_vm(2)
    other = site.add_vm(2)
    site.ps(3).mkdir()
    nowhere = site.add_vm(3)  # no worker reads ps3
    AuthStore(site.base, database=site.db).create_account(USER, PASSWORD)
    args = ("--database", site.url, "--broker", site.broker, "--lease", str(LEASE))
    api1, api2 = _api_folder(site, "api1"), _api_folder(site, "api2")
    site.wait_workers({"host2"})
    hooks = _Hooks()
    with run_server(api2, *args) as node2:
        with run_server(api1, *args) as node1:
            token = node1.login()  # one login, valid on both nodes
            r = node1.client.post(
                "/zstack/v1/ovf/ova-packages",
                headers={**node1.auth(token), "X-Job-Mode": "async", "X-Web-Hook": hooks.url},
                json={"vmUuid": slow, "backupStorageUuid": BS_A},
            )
            assert r.status_code == 202, r.text
            location = r.json()["location"]
            job_uuid = location.rsplit("/", 1)[1]
            _wait_running(site, job_uuid)
            node1.process.kill()  # the API node dies mid-job
            node1.process.wait(10)
            running = JobStore(site.db).get(job_uuid)
            assert running is not None and not running.done
        # The job goes on, and node2 answers its polls.
        answer = _poll(node2, token, location)
        assert answer.status_code == 200, answer.text
        inventory = answer.json()["inventory"]
        assert inventory["vmUuid"] == slow and inventory["state"] == "Exported"
        # node1 took the webhook with it: node2 sends it, the answer the job gives when polled.
        assert hooks.wait_for(job_uuid) == [answer.json()]
        with run_server(api1, *args) as node1:  # node1 back: the same answer
            again = _poll(node1, token, location)
            assert again.status_code == 200 and again.json() == answer.json()
            # A webhook whose node lives is sent by that node, once: node2 leaves it alone.
            r = node1.client.post(
                "/zstack/v1/ovf/ova-packages",
                headers={**node1.auth(token), "X-Job-Mode": "async", "X-Web-Hook": hooks.url},
                json={"vmUuid": other, "backupStorageUuid": BS_B},
            )
            assert r.status_code == 202, r.text
            second = r.json()["location"].rsplit("/", 1)[1]
            [body] = hooks.wait_for(second)
            assert body["inventory"]["vmUuid"] == other
            time.sleep(3 * LEASE)  # past node2's wait for an abandoned webhook (2 leases)
            assert len(hooks.wait_for(second)) == 1 and len(hooks.wait_for(job_uuid)) == 1
            assert JobStore(site.db).get(second).webhook_state == "sent"  # type: ignore[union-attr]
            r = node1.client.post(
                "/zstack/v1/ovf/ova-packages", headers=node1.auth(token),
                json={"vmUuid": quick, "backupStorageUuid": BS_B},
            )
            assert r.status_code == 200, r.text
        # One export per VM, whichever node is asked.
        r = node2.client.post(
            "/zstack/v1/ovf/ova-packages", headers=node2.auth(token),
            json={"vmUuid": quick, "backupStorageUuid": BS_A},
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "SYS.1007", r.text
        assert "already exported" in r.json()["error"]["details"]
        r = node2.client.post(
            "/zstack/v1/ovf/ova-packages", headers=node2.auth(token),
            json={"vmUuid": nowhere, "backupStorageUuid": BS_A},
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "SYS.1006", r.text
        assert "cannot read" in r.json()["error"]["details"]
        listed = node2.client.get("/zstack/v1/image-packages", headers=node2.auth(token))
        assert sorted(i["vmUuid"] for i in listed.json()["inventories"]) == sorted(
            [slow, quick, other]
        )
    hooks.close()
    for inv in listed.json()["inventories"]:
        path = site.bs(inv["backupStorageUuid"]) / f"{inv['uuid']}.ova"
        assert ovfkit.verify_package(path).ok
        assert hashlib.md5(path.read_bytes()).hexdigest() == inv["md5Sum"]
    # Whichever node took the request and whichever worker ran it, the package is the
    # caller's account's and has its download token (the secret of exportUrl).
    from ovfkit.db.packages import PackageStore

    [account] = AuthStore(site.base, database=site.db).list_accounts()
    records = PackageStore(site.db).query()
    assert [(r.account_uuid, bool(r.download_token)) for r in records] == [(account.uuid, True)] * 3
