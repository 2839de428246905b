"""A source volume that fails under an export running inside ``ovfkit serve`` (issue 12, item
1): the service survives, the other exports go on, the failed one answers a clean ZStack error,
and no record is stuck and no temporary file is left."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from server_helpers import LiveServer, MiB, add_vm, run_server, setup_data_dir, wait_until

V1 = "/zstack/v1"
VICTIM = "0123456789ab4cde8f0123456789abcd"  # the failing export's package uuid


def _victim_part(bs: Path) -> int:
    """Bytes in the victim's partial package (``.<uuid>.ova.*.part``), -1 while there is none."""
    for p in bs.glob(f".{VICTIM}.ova.*.part"):
        try:
            return p.stat().st_size
        except FileNotFoundError:
            return -1
    return -1


def _after_the_failure(live: LiveServer, token: str, failed: httpx.Response,
                       done: httpx.Response) -> None:
    data = live.data_dir
    assert live.process.poll() is None, live.log()  # the service is alive
    assert failed.status_code == 503, failed.text
    assert failed.headers["content-type"] == "application/json"
    error = failed.json()["error"]
    assert error["code"] == "SYS.1016" and "truncated" in error["details"], error

    assert done.status_code == 200, done.text  # the export beside it went on
    package = done.json()["inventory"]
    body = (data / "bs" / f"{package['uuid']}.ova").read_bytes()
    assert hashlib.md5(body).hexdigest() == package["md5Sum"]

    # No record stuck, no partial file: only the other VM's package.
    listed = live.client.get(f"{V1}/image-packages", headers=live.auth(token)).json()
    assert [(i["uuid"], i["state"]) for i in listed["inventories"]] == [
        (package["uuid"], "Exported")
    ]
    assert sorted(p.name for p in (data / "bs").iterdir()) == [f"{package['uuid']}.ova"]
    # And it goes on serving exports.
    again = live.export(add_vm(data, "after", disks=(2 * MiB,)), token)
    assert again.status_code == 200, again.text
    assert "Traceback" not in live.log(), live.log()


def test_raw_volume_truncated_while_it_is_read(tmp_path: Path) -> None:
    """The victim's raw disk loses all but its first MiB while its package is being written.
    The cut is made with the whole service stopped (SIGSTOP of its process group, workers
    included) once the partial package exists, and only if less than a quarter of the disk
    is written by then (the readers run at most a few batches ahead): the rest is then read
    from the cut file. A try whose stop came too late is run again, at most three times."""
    capacity = 64 * MiB
    for attempt in range(3):
        data = tmp_path / f"data{attempt}"
        setup_data_dir(data)
        victim = add_vm(data, "victim", disks=(capacity,), dense=True, fmt="raw")
        [volume] = (data / "volumes").glob("*.raw")
        other = add_vm(data, "other", disks=(16 * MiB,), dense=True)
        with run_server(data, preexec_fn=os.setsid) as live, ThreadPoolExecutor(2) as pool:
            token = live.login()
            going = pool.submit(live.export, other, token, timeout=120)
            failing = pool.submit(live.export, victim, token, timeout=120, resourceUuid=VICTIM)
            bs = data / "bs"
            wait_until(lambda bs=bs: _victim_part(bs) > 0, failing, live)
            os.killpg(live.process.pid, signal.SIGSTOP)
            try:
                written = _victim_part(bs)
                cut = 0 < written < capacity // 4
                if cut:
                    os.truncate(volume, 1 * MiB)
            finally:
                os.killpg(live.process.pid, signal.SIGCONT)
            failed, done = failing.result(120), going.result(120)
            if cut:
                _after_the_failure(live, token, failed, done)
                return
    raise AssertionError(f"the service was stopped too late three times (last: {written} B)")


def test_raw_volume_truncated_before_it_is_read(tmp_path: Path) -> None:
    """The disk is cut after the request's checks measured it, before the package is written
    (the test holds the records' write lock meanwhile: the export waits at its record): the
    writer's own capacity check refuses it, SYS.1007, and the export beside it goes on."""
    data = tmp_path / "data"
    setup_data_dir(data)
    victim = add_vm(data, "victim", disks=(8 * MiB,), fmt="raw")
    [volume] = (data / "volumes").glob("*.raw")
    other = add_vm(data, "other", disks=(4 * MiB, 2 * MiB))
    locks = data / "locks"
    with run_server(data) as live, ThreadPoolExecutor(2) as pool:
        token = live.login()
        held = sqlite3.connect(data / "packages.db", timeout=30, isolation_level=None)
        try:
            held.execute("BEGIN IMMEDIATE")
            failing = pool.submit(live.export, victim, token, timeout=120)
            wait_until(lambda: len(list(locks.glob("*.lock"))) == 1, failing, live)
            going = pool.submit(live.export, other, token, timeout=120)
            wait_until(lambda: len(list(locks.glob("*.lock"))) == 2, going, live)
            os.truncate(volume, 1 * MiB)  # both exports now wait at their records' insert
        finally:
            held.execute("ROLLBACK")
            held.close()
        failed, done = failing.result(120), going.result(120)
        assert failed.status_code == 503, failed.text
        error = failed.json()["error"]
        assert error["code"] == "SYS.1007" and volume.name in error["details"], error
        assert done.status_code == 200, done.text
        listed = live.client.get(f"{V1}/image-packages", headers=live.auth(token)).json()
        assert [i["state"] for i in listed["inventories"]] == ["Exported"]
        assert [p.suffix for p in (data / "bs").iterdir()] == [".ova"]
        assert live.process.poll() is None
