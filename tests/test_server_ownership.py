"""Packages belong to the account that exported them (issue 12, item 9): queries, tag queries,
updates and deletes see only the caller's packages, the admin sees all; exportUrl is a capability
URL whose token, not the listable package uuid, opens it, optionally for a limited time; packages
made before (no owner, old URL form) stay the admin's and stay downloadable."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from server_helpers import LiveServer, MiB, add_vm, run_server, setup_data_dir

from ovfkit.zstack.auth import AuthStore

V1 = "/zstack/v1"
PASSWORD = "other-Pa55word"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("owners") / "data"
    setup_data_dir(folder)  # the admin
    store = AuthStore(folder)
    for name in ("alice", "bob"):
        store.create_account(name, PASSWORD)
    store.close()
    return folder


@pytest.fixture(scope="module")
def live(data: Path) -> Iterator[LiveServer]:
    with run_server(data, "--download-ttl", "3600") as server:
        yield server


def _export(live: LiveServer, token: str, name: str, tag: str) -> dict[str, Any]:
    vm = add_vm(live.data_dir, name, disks=(2 * MiB,))
    r = live.export(vm, token, userTags=[tag])
    assert r.status_code == 200, r.text
    inventory: dict[str, Any] = r.json()["inventory"]
    return inventory


@pytest.fixture(scope="module")
def owned(live: LiveServer) -> dict[str, Any]:
    tokens = {"admin": live.login(), **{n: live.login(n, PASSWORD) for n in ("alice", "bob")}}
    packages = {n: _export(live, tokens[n], f"vm-of-{n}", f"tag-{n}") for n in tokens}
    return {"tokens": tokens, "packages": packages}


def _uuids(live: LiveServer, token: str, path: str = "/image-packages") -> set[str]:
    r = live.client.get(f"{V1}{path}", headers=live.auth(token))
    assert r.status_code == 200, r.text
    return {i["uuid"] for i in r.json()["inventories"]}


def test_each_account_sees_only_its_packages_and_the_admin_all(
    live: LiveServer, owned: dict[str, Any]
) -> None:
    tokens, packages = owned["tokens"], owned["packages"]
    uuid = {n: p["uuid"] for n, p in packages.items()}
    assert _uuids(live, tokens["alice"]) == {uuid["alice"]}
    assert _uuids(live, tokens["bob"]) == {uuid["bob"]}
    assert _uuids(live, tokens["admin"]) >= set(uuid.values())
    # By uuid, by condition, counted: another account's package is not there.
    assert _uuids(live, tokens["bob"], f"/image-packages/{uuid['alice']}") == set()
    assert _uuids(live, tokens["bob"], f"/image-packages?q=uuid={uuid['alice']}") == set()
    r = live.client.get(
        f"{V1}/image-packages", params={"count": "true"}, headers=live.auth(tokens["bob"])
    )
    assert r.json() == {"total": 1}
    # Tags: only those of the caller's packages.
    for kind in ("user-tags", "system-tags"):
        r = live.client.get(f"{V1}/{kind}", headers=live.auth(tokens["bob"]))
        assert {t["resourceUuid"] for t in r.json()["inventories"]} <= {uuid["bob"]}
    r = live.client.get(f"{V1}/user-tags", headers=live.auth(tokens["bob"]))
    assert [t["tag"] for t in r.json()["inventories"]] == ["tag-bob"]
    r = live.client.get(f"{V1}/user-tags", headers=live.auth(tokens["admin"]))
    assert {"tag-alice", "tag-bob"} <= {t["tag"] for t in r.json()["inventories"]}


def test_updates_and_deletes_of_another_accounts_package_are_not_found(
    live: LiveServer, owned: dict[str, Any]
) -> None:
    tokens, alices = owned["tokens"], owned["packages"]["alice"]
    bob = live.auth(tokens["bob"])
    r = live.client.put(
        f"{V1}/image-packages/{alices['uuid']}", headers=bob,
        json={"updateImagePackage": {"name": "stolen"}},
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "SYS.1003", r.text
    r = live.client.delete(f"{V1}/image-packages/{alices['uuid']}", headers=bob)
    assert r.status_code == 503 and r.json()["error"]["code"] == "SYS.1003", r.text
    # Exactly what an unknown uuid gives: nothing tells that the package exists.
    unknown = live.client.delete(f"{V1}/image-packages/{'f' * 32}", headers=bob)
    assert unknown.json()["error"]["details"].replace("f" * 32, alices["uuid"]) == \
        r.json()["error"]["details"]
    listed = live.client.get(
        f"{V1}/image-packages/{alices['uuid']}", headers=live.auth(tokens["alice"])
    ).json()["inventories"]
    assert [(i["name"], i["state"]) for i in listed] == [(alices["name"], "Exported")]
    # The admin may change anyone's.
    r = live.client.put(
        f"{V1}/image-packages/{alices['uuid']}", headers=live.auth(tokens["admin"]),
        json={"updateImagePackage": {"description": "checked by the admin"}},
    )
    assert r.status_code == 200 and r.json()["inventory"]["description"] == "checked by the admin"


def test_exporting_a_vm_another_account_exported_does_not_name_its_package(
    live: LiveServer, owned: dict[str, Any]
) -> None:
    tokens, alices = owned["tokens"], owned["packages"]["alice"]
    r = live.export(alices["vmUuid"], tokens["bob"])
    assert r.status_code == 503 and r.json()["error"]["code"] == "SYS.1007", r.text
    details = r.json()["error"]["details"]
    assert alices["vmUuid"] in details and "another account" in details
    assert alices["uuid"] not in details
    # Its owner is told which package holds the VM.
    r = live.export(alices["vmUuid"], tokens["alice"])
    assert r.status_code == 503 and alices["uuid"] in r.json()["error"]["details"], r.text


def test_export_url_is_a_capability_url_not_the_uuid(
    live: LiveServer, owned: dict[str, Any]
) -> None:
    package = owned["packages"]["bob"]
    url, uuid = package["exportUrl"], package["uuid"]
    m = re.fullmatch(re.escape(live.url) + r"/ova-packages/([\w-]{43})/" + uuid + r"\.ova", url)
    assert m, url
    token = m.group(1)
    body = live.client.get(url).content  # no session
    assert hashlib.md5(body).hexdigest() == package["md5Sum"]
    # The uuid alone, the old URL form, a wrong token, another package's token: not found.
    other = owned["packages"]["alice"]["exportUrl"].split("/")[-2]
    wrong = ("A" if token[0] != "A" else "B") + token[1:]
    for path in (f"/ova-packages/{uuid}.ova", f"/ova-packages/{wrong}/{uuid}.ova",
                 f"/ova-packages/{other}/{uuid}.ova", f"/ova-packages/{uuid}/{uuid}.ova"):
        r = live.client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "SYS.1003", path
    assert "token" in live.client.get(f"/ova-packages/{uuid}.ova").json()["error"]["details"]
    # The token is nowhere but in exportUrl, and only the owner and the admin see that.
    for who in ("alice",):
        r = live.client.get(f"{V1}/image-packages", headers=live.auth(owned["tokens"][who]))
        assert token not in r.text


def test_download_url_expires_and_an_update_renews_it(
    live: LiveServer, owned: dict[str, Any], data: Path
) -> None:
    package = owned["packages"]["alice"]
    assert live.client.get(package["exportUrl"]).status_code == 200
    # Exported (or last updated) two hours ago: past --download-ttl 3600.
    with sqlite3.connect(data / "packages.db", timeout=30) as db:
        db.execute("UPDATE image_packages SET last_op_date = last_op_date - 7200000 "
                   "WHERE uuid = ?", (package["uuid"],))
    db.close()
    r = live.client.get(package["exportUrl"])
    assert r.status_code == 404 and "expired" in r.json()["error"]["details"], r.text
    r = live.client.put(
        f"{V1}/image-packages/{package['uuid']}", headers=live.auth(owned["tokens"]["alice"]),
        json={"updateImagePackage": {}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["inventory"]["exportUrl"] == package["exportUrl"]
    assert live.client.get(package["exportUrl"]).status_code == 200


def test_packages_made_before_owners_and_tokens_keep_working(tmp_path: Path) -> None:
    """A data folder of the version before (schema 0002: no owner, exportUrl by uuid) is
    migrated at start: its package is the admin's, gets a token, and downloads by its new
    exportUrl; the old URL is refused with a hint."""
    data = tmp_path / "data"
    setup_data_dir(data)
    AuthStore(data).create_account("alice", PASSWORD)
    vm = add_vm(data, "old", disks=(2 * MiB,))
    with run_server(data) as live:
        before = live.export(vm).json()["inventory"]
    base = before["exportUrl"].split("/ova-packages/")[0]
    old_url = f"{base}/ova-packages/{before['uuid']}.ova"
    with sqlite3.connect(data / "packages.db", timeout=30) as db:  # back to revision 0002
        db.execute("DROP INDEX image_packages_account")
        db.execute("ALTER TABLE image_packages DROP COLUMN account_uuid")
        db.execute("ALTER TABLE image_packages DROP COLUMN download_token")
        db.execute("UPDATE image_packages SET export_url = ?", (old_url,))
        db.execute("UPDATE alembic_version SET version_num = '0002'")
    db.close()
    with run_server(data) as live:
        admin = live.login()
        listed = live.client.get(f"{V1}/image-packages", headers=live.auth(admin)).json()
        [after] = listed["inventories"]
        assert after["uuid"] == before["uuid"] and after["md5Sum"] == before["md5Sum"]
        assert after["exportUrl"] != old_url
        assert re.fullmatch(
            re.escape(f"{base}/ova-packages/") + r"[\w-]{43}/" + before["uuid"] + r"\.ova",
            after["exportUrl"],
        )
        # (this run listens on another port than the first: fetch the URLs' paths)
        body = live.client.get(urlsplit(after["exportUrl"]).path).content
        assert hashlib.md5(body).hexdigest() == before["md5Sum"]
        assert live.client.get(urlsplit(old_url).path).status_code == 404
        alice = live.login("alice", PASSWORD)
        assert _uuids(live, alice) == set()
        # The operator gives the old packages to the account that made them.
        cli = [sys.executable, "-m", "ovfkit", "account", "adopt", "--data-dir", str(data)]
        refused = subprocess.run([*cli, "alice"], capture_output=True, text=True)
        assert refused.returncode != 0 and "--ownerless" in refused.stderr, refused.stderr
        unknown = subprocess.run([*cli, "alice", "--package", "f" * 32], capture_output=True,
                                 text=True)  # fmt: skip
        assert unknown.returncode != 0 and "f" * 32 in unknown.stderr, unknown.stderr
        given = subprocess.run([*cli, "alice", "--ownerless"], capture_output=True, text=True)
        assert given.returncode == 0 and given.stdout.split() == [before["uuid"]], given.stderr
        assert _uuids(live, alice) == {before["uuid"]} == _uuids(live, admin)
        again = subprocess.run([*cli, "alice", "--ownerless"], capture_output=True, text=True)
        assert again.returncode == 0 and again.stdout == ""  # none left without an owner
