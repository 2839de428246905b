"""The service stopped during an export: SIGTERM (graceful: finish within the grace period or
roll back, answer in ZStack JSON) and SIGKILL (nothing runs; the next start cleans up), at
several points of the export. Whatever the point, after a restart no record is ``Exporting``,
every record left is an ``Exported`` package whose file matches its md5Sum, and nothing else is
in the backup storage or the spool."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_helpers import LiveServer, MiB, add_vm, run_server, setup_data_dir, wait_until

V1 = "/zstack/v1"


def _states(data: Path) -> list[str]:
    with sqlite3.connect(data / "packages.db", timeout=30) as db:
        return [r[0] for r in db.execute("SELECT state FROM image_packages")]


def _part_size(bs: Path) -> int:
    for p in bs.iterdir():
        if p.name.endswith(".part"):
            try:
                return p.stat().st_size
            except FileNotFoundError:
                return 0
    return -1


def _wait_for(point: str, data: Path, full_size: int, running: Future[Any]) -> None:
    """Return once the export is at ``point``: ``record`` (its row exists), ``writing``
    (the partial file has bytes), ``written`` (every byte is in the partial file: the
    whole-package md5 pass and the rename are left). Bounded; a point passed too fast for
    the polling is passed, and the kill lands later: the checks hold wherever it lands."""
    bs = data / "bs"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not running.done():
        if point == "record" and _states(data):
            return
        size = _part_size(bs)
        if point == "writing" and size > 0:
            return
        if point == "written" and size >= full_size:
            return
        if any(p.name.endswith(".ova") for p in bs.iterdir()):
            return  # past every point
        time.sleep(0.002)


def _hold_at_publication(
    data: Path, running: Future[Any], live: LiveServer
) -> sqlite3.Connection:
    """Once the export's record exists, take the write lock of ``packages.db``: the export
    writes the whole package, renames it into place, then waits to mark its record Exported.
    Returns (the lock still held) when the package file is published and the record is
    still ``Exporting``: the point where a kill leaves a complete-looking package that no
    record vouches for."""
    bs = data / "bs"
    wait_until(lambda: bool(_states(data)), running, live)
    held = sqlite3.connect(data / "packages.db", timeout=30, isolation_level=None)
    held.execute("BEGIN IMMEDIATE")
    wait_until(lambda: any(p.suffix == ".ova" for p in bs.iterdir()), running, live)
    assert _states(data) == ["Exporting"]
    return held


def _left_in_order(data: Path) -> None:
    """After a restart: no Exporting record, Exported ones intact, no stray file."""
    bs = data / "bs"
    with run_server(data) as live:
        token = live.login()
        listed = live.client.get(f"{V1}/image-packages", headers=live.auth(token)).json()
        inventories = listed["inventories"]
        assert [i["state"] for i in inventories] == ["Exported"] * len(inventories)
        for inv in inventories:
            body = (bs / f"{inv['uuid']}.ova").read_bytes()
            assert hashlib.md5(body).hexdigest() == inv["md5Sum"]
            assert len(body) == inv["size"]
        assert sorted(p.name for p in bs.iterdir()) == sorted(
            f"{i['uuid']}.ova" for i in inventories
        ), live.log()
        spool = data / "spool"
        assert not spool.exists() or not any(spool.iterdir())
        assert "Traceback" not in live.log(), live.log()


def _group_gone(pgid: int) -> bool:
    """No process of the server's session is left (its export workers included)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def full_size(tmp_path_factory: pytest.TempPathFactory) -> int:
    """The size of the test VM's package, from one export run to its end."""
    data = tmp_path_factory.mktemp("baseline") / "data"
    setup_data_dir(data)
    vm = add_vm(data, "big", disks=(64 * MiB,), dense=True)
    with run_server(data) as live:
        r = live.export(vm, timeout=120)
        assert r.status_code == 200, r.text
        size: int = r.json()["inventory"]["size"]
    return size


@pytest.mark.parametrize(
    ("sig", "point", "grace"),
    [
        (signal.SIGKILL, "record", None),
        (signal.SIGKILL, "writing", None),
        (signal.SIGKILL, "written", None),
        (signal.SIGKILL, "published", None),
        (signal.SIGTERM, "written", "60"),  # finishes within the grace period
        # SIGTERM past the grace period: test_sigterm_during_a_long_synchronous_export...
    ],
)
def test_server_killed_at_a_point_of_an_export(
    tmp_path: Path, full_size: int, sig: signal.Signals, point: str, grace: str | None
) -> None:
    data = tmp_path / "data"
    setup_data_dir(data)
    vm = add_vm(data, "big", disks=(64 * MiB,), dense=True)
    args = ("--shutdown-grace", grace) if grace else ()
    held: sqlite3.Connection | None = None
    with run_server(data, *args, preexec_fn=os.setsid) as live, ThreadPoolExecutor(1) as pool:
        running = pool.submit(live.export, vm, timeout=120)
        if point == "published":
            held = _hold_at_publication(data, running, live)
        else:
            _wait_for(point, data, full_size, running)
        os.killpg(live.process.pid, sig)
        code = live.process.wait(90)
        if held is not None:
            held.execute("ROLLBACK")
            held.close()
        try:
            answer = running.result(90)
        except httpx.TransportError:
            answer = None
        assert _group_gone(live.process.pid), "a process of the killed service is still running"
        log = live.log()
    if sig == signal.SIGTERM:
        assert code in (0, -signal.SIGTERM), log
        assert "Traceback" not in log, log
        # The waiting client got its answer in ZStack JSON, and that answer is the truth.
        assert answer is not None, log
        body = answer.json()
        assert answer.status_code == 200, answer.text
        assert body["inventory"]["state"] == "Exported"
    _left_in_order(data)


def test_sigterm_during_a_long_synchronous_export_answers_json(tmp_path: Path) -> None:
    """The export outlives the grace period: the client gets SYS.1017 in ZStack JSON (not a
    plain-text 500), the record and the partial file are gone before the process exits.

    Deterministic whatever the load: the test holds the write lock of ``packages.db``, so the
    export, once inside the service (its ``locks/<uuid>.lock`` exists), waits at its record's
    insert; the lock is released only once the service has logged that the grace period is
    over, so the export goes on already cancelled and cannot finish."""
    data = tmp_path / "data"
    setup_data_dir(data)
    vm = add_vm(data, "big", disks=(8 * MiB,), dense=True)
    with run_server(data, "--shutdown-grace", "0.1") as live, ThreadPoolExecutor(1) as pool:
        token = live.login()
        held = sqlite3.connect(data / "packages.db", timeout=30, isolation_level=None)
        try:
            held.execute("BEGIN IMMEDIATE")
            running = pool.submit(live.export, vm, token, timeout=120)
            wait_until(lambda: any((data / "locks").glob("*.lock")), running, live)
            live.process.terminate()
            wait_until(lambda: "cancelling 1 export" in live.log(), running, live)
        finally:
            held.execute("ROLLBACK")
            held.close()
        answer = running.result(90)
        assert live.process.wait(90) in (0, -signal.SIGTERM)
        log = live.log()
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["code"] == "SYS.1017" and "grace period" in error["details"], error
    assert error["cause"]["code"] == "SYS.1017"
    assert _states(data) == [], log
    assert sorted(p.name for p in (data / "bs").iterdir()) == [], log
    assert "Traceback" not in log, log
