"""The SQLAlchemy layer: Alembic migrations (fresh, and data folders made by the sqlite3 code
before it), the one-package-per-VM constraint across connections of different processes, and
the schema the code uses against the one the migrations make, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import PostgresServer, postgres_bin, running_postgres
from sqlalchemy import inspect

from ovfkit.db import HEAD_REVISION, open_database, sqlite_url
from ovfkit.db.packages import DuplicateUuidError, DuplicateVmError, PackageStore
from ovfkit.errors import InvalidArgumentError, OvfkitIOError
from ovfkit.zstack.auth import InvalidSessionError
from ovfkit.zstack.inventory import (
    ImagePackageInventory,
    ImagePackageState,
    new_zstack_uuid,
    parse_condition,
)

BS = "22f7145dba4f3da6af7ff8f0e02af6e3"

# What ovfkit's records.py and auth.py created before the SQLAlchemy layer (copied as they were).
_OLD_PACKAGES = """
CREATE TABLE IF NOT EXISTS image_packages (
    uuid TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT,
    vm_uuid TEXT NOT NULL UNIQUE, backup_storage_uuid TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('Exporting', 'Exported')),
    export_url TEXT, md5_sum TEXT, format TEXT NOT NULL DEFAULT 'OVA', size INTEGER,
    create_date INTEGER NOT NULL, last_op_date INTEGER NOT NULL, install_path TEXT NOT NULL,
    owner_pid INTEGER
);
CREATE TABLE IF NOT EXISTS pending_cleanup (
    backup_storage_uuid TEXT NOT NULL, install_path TEXT NOT NULL, queued REAL NOT NULL,
    PRIMARY KEY (backup_storage_uuid, install_path)
);
"""


def exporting(vm: str | None = None, uuid: str | None = None) -> ImagePackageInventory:
    return ImagePackageInventory(
        uuid=uuid or new_zstack_uuid(), name="pkg", description=None,
        vm_uuid=vm or new_zstack_uuid(), backup_storage_uuid=BS,
        state=ImagePackageState.EXPORTING,
    )


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL missing (scripts/bootstrap test installs it)")
    pytest.importorskip("psycopg")
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "records.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"db_{tmp_path.name[-20:].lower()}")


def test_old_sqlite_folder_is_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "packages.db"
    with sqlite3.connect(path) as old:
        old.executescript(_OLD_PACKAGES)
        old.execute(
            "INSERT INTO image_packages VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            ("a" * 32, "old", None, "b" * 32, BS, "Exported", "http://x/a.ova", "c" * 32,
             "OVA", 4096, 1_650_000_000_000, 1_650_000_000_000, "a.ova", None),
        )
    old.close()
    db = open_database(sqlite_url(path))
    try:
        assert db.revision() == HEAD_REVISION
        record = PackageStore(db).get("a" * 32)
        assert record is not None and record.inventory.size == 4096
        assert record.inventory.state is ImagePackageState.EXPORTED
        with db.connect() as conn:
            assert inspect(conn).has_table("export_jobs")
    finally:
        db.close()


def test_schema_of_migrations_matches_the_code(url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from ovfkit.db.schema import metadata

    db = open_database(url)
    try:
        with db.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []
        again = open_database(url)  # a second opening changes nothing
        assert again.revision() == HEAD_REVISION
        again.close()
    finally:
        db.close()


def test_records_life_cycle_and_queries(url: str) -> None:
    db = open_database(url)
    store = PackageStore(db)
    try:
        sizes = {"a": 10, "b": 200, "c": 3000}
        for name, size in sizes.items():
            inv = exporting()
            store.create_exporting(inv, f"{inv.uuid}.ova")
            store.mark_exported(inv.uuid, export_url=f"file:///{name}", md5_sum="0" * 32,
                                size=size)
            store.update(inv.uuid, name=name)
        assert [r.inventory.name for r in store.query(sort_by="size", sort_direction="desc")] \
            == ["c", "b", "a"]
        assert store.count([parse_condition("size>100")]) == 2
        assert [r.inventory.name for r in store.query([parse_condition("name?=a,c")],
                                                      sort_by="name")] == ["a", "c"]
        assert store.count([parse_condition("description=null")]) == 3
        assert store.count([parse_condition("description is null")]) == 3
        assert store.count([parse_condition("exportUrl not null")]) == 3
        tagged = exporting()
        store.create_exporting(tagged, f"{tagged.uuid}.ova", user_tags=["web"],
                               system_tags=["bootMode::UEFI"])
        assert [r.inventory.uuid for r in store.query([parse_condition("__userTag__=web")])] \
            == [tagged.uuid]
        assert store.count([parse_condition("__systemTag__~=bootMode::%")]) == 1
        assert store.count([parse_condition("__userTag__!=web")]) == 3
        assert store.count([parse_condition("__userTag__ is null")]) == 3
        assert {t.tag for t in store.tags_of(tagged.uuid)} == {"web", "bootMode::UEFI"}
        assert store.count([], group_by="state") == 2
        grouped = store.query([], group_by="state", sort_by="size", sort_direction="desc")
        assert [r.inventory.state.value for r in grouped] == ["Exported", "Exporting"]
        assert grouped[0].inventory.size == 3000
        store.delete(tagged.uuid)
        assert store.tags_of(tagged.uuid) == []
        store.cleanup_done(BS, f"{tagged.uuid}.ova")
        assert len(store.query(limit=1, start=1)) == 1
        with pytest.raises(InvalidArgumentError):
            store.query(sort_by="nope")
        victim = store.query([parse_condition("name=b")])[0]
        deleted = store.delete(victim.inventory.uuid)
        assert deleted is not None
        assert store.pending_cleanup() == [(BS, deleted.install_path)]
        store.cleanup_done(BS, deleted.install_path)
        assert store.pending_cleanup() == []
        dup = exporting(uuid=store.query()[0].inventory.uuid)
        with pytest.raises(DuplicateUuidError):
            store.create_exporting(dup, "x.ova")
    finally:
        db.close()


def test_one_export_per_vm_whichever_connection_asks(url: str) -> None:
    """Eight "nodes" (each its own engine) race for one VM: the database lets one win."""
    vm = new_zstack_uuid()
    nodes = [open_database(url) for _ in range(8)]
    won: list[str] = []
    lost: list[str] = []
    barrier = threading.Barrier(len(nodes))

    def race(db_index: int) -> None:
        inv = exporting(vm=vm)
        barrier.wait(10)
        try:
            PackageStore(nodes[db_index]).create_exporting(inv, f"{inv.uuid}.ova")
            won.append(inv.uuid)
        except DuplicateVmError as exc:
            lost.append(exc.details)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert len(won) == 1 and len(lost) == 7
        assert all(won[0] in text for text in lost)
    finally:
        for db in nodes:
            db.close()


def test_unreachable_database_is_an_io_error(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(OvfkitIOError, match="database postgresql"):
        open_database("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(InvalidArgumentError):
        open_database("mysql://x@y/z")


def test_old_auth_sqlite_keeps_its_accounts_and_sessions(tmp_path: Path) -> None:
    """auth.sqlite as the sqlite3 code made it (same columns): the account logs in after the
    migration, with the password it had, and its old session is still valid."""
    from ovfkit.zstack.auth import AuthStore, _stretch, wire_password

    salt = b"s" * 16
    with sqlite3.connect(tmp_path / "auth.sqlite") as old:
        old.executescript(
            "CREATE TABLE accounts (uuid TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
            "salt BLOB NOT NULL, hash BLOB NOT NULL, create_date REAL NOT NULL);"
            "CREATE TABLE sessions (uuid TEXT PRIMARY KEY, account_uuid TEXT NOT NULL "
            "REFERENCES accounts(uuid) ON DELETE CASCADE, create_date REAL NOT NULL, "
            "expired_date REAL NOT NULL);"
            "CREATE INDEX sessions_expiry ON sessions(expired_date);"
        )
        old.execute("INSERT INTO accounts VALUES (?,?,?,?,?)",
                    ("c" * 32, "admin", salt, _stretch(wire_password("pw"), salt), 1.0))
        old.execute("INSERT INTO sessions VALUES (?,?,?,?)", ("d" * 32, "c" * 32, 1.0, 4e9))
    old.close()
    store = AuthStore(tmp_path)
    try:
        assert [a.name for a in store.list_accounts()] == ["admin"]
        assert store.validate("d" * 32).account_uuid == "c" * 32
        assert store.login("admin", "pw").account_uuid == "c" * 32
        store.remove_account("admin")  # its sessions go with it
        with pytest.raises(InvalidSessionError):
            store.validate("d" * 32)
    finally:
        store.close()


def test_a_worker_is_live_by_its_own_lease_not_the_readers(tmp_path: Path) -> None:
    """A worker beats every third of its own --lease: a node with a shorter --lease must not
    take it for dead between beats, nor one with a longer lease keep it alive past its own."""
    from ovfkit.cluster.jobs import JobStore
    from ovfkit.cluster.routing import Reach, WorkerInfo
    from ovfkit.db.schema import cluster_workers

    db = open_database(sqlite_url(tmp_path / "jobs.db"))
    store = JobStore(db)
    slow = WorkerInfo("a" * 32, "slow", Reach.of(["/ps"], ["bs"]), 2, lease_ms=300_000)
    fast = WorkerInfo("b" * 32, "fast", Reach.of(["/ps"], ["bs"]), 2, lease_ms=5_000)
    old = WorkerInfo("c" * 32, "old", Reach.of(["/ps"], ["bs"]), 2)  # a row from before 0004
    for info in (slow, fast, old):
        store.register_worker(info)
    # Last heard of 90 s ago: within the slow worker's 300 s lease, past the fast one's 5 s.
    with db.begin() as conn:
        conn.execute(
            cluster_workers.update().values(heartbeat=cluster_workers.c.heartbeat - 90_000)
        )
    assert [w.name for w in store.live_workers(60_000)] == ["slow"]
    assert store.live_workers(60_000)[0] == slow
    # Without a lease of its own, a row is judged by the reader's: live for a 120 s reader.
    assert [w.name for w in store.live_workers(120_000)] == ["old", "slow"]
    db.close()


def test_a_jobs_webhook_is_claimed_by_one_node_and_taken_over_when_its_claim_ends(
    tmp_path: Path,
) -> None:
    from ovfkit.cluster.jobs import JobStore
    from ovfkit.db.schema import export_jobs

    db = open_database(sqlite_url(tmp_path / "jobs.db"))
    store = JobStore(db)
    hook, plain = new_zstack_uuid(), new_zstack_uuid()
    for uuid, url in ((hook, "http://127.0.0.1:9/hook"), (plain, None)):
        store.submit(uuid, "acct", exporting(), "x.ova", {}, {}, "q", webhook=url)
    assert store.claim_webhook(hook, 60_000) is False  # not done yet: nothing to send
    with db.begin() as conn:  # both done just now
        conn.execute(export_jobs.update().values(state="done", status=200))
    # Another node's reaper leaves a fresh one to the node that took the request.
    assert store.pending_webhooks(5_000) == [] and store.pending_webhooks(0) == [hook]
    assert store.claim_webhook(hook, 60_000, unclaimed_for_ms=5_000) is False
    with db.begin() as conn:  # done long ago
        conn.execute(export_jobs.update().values(updated=1))
    assert store.get(hook).webhook_state == "pending"  # type: ignore[union-attr]
    assert store.get(plain).webhook_state is None  # type: ignore[union-attr]
    assert store.pending_webhooks(5_000) == [hook]
    assert store.claim_webhook(hook, 60_000) is True  # the node that took the request
    assert store.claim_webhook(hook, 60_000, unclaimed_for_ms=5_000) is False  # another node
    assert store.pending_webhooks(5_000) == []  # held
    with db.begin() as conn:  # its holder died: the claim ran out
        conn.execute(export_jobs.update().values(webhook_until=2))
    assert store.pending_webhooks(5_000) == [hook]
    assert store.claim_webhook(hook, 60_000, unclaimed_for_ms=5_000) is True
    store.webhook_done(hook, sent=True)
    assert store.get(hook).webhook_state == "sent"  # type: ignore[union-attr]
    assert store.pending_webhooks(0) == [] and store.claim_webhook(hook, 60_000) is False
    assert store.claim_webhook(plain, 60_000) is False  # no webhook kept
    db.close()


def test_packages_are_given_to_an_account(tmp_path: Path) -> None:
    """``PackageStore.give``: named packages whoever owns them, and every ownerless one; an
    unknown uuid changes nothing. The CLI does the same on a shared database (--database)."""
    import subprocess
    import sys

    from ovfkit.errors import NotFoundError
    from ovfkit.zstack.auth import AuthStore

    url = sqlite_url(tmp_path / "shared.db")
    db = open_database(url)
    store = PackageStore(db)
    mine, theirs, old = exporting(), exporting(), exporting()
    store.create_exporting(mine, "a.ova", account_uuid="a" * 32)
    store.create_exporting(theirs, "b.ova", account_uuid="b" * 32)
    store.create_exporting(old, "c.ova")  # made before packages had owners
    with pytest.raises(NotFoundError, match="f" * 32):
        store.give("c" * 32, packages=[theirs.uuid, "f" * 32])
    assert store.get(theirs.uuid).account_uuid == "b" * 32  # type: ignore[union-attr]
    assert store.give("c" * 32, packages=[theirs.uuid]) == [theirs.uuid]
    account = AuthStore(tmp_path, database=db).create_account("carol", "Carol-pa55word")
    run = subprocess.run(
        [sys.executable, "-m", "ovfkit", "account", "adopt", "carol", "--ownerless",
         "--database", url, "--data-dir", str(tmp_path / "unused")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.split() == [old.uuid], run.stderr
    owners = {u: store.get(u).account_uuid for u in (mine.uuid, theirs.uuid, old.uuid)}  # type: ignore[union-attr]
    assert owners == {mine.uuid: "a" * 32, theirs.uuid: "c" * 32, old.uuid: account.uuid}
    assert not (tmp_path / "unused").exists()  # a shared database needs no data folder
    db.close()
