"""Package records in SQLite: life cycle, the vmUuid constraint, q= queries, restart, locks."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ovfkit.errors import InvalidArgumentError
from ovfkit.zstack.inventory import (
    ImagePackageInventory,
    ImagePackageState,
    new_zstack_uuid,
    parse_condition,
)
from ovfkit.zstack.records import (
    DuplicateUuidError,
    DuplicateVmError,
    ExportLock,
    PackageRecords,
)

BS = "22f7145dba4f3da6af7ff8f0e02af6e3"


def exporting(
    vm: str | None = None, name: str = "pkg", uuid: str | None = None
) -> ImagePackageInventory:
    return ImagePackageInventory(
        uuid=uuid or new_zstack_uuid(),
        name=name,
        description=None,
        vm_uuid=vm or new_zstack_uuid(),
        backup_storage_uuid=BS,
        state=ImagePackageState.EXPORTING,
    )


def add_exported(db: PackageRecords, name: str, size: int) -> ImagePackageInventory:
    inv = exporting(name=name)
    db.create_exporting(inv, f"{inv.uuid}.ova")
    db.mark_exported(inv.uuid, export_url=f"file:///x/{inv.uuid}.ova", md5_sum="0" * 32, size=size)
    rec = db.get(inv.uuid)
    assert rec is not None
    return rec.inventory


def test_life_cycle_and_restart(tmp_path: Path) -> None:
    db = PackageRecords(tmp_path)
    inv = exporting(name="first")
    db.create_exporting(inv, f"{inv.uuid}.ova")
    rec = db.get(inv.uuid)
    assert rec is not None and rec.inventory.state is ImagePackageState.EXPORTING
    assert rec.inventory.create_date is not None and rec.inventory.size is None
    db.mark_exported(inv.uuid, export_url="file:///a.ova", md5_sum="a" * 32, size=1234)
    db.close()

    again = PackageRecords(tmp_path)
    rec = again.get(inv.uuid)
    assert rec is not None
    got = rec.inventory
    assert got.state is ImagePackageState.EXPORTED
    assert (got.export_url, got.md5_sum, got.size) == ("file:///a.ova", "a" * 32, 1234)
    assert got.last_op_date is not None and got.create_date is not None
    assert got.last_op_date >= got.create_date
    assert rec.install_path == f"{inv.uuid}.ova"
    # WAL mode, as documented.
    mode = sqlite3.connect(tmp_path / "packages.db").execute("PRAGMA journal_mode").fetchone()
    assert mode[0] == "wal"
    again.close()


def test_vm_uuid_is_unique_in_the_database(tmp_path: Path) -> None:
    db = PackageRecords(tmp_path)
    first = exporting()
    db.create_exporting(first, "a.ova")
    with pytest.raises(DuplicateVmError) as info:
        db.create_exporting(exporting(vm=first.vm_uuid), "b.ova")
    assert info.value.code == "SYS.1007"
    assert first.uuid in info.value.details and first.vm_uuid in info.value.details
    # The constraint holds for any writer of the file, not only through this class.
    raw = sqlite3.connect(tmp_path / "packages.db")
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute(
            "INSERT INTO image_packages (uuid, name, vm_uuid, backup_storage_uuid, state, "
            "create_date, last_op_date, install_path) VALUES (?,?,?,?,?,?,?,?)",
            (new_zstack_uuid(), "x", first.vm_uuid, BS, "Exported", 0, 0, "x.ova"),
        )
    raw.close()
    with pytest.raises(DuplicateUuidError):
        db.create_exporting(exporting(uuid=first.uuid), "c.ova")


def test_many_threads_race_for_one_vm(tmp_path: Path) -> None:
    db = PackageRecords(tmp_path)
    vm = new_zstack_uuid()
    barrier = threading.Barrier(8)
    wins: list[str] = []
    losses: list[str] = []

    def attempt() -> None:
        inv = exporting(vm=vm)
        barrier.wait()
        try:
            db.create_exporting(inv, f"{inv.uuid}.ova")
            wins.append(inv.uuid)
        except DuplicateVmError as exc:
            losses.append(exc.code)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and losses == ["SYS.1007"] * 7
    db.close()


def test_delete_queues_cleanup(tmp_path: Path) -> None:
    db = PackageRecords(tmp_path)
    inv = add_exported(db, "x", 1)
    assert db.delete(inv.uuid, only_exporting=True) is None  # Exported: untouched
    deleted = db.delete(inv.uuid)
    assert deleted is not None and deleted.inventory.uuid == inv.uuid
    assert db.get(inv.uuid) is None
    assert db.pending_cleanup() == [(BS, f"{inv.uuid}.ova")]
    db.cleanup_done(BS, f"{inv.uuid}.ova")
    assert db.pending_cleanup() == []
    # The VM can be exported again once its package is gone.
    db.create_exporting(exporting(vm=inv.vm_uuid), "again.ova")


def test_update(tmp_path: Path) -> None:
    db = PackageRecords(tmp_path)
    inv = add_exported(db, "old", 5)
    rec = db.update(inv.uuid, name="new", description="d")
    assert rec is not None
    assert (rec.inventory.name, rec.inventory.description) == ("new", "d")
    rec = db.update(inv.uuid, description="e")
    assert rec is not None and (rec.inventory.name, rec.inventory.description) == ("new", "e")


def test_query_conditions(tmp_path: Path) -> None:
    db = PackageRecords(tmp_path)
    a = add_exported(db, "web-a", 100)
    b = add_exported(db, "web-b", 200)
    c = add_exported(db, "db-c", 300)
    running = exporting(name="web-running")
    db.create_exporting(running, "r.ova")

    def q(*conds: str) -> set[str]:
        return {r.inventory.name for r in db.query([parse_condition(x) for x in conds])}

    assert q() == {"web-a", "web-b", "db-c", "web-running"}
    assert q("name=web-a") == {"web-a"}
    assert q("name!=web-a") == {"web-b", "db-c", "web-running"}
    assert q("name~=web%") == {"web-a", "web-b", "web-running"}
    assert q("name!~=web%") == {"db-c"}
    assert q("size>100") == {"web-b", "db-c"}
    assert q("size>=200", "size<=200") == {"web-b"}
    assert q("size<300", "name~=web%") == {"web-a", "web-b"}
    assert q(f"uuid?={a.uuid},{c.uuid}") == {"web-a", "db-c"}
    assert q(f"uuid!?={a.uuid},{c.uuid}") == {"web-b", "web-running"}
    assert q("state=Exporting") == {"web-running"}
    assert q("size=null") == {"web-running"}
    assert q("size!=null") == {"web-a", "web-b", "db-c"}
    assert q(f"vmUuid={b.vm_uuid}") == {"web-b"}
    assert b.create_date is not None
    assert "web-b" in q(f"createDate>={(b.create_date).isoformat()}")
    assert q("createDate>2999-01-01T00:00:00") == set()
    assert q("createDate<Jan 1, 2000 12:00:00 AM") == set()
    assert db.count([parse_condition("name~=web%")]) == 3 and db.count([]) == 4
    # Paging and sorting.
    names = [r.inventory.name for r in db.query([], sort_by="size", sort_direction="desc")]
    assert names[:3] == ["db-c", "web-b", "web-a"]
    page = db.query([], sort_by="name", limit=2, start=1)
    assert [r.inventory.name for r in page] == ["web-a", "web-b"]
    with pytest.raises(InvalidArgumentError):
        db.query([parse_condition("size>big")])
    with pytest.raises(InvalidArgumentError):
        db.query([parse_condition("createDate>yesterday")])
    with pytest.raises(InvalidArgumentError):
        db.query([], sort_by="nosuch")
    with pytest.raises(InvalidArgumentError):
        db.query([], sort_by="name", sort_direction="sideways")


def test_query_values_are_bound_not_spliced(tmp_path: Path) -> None:
    db = PackageRecords(tmp_path)
    add_exported(db, "a", 1)
    evil = "x' OR '1'='1"
    assert db.query([parse_condition(f"name={evil}")]) == []
    assert len(db.query([])) == 1


def test_stale_export_is_found_only_when_its_owner_is_gone(tmp_path: Path) -> None:
    db = PackageRecords(tmp_path)
    live = exporting(name="live")
    lock = ExportLock.try_acquire(db.lock_path(live.uuid))
    assert lock is not None
    db.create_exporting(live, "live.ova")
    # A lock held in this very process (another open file description) counts as live.
    assert db.stale_exports() == []

    # A process that takes the lock, inserts its row and dies by SIGKILL.
    dead = exporting(name="dead")
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from ovfkit.zstack.records import PackageRecords, ExportLock\n"
        "from ovfkit.zstack.inventory import ImagePackageInventory, ImagePackageState\n"
        f"db = PackageRecords(Path({str(tmp_path)!r}))\n"
        f"lock = ExportLock.try_acquire(db.lock_path({dead.uuid!r}))\n"
        f"db.create_exporting(ImagePackageInventory({dead.uuid!r}, 'dead', None, "
        f"{dead.vm_uuid!r}, {BS!r}, ImagePackageState.EXPORTING), 'dead.ova')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    stale = db.stale_exports()
    assert [r.inventory.uuid for r, _ in stale] == [dead.uuid]
    for _, held in stale:
        held.release()
    lock.release()
    assert not db.lock_path(live.uuid).exists()
    db.close()
