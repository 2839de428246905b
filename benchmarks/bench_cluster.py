"""Many hosts: exports per minute with 1 and 3 ``ovfkit worker`` processes, and the cost of
queueing one job (API node -> Redis -> worker -> PostgreSQL -> API node) against calling
:func:`ovfkit.export_vm_ova_package` directly.

Real redis-server and PostgreSQL are started in temp folders on 127.0.0.1 (the tests' helpers,
``tests/services.py``); small VMs (``--disk-mib`` MiB qcow2 disks, two per VM) are made with
qemu-img. All workers reach the same storage, so the jobs spread over them.

    .venv/bin/python -m benchmarks.bench_cluster [--vms 24] [--disk-mib 8] [--overhead-runs 10]

Baselines named in the output: 1 worker (for 3 workers' throughput) and the direct call (for
the queueing overhead, measured on a 1 MiB VM so the export itself is small).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import Report

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from server_helpers import add_vm  # type: ignore[import-not-found]  # noqa: E402
from services import running_postgres, running_redis  # type: ignore[import-not-found]  # noqa: E402

from ovfkit.db import open_database  # noqa: E402
from ovfkit.db.catalog import DatabaseCatalog  # noqa: E402
from ovfkit.zstack.catalog import FolderCatalog  # noqa: E402
from ovfkit.zstack.config import Config, LocalStorageConfig, save_config  # noqa: E402
from ovfkit.zstack.inventory import ExportVmOvaPackageRequest  # noqa: E402

BS = "be0c4a7e6f8d4b1a9c3e2f1a0b9c8d7e"
MiB = 1024 * 1024


def _workers(n: int, base: Path, url: str, broker: str) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        data = base / f"host{i}"
        save_config(data, Config(
            storage_roots=(str(base / "vmdata" / "volumes"),),
            backup_storages={BS: LocalStorageConfig(BS, str(base / "bs"), "bs")},
        ))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ovfkit", "worker", "--database", url, "--broker", broker,
             "--data-dir", str(data), "--concurrency", "2", "--name", f"host{i}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
        ))
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    from ovfkit.cluster.jobs import JobStore
    from ovfkit.cluster.service import ClusterService
    from ovfkit.zstack.api import export_vm_ova_package
    from ovfkit.zstack.context import open_context

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=24)
    parser.add_argument("--disk-mib", type=int, default=8)
    parser.add_argument("--overhead-runs", type=int, default=10)
    args = parser.parse_args()
    report = Report("bench_cluster")
    report.info["load_start"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp, running_postgres() as pg, \
            running_redis(Path(tmp)) as redis:
        base = Path(tmp)
        (base / "vmdata" / "volumes").mkdir(parents=True)
        (base / "bs").mkdir()
        rates: dict[int, float] = {}
        for n in (1, 3):
            url = pg.create_database(f"bench{n}")
            db = open_database(url)
            catalog = DatabaseCatalog(db)
            vms = []
            for _ in range(args.vms):
                vm = add_vm(base / "vmdata", disks=(args.disk_mib * MiB,) * 2)
                catalog.add((base / "vmdata" / "vms" / f"{vm}.json").read_text())
                vms.append(vm)
            procs = _workers(n, base, url, redis.url)
            store = JobStore(db)
            deadline = time.monotonic() + 120
            while len(store.live_workers(60_000)) < n and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)  # Celery consumers start after registering
            service = ClusterService(db, redis.url, resolver=catalog)
            cpu_before = _children_cpu()
            try:
                start = time.monotonic()
                jobs = [service.submit(ExportVmOvaPackageRequest(vm_uuid=v, backup_storage_uuid=BS),
                                       "bench") for v in vms]
                done = [service.wait(j.uuid, timeout=600) for j in jobs]
                seconds = time.monotonic() - start
                assert all(d is not None and d.status == 200 for d in done), "an export failed"
            finally:
                service.close()
                _stop(procs)
                db.close()
            cpu = _children_cpu() - cpu_before  # the workers and their qemu-img, once reaped
            rates[n] = args.vms / seconds * 60
            report.add(f"{n} worker(s), 2 threads each", rates[n], "exports/min",
                       f"{args.vms} VMs x 2 x {args.disk_mib} MiB, {seconds:.1f} s")
            report.add(f"{n} worker(s): CPU per export", cpu / args.vms * 1000, "ms",
                       "user+system of the worker processes (incl. start-up)")
        report.ratio("3 workers vs 1", rates[3], rates[1], "baseline: 1 worker, same run")

        # Queueing overhead: one small VM exported again and again, one job at a time.
        url = pg.create_database("overhead")
        db = open_database(url)
        catalog = DatabaseCatalog(db)
        small = base / "direct"  # the data folder of the direct calls
        save_config(small, Config(storage_roots=(str(base / "vmdata" / "volumes"),),
                                  backup_storages={BS: LocalStorageConfig(BS, str(base / "bs"))}))
        vm = add_vm(base / "vmdata", disks=(1 * MiB,))
        inventory = (base / "vmdata" / "vms" / f"{vm}.json").read_text()
        catalog.add(inventory)
        FolderCatalog(small).add(inventory)
        direct: list[float] = []
        with open_context(small) as ctx:
            for _ in range(args.overhead_runs):
                t = time.monotonic()
                reply = export_vm_ova_package({"vmUuid": vm, "backupStorageUuid": BS},
                                              context=ctx)
                direct.append(time.monotonic() - t)
                assert reply.success and reply.inventory is not None, reply.error
                from ovfkit.zstack.api import delete_image_package

                delete_image_package(ctx, reply.inventory.uuid)
        procs = _workers(1, base, url, redis.url)
        store = JobStore(db)
        deadline = time.monotonic() + 120
        while not store.live_workers(60_000) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        service = ClusterService(db, redis.url, resolver=catalog)
        queued: list[float] = []
        try:
            for _ in range(args.overhead_runs):
                t = time.monotonic()
                job = service.submit(ExportVmOvaPackageRequest(vm_uuid=vm, backup_storage_uuid=BS),
                                     "bench")
                finished = service.wait(job.uuid, timeout=120)
                queued.append(time.monotonic() - t)
                assert finished is not None and finished.status == 200, finished
                store.packages.delete(job.package_uuid)
        finally:
            service.close()
            _stop(procs)
            db.close()
        d, q = statistics.median(direct), statistics.median(queued)
        report.add("direct call, 1 MiB VM (median)", d * 1000, "ms")
        report.add("queued job, 1 MiB VM (median)", q * 1000, "ms")
        report.add("queueing overhead per job", (q - d) * 1000, "ms",
                   "baseline: the direct call, same VM, same run")
    report.info["load_end"] = os.getloadavg()[0]
    report.emit()


if __name__ == "__main__":
    main()
