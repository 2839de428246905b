"""The HTTP service end to end: ``ovfkit serve`` in a subprocess, real HTTP on localhost, real
exports of VMs with small qcow2 disks, packages checked with Python's tarfile, hashlib and
qemu-img (readers nobody here wrote) and with ``ovfkit verify``."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hostile.corpus import NUMBER_CASES
from server_helpers import BS_UUID, PASSWORD, USER, LiveServer, run_server, setup_data_dir

from ovfkit.zstack.auth import AuthStore, wire_password

V1 = "/zstack/v1"
MISSING_UUID = "9f1c2b3a4d5e4f60a1b2c3d4e5f60718"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("serve") / "data"
    setup_data_dir(data)
    with run_server(data) as live:
        yield live
        assert "Traceback" not in live.log(), live.log()


@pytest.fixture(scope="module")
def token(server: LiveServer) -> str:
    return server.login()


@pytest.fixture(scope="module")
def exported(server: LiveServer, token: str) -> dict[str, Any]:
    """One VM exported through the synchronous form; its inventory."""
    vm = server.add_vm("exported-once")
    r = server.client.post(
        f"{V1}/ovf/ova-packages",
        headers=server.auth(token),
        json={"params": {"vmUuid": vm, "backupStorageUuid": BS_UUID, "name": "pkg-one"}},
    )
    assert r.status_code == 200, r.text
    inv: dict[str, Any] = r.json()["inventory"]
    return inv


def error_of(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert err["code"] == code, err
    assert err["description"] and err["details"]
    assert "Traceback" not in err["details"]
    return err


# -- login / sessions -------------------------------------------------------------------------


def test_login_returns_zstack_session_inventory(server: LiveServer) -> None:
    r = server.client.put(
        f"{V1}/accounts/login",
        json={"logInByAccount": {"accountName": USER, "password": wire_password(PASSWORD)}},
    )
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    assert set(inv) == {"uuid", "accountUuid", "userUuid", "expiredDate", "createDate"}
    assert re.fullmatch(r"[0-9a-f]{32}", inv["uuid"])
    date = r"[A-Z][a-z]{2} \d{1,2}, \d{4} \d{1,2}:\d{2}:\d{2} [AP]M"
    assert re.fullmatch(date, inv["expiredDate"]) and re.fullmatch(date, inv["createDate"])
    ok = server.client.get(f"{V1}/image-packages", headers=server.auth(inv["uuid"]))
    assert ok.status_code == 200


def test_login_as_zstack_java_sdk_sends_it(server: LiveServer) -> None:
    """ZStack's SDK wraps every field of the action, tags included, in the message object."""
    r = server.client.put(
        f"{V1}/accounts/login",
        json={"logInByAccount": {"accountName": USER, "password": wire_password(PASSWORD),
                                 "systemTags": [], "userTags": []}},
    )
    assert r.status_code == 200, r.text


def test_login_accepts_plain_password_and_zstack_extras(server: LiveServer) -> None:
    r = server.client.put(
        f"{V1}/accounts/login",
        json={
            "logInByAccount": {"accountName": USER, "password": PASSWORD, "accountType": "Normal",
                               "clientInfo": {"browser": "curl"}},
            "systemTags": [],
        },
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("name", "password"), [(USER, "wrong"), ("nobody", PASSWORD), (USER, wire_password("x"))]
)
def test_login_bad_credentials_401(server: LiveServer, name: str, password: str) -> None:
    r = server.client.put(
        f"{V1}/accounts/login",
        json={"logInByAccount": {"accountName": name, "password": password}},
    )
    err = error_of(r, 401, "ID.1000")
    assert err["details"] == "wrong account name or password"
    assert r.headers["www-authenticate"].startswith("OAuth")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "logInByAccount"),
        ({"logInByAccount": {"accountName": USER}}, "password"),
        ({"logInByAccount": {"accountName": 1, "password": "x"}}, "must be a string"),
        ({"logInByAccount": "admin"}, "must be a JSON object"),
        ({"logInByAccount": {"accountName": USER, "password": "x"}, "systemTags": "t"}, "list"),
    ],
)
def test_login_malformed_400(server: LiveServer, body: dict[str, Any], fragment: str) -> None:
    r = server.client.put(f"{V1}/accounts/login", json=body)
    err = error_of(r, 400, "SYS.1007")
    assert fragment in err["details"]


def test_logout_ends_session(server: LiveServer) -> None:
    token = server.login()
    h = server.auth(token)
    assert server.client.get(f"{V1}/image-packages", headers=h).status_code == 200
    r = server.client.delete(f"{V1}/accounts/sessions/{token}")
    assert r.status_code == 200 and r.json() == {}
    error_of(server.client.get(f"{V1}/image-packages", headers=h), 401, "ID.1001")
    # Logging out twice is not an error (ZStack's behaviour).
    assert server.client.delete(f"{V1}/accounts/sessions/{token}").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "OAuth"},
        {"Authorization": "OAuth 0123456789abcdef0123456789abcdef"},
        {"Authorization": "OAuth a b"},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"{V1}/image-packages"),
        ("GET", f"{V1}/image-packages/{MISSING_UUID}"),
        ("PUT", f"{V1}/image-packages/{MISSING_UUID}"),
        ("DELETE", f"{V1}/image-packages/{MISSING_UUID}"),
        ("POST", f"{V1}/ovf/ova-packages"),
        ("POST", f"{V1}/ovf/parse"),
        ("GET", f"{V1}/api-jobs/{MISSING_UUID}"),
    ],
)
def test_every_api_needs_a_session(
    server: LiveServer, headers: dict[str, str], method: str, path: str
) -> None:
    r = server.client.request(method, path, headers=headers, json={"params": {}})
    err = error_of(r, 401, "ID.1001")
    assert err["details"] == "Session expired"  # ZStack's Session.checkSessionExpired
    assert r.headers["www-authenticate"].startswith("OAuth")


@pytest.mark.parametrize(
    ("headers", "text"),
    [
        ({}, "missing header 'Authorization'"),
        ({"Authorization": "Bearer 0123456789abcdef0123456789abcdef"},
         "Authorization type must be 'OAuth'"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", f"{V1}/image-packages"), ("POST", f"{V1}/ovf/ova-packages"),
     ("PUT", f"{V1}/accounts/sessions/{MISSING_UUID}/renew"), ("GET", f"{V1}/user-tags")],
)
def test_missing_or_foreign_authorization_is_restservers_plain_400(
    server: LiveServer, headers: dict[str, str], text: str, method: str, path: str
) -> None:
    """RestServer.handleApi answers these before any API runs, in plain text."""
    r = server.client.request(method, path, headers=headers, json={"params": {}})
    assert r.status_code == 400 and r.text == text
    assert r.headers["content-type"].startswith("text/plain")


def test_session_expires(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup_data_dir(data)
    with run_server(data, "--session-ttl", "1") as live:
        token = live.login()
        assert live.client.get(f"{V1}/image-packages", headers=live.auth(token)).status_code == 200
        time.sleep(1.2)
        r = live.client.get(f"{V1}/image-packages", headers=live.auth(token))
        err = error_of(r, 401, "ID.1001")
        assert "expired" in err["details"]


# -- export (synchronous) ---------------------------------------------------------------------


def test_reference_page_curl_example_unchanged(server: LiveServer, token: str) -> None:
    """The reference page's curl command, only its placeholders filled in."""
    if shutil.which("curl") is None:
        pytest.skip("curl (Debian package curl) is not installed")
    vm = server.add_vm("curl-vm")
    resource = "5a4b3c2d1e0f4a1b8c2d3e4f5a6b7c8d"
    host = server.url.removeprefix("http://")
    body = (
        '{"name":"<name>","description":"<description>","vmUuid":"<vmUuid>",'
        '"backupStorageUuid":"<backupStorageUuid>","resourceUuid":"<resourceUuid>",'
        '"tagUuids":["<tagUuids>"],"systemTags":["<systemTags>"],"userTags":["<userTags>"]}'
    )
    for key, value in {
        "name": "ova", "description": "description", "vmUuid": vm,
        "backupStorageUuid": BS_UUID, "resourceUuid": resource,
        "tagUuids": "8f1e2d3c4b5a46978a1b2c3d4e5f6a7b", "systemTags": "bootMode::Legacy",
        "userTags": "u",
    }.items():
        body = body.replace(f"<{key}>", value)
    out = subprocess.run(
        ["curl", "-sS", "-X", "POST", f"http://{host}/zstack/v1/ovf/ova-packages",
         "-H", f"Authorization: OAuth {token}",
         "-H", "Content-Type: application/json;charset=UTF-8", "-d", body,
         "-w", "\n%{http_code}"],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    text, status = out.rsplit("\n", 1)
    assert status == "200", text
    inv = json.loads(text)["inventory"]
    assert inv["uuid"] == resource
    assert inv["name"] == "ova" and inv["description"] == "description"
    assert inv["vmUuid"] == vm and inv["backupStorageUuid"] == BS_UUID
    assert inv["state"] == "Exported" and inv["format"] == "OVA"
    assert isinstance(inv["size"], int) and inv["size"] > 0
    assert re.fullmatch(r"[0-9a-f]{32}", inv["md5Sum"])
    assert re.fullmatch(
        re.escape(f"{server.url}/ova-packages/") + rf"[\w-]{{43}}/{resource}\.ova", inv["exportUrl"]
    ), inv["exportUrl"]


def test_export_defaults_and_shape(exported: dict[str, Any], server: LiveServer) -> None:
    assert set(exported) == {
        "uuid", "name", "description", "vmUuid", "backupStorageUuid", "state", "exportUrl",
        "md5Sum", "format", "size", "createDate", "lastOpDate",
    }
    assert exported["name"] == "pkg-one"
    assert exported["description"] == f"source vm uuid: {exported['vmUuid']}"
    pkg = server.data_dir / "bs"
    assert [p.name for p in pkg.iterdir() if p.name.startswith(exported["uuid"])] == [
        f"{exported['uuid']}.ova"
    ]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"vmUuid": 5, "backupStorageUuid": BS_UUID}, "vmUuid"),
        ({"params": {"vmUuid": ["x"], "backupStorageUuid": BS_UUID}}, "vmUuid"),
        ({"params": "x"}, "params"),
        ({"vmUuid": "x", "backupStorageUuid": BS_UUID, "systemTags": "a"}, "systemTags"),
        ({"vmUuid": "x", "backupStorageUuid": BS_UUID, "tagUuids": [1]}, "tagUuids"),
    ],
)
def test_export_malformed_400(
    server: LiveServer, token: str, body: dict[str, Any], fragment: str
) -> None:
    r = server.client.post(f"{V1}/ovf/ova-packages", headers=server.auth(token), json=body)
    err = error_of(r, 400, "SYS.1007")
    assert fragment in err["details"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, not array"),
        (b"null", "not null"),
        (b'{"vmUuid": NaN}', "NaN"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[" * 100_000, "JSON"),
    ],
)
def test_unreadable_bodies_400(
    server: LiveServer, token: str, content: bytes, fragment: str
) -> None:
    r = server.client.post(f"{V1}/ovf/ova-packages", headers=server.auth(token), content=content)
    err = error_of(r, 400, "SYS.1007")
    assert fragment in err["details"]


def test_oversized_body_400(server: LiveServer, token: str) -> None:
    big = json.dumps({"vmUuid": "x", "description": "d" * (1024 * 1024)}).encode()
    r = server.client.post(f"{V1}/ovf/ova-packages", headers=server.auth(token), content=big)
    assert "over the limit" in error_of(r, 400, "SYS.1007")["details"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'{"description": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    r = server.client.post(f"{V1}/ovf/ova-packages", headers=server.auth(token), content=chunks())
    assert "over the limit" in error_of(r, 400, "SYS.1007")["details"]


def test_export_api_errors_are_503_with_zstack_codes(
    server: LiveServer, token: str, exported: dict[str, Any]
) -> None:
    h = server.auth(token)

    def post(params: dict[str, Any]) -> httpx.Response:
        return server.client.post(f"{V1}/ovf/ova-packages", headers=h, json={"params": params})

    vm = server.add_vm("errors-vm")
    err = error_of(post({"backupStorageUuid": BS_UUID}), 503, "SYS.1007")
    assert "field[vmUuid]" in err["details"] and "mandatory" in err["details"]
    err = error_of(post({"vmUuid": vm}), 503, "SYS.1007")
    assert "backupStorageUuid" in err["details"]
    err = error_of(post({"vmUuid": MISSING_UUID, "backupStorageUuid": BS_UUID}), 503, "SYS.1003")
    assert "VmInstanceVO" in err["details"]
    err = error_of(post({"vmUuid": vm, "backupStorageUuid": MISSING_UUID}), 503, "SYS.1003")
    assert "BackupStorageVO" in err["details"]
    error_of(
        post({"vmUuid": vm, "backupStorageUuid": BS_UUID, "resourceUuid": "not-a-uuid"}),
        503, "SYS.1007",
    )
    error_of(post({"vmUuid": vm, "backupStorageUuid": BS_UUID, "name": "n" * 256}), 503, "SYS.1007")
    running = server.add_vm("running-vm", state="Running")
    err = error_of(post({"vmUuid": running, "backupStorageUuid": BS_UUID}), 503, "SYS.1007")
    assert "Stopped" in err["details"]
    again = post({"vmUuid": exported["vmUuid"], "backupStorageUuid": BS_UUID})
    err = error_of(again, 503, "SYS.1007")
    assert exported["uuid"] in err["details"] and "already exported" in err["details"]


# -- export (job form) ------------------------------------------------------------------------


def _poll(server: LiveServer, token: str, location: str) -> httpx.Response:
    deadline = time.monotonic() + 120
    while True:
        r = server.client.get(location, headers=server.auth(token))
        if r.status_code != 202:
            return r
        assert r.json() == {}
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.05)


def test_job_form_success(server: LiveServer, token: str) -> None:
    vm = server.add_vm("job-vm", disks=(48 * 1024 * 1024,))
    r = server.client.post(
        f"{V1}/ovf/ova-packages",
        headers={**server.auth(token), "X-Job-Mode": "async"},
        json={"params": {"vmUuid": vm, "backupStorageUuid": BS_UUID}},
    )
    assert r.status_code == 202, r.text
    location = r.json()["location"]
    assert re.fullmatch(rf"{server.url}/zstack/v1/api-jobs/[0-9a-f]{{32}}", location)
    # While the job runs, the service keeps answering, and the record shows Exporting.
    first = server.client.get(location, headers=server.auth(token))
    listed = server.client.get(
        f"{V1}/image-packages", params={"q": f"vmUuid={vm}"}, headers=server.auth(token)
    )
    assert listed.status_code == 200
    if first.status_code == 202:
        assert first.json() == {}
    done = _poll(server, token, location)
    assert done.status_code == 200, done.text
    inv = done.json()["inventory"]
    assert inv["vmUuid"] == vm and inv["state"] == "Exported"
    # The result stays readable.
    assert server.client.get(location, headers=server.auth(token)).json() == done.json()


def test_job_form_failure_and_unknown_jobs(server: LiveServer, token: str) -> None:
    r = server.client.post(
        f"{V1}/ovf/ova-packages",
        headers={**server.auth(token), "X-Job-Mode": "async"},
        json={"params": {"vmUuid": MISSING_UUID, "backupStorageUuid": BS_UUID}},
    )
    assert r.status_code == 202
    location = r.json()["location"]
    error_of(_poll(server, token, location), 503, "SYS.1003")
    # Another account cannot see the job; an unknown job is 404.
    AuthStore(server.data_dir).create_account("other", "pw")
    other = server.login("other", "pw")
    error_of(server.client.get(location, headers=server.auth(other)), 404, "SYS.1003")
    error_of(
        server.client.get(f"{V1}/api-jobs/{MISSING_UUID}", headers=server.auth(token)),
        404, "SYS.1003",
    )


def test_job_mode_header_checked(server: LiveServer, token: str) -> None:
    r = server.client.post(
        f"{V1}/ovf/ova-packages",
        headers={**server.auth(token), "X-Job-Mode": "later"},
        json={"params": {"vmUuid": MISSING_UUID, "backupStorageUuid": BS_UUID}},
    )
    assert "X-Job-Mode" in error_of(r, 400, "SYS.1007")["details"]


# -- query ------------------------------------------------------------------------------------


def _query(server: LiveServer, token: str, *q: str, **params: str) -> httpx.Response:
    items = httpx.QueryParams(tuple([("q", c) for c in q] + list(params.items())))
    return server.client.get(f"{V1}/image-packages", params=items, headers=server.auth(token))


def test_query_filters(server: LiveServer, token: str, exported: dict[str, Any]) -> None:
    def uuids(r: httpx.Response) -> set[str]:
        assert r.status_code == 200, r.text
        return {inv["uuid"] for inv in r.json()["inventories"]}

    me = exported["uuid"]
    assert me in uuids(_query(server, token))
    assert uuids(_query(server, token, "name=pkg-one")) == {me}
    assert uuids(_query(server, token, "name~=pkg-o%")) == {me}
    assert me not in uuids(_query(server, token, "name!=pkg-one"))
    assert uuids(_query(server, token, f"uuid?={me},{MISSING_UUID}")) == {me}
    assert me in uuids(_query(server, token, f"size>{exported['size'] - 1}", "state=Exported"))
    assert me not in uuids(_query(server, token, f"size>{exported['size']}"))
    assert uuids(_query(server, token, "name=pkg-one", "state=Exporting")) == set()
    assert uuids(_query(server, token, f"vmUuid={exported['vmUuid']}")) == {me}


def test_query_paging_sorting_counting(
    server: LiveServer, token: str, exported: dict[str, Any]
) -> None:
    everything = _query(server, token, sortBy="name", sortDirection="desc").json()["inventories"]
    names = [inv["name"] for inv in everything]
    assert names == sorted(names, reverse=True)
    page = _query(server, token, sortBy="name", sortDirection="desc", limit="1", start="1")
    assert page.json()["inventories"] == everything[1:2]
    # ZStack's SDK form: sort=-name (URL-encoded minus).
    assert _query(server, token, sort="-name").json()["inventories"] == everything
    ascending = _query(server, token, sort="+name").json()["inventories"]
    assert ascending == sorted(everything, key=lambda inv: inv["name"])
    slim = _query(server, token, fields="uuid,name").json()["inventories"]
    assert slim and all(set(inv) == {"uuid", "name"} for inv in slim)
    counted = _query(server, token, limit="1", replyWithCount="true").json()
    assert counted["total"] == len(everything) and len(counted["inventories"]) == 1
    assert _query(server, token, count="true").json() == {"total": len(everything)}


@pytest.mark.parametrize(
    "params",
    [
        [("q", "nosuchfield=1")],
        [("q", "name")],
        [("limit", "-1")],
        [("limit", "x")],
        [("sortBy", "password")],
        [("sortDirection", "up")],
        [("replyWithCount", "maybe")],
        [("groupBy", "password")],
        [("filterName", "nosuchfilter")],
        [("limit", "1"), ("limit", "2")],
    ],
)
def test_query_malformed_400(server: LiveServer, token: str, params: list[tuple[str, str]]) -> None:
    r = server.client.get(
        f"{V1}/image-packages", params=httpx.QueryParams(tuple(params)), headers=server.auth(token)
    )
    error_of(r, 400, "SYS.1007")


def test_get_one_package(server: LiveServer, token: str, exported: dict[str, Any]) -> None:
    r = server.client.get(f"{V1}/image-packages/{exported['uuid']}", headers=server.auth(token))
    assert r.status_code == 200
    assert r.json() == {"inventories": [exported]}
    # ZStack's GET by uuid is a query: an unknown uuid gives an empty list.
    r = server.client.get(f"{V1}/image-packages/{MISSING_UUID}", headers=server.auth(token))
    assert r.json() == {"inventories": []}


# -- download ---------------------------------------------------------------------------------


def test_download_whole_package_and_verify(
    server: LiveServer, exported: dict[str, Any], tmp_path: Path
) -> None:
    url = exported["exportUrl"]
    target = tmp_path / "got.ova"
    md5 = hashlib.md5()
    with server.client.stream("GET", url) as r:  # no session: exportUrl is plain HTTP
        assert r.status_code == 200
        assert r.headers["accept-ranges"] == "bytes"
        assert int(r.headers["content-length"]) == exported["size"]
        with open(target, "wb") as f:
            for chunk in r.iter_bytes():
                md5.update(chunk)
                f.write(chunk)
    assert md5.hexdigest() == exported["md5Sum"]
    assert target.stat().st_size == exported["size"]
    # Python's tarfile reads it, and every manifest line matches the member it names.
    with tarfile.open(target) as tar:
        names = tar.getnames()
        assert names[0].endswith(".ovf")
        mf = next(n for n in names if n.endswith(".mf"))
        manifest = tar.extractfile(mf).read().decode()  # type: ignore[union-attr]
        for line in manifest.splitlines():
            m = re.fullmatch(r"(\w+)\((.+)\)= ([0-9a-f]+)", line)
            assert m, line
            algo, name, digest = m.groups()
            data = tar.extractfile(name).read()  # type: ignore[union-attr]
            assert hashlib.new(algo.lower(), data).hexdigest() == digest
    # And the project's own reader agrees (ovfkit verify: structure, manifest, disks).
    done = subprocess.run(
        [sys.executable, "-m", "ovfkit", "verify", str(target)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_download_ranges(server: LiveServer, exported: dict[str, Any]) -> None:
    url, size = exported["exportUrl"], exported["size"]
    whole = server.client.get(url).content

    def get(rng: str) -> httpx.Response:
        return server.client.get(url, headers={"Range": rng})

    r = get("bytes=0-511")
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 0-511/{size}"
    assert r.content == whole[:512]
    r = get(f"bytes={size - 100}-")
    assert r.status_code == 206 and r.content == whole[-100:]
    r = get("bytes=-1024")
    assert r.status_code == 206 and r.content == whole[-1024:]
    assert r.headers["content-range"] == f"bytes {size - 1024}-{size - 1}/{size}"
    r = get(f"bytes=1000-{size * 2}")  # end past the file: clamped (RFC 9110 14.1.2)
    assert r.status_code == 206 and r.content == whole[1000:]
    r = get(f"bytes={size}-")
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{size}"
    # Resume a download the way wget -c does.
    part = whole[:size // 3]
    rest = get(f"bytes={len(part)}-").content
    assert part + rest == whole


def test_download_head_and_unknown(server: LiveServer, exported: dict[str, Any]) -> None:
    r = server.client.head(exported["exportUrl"])
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) == exported["size"]
    error_of(server.client.get(f"/ova-packages/{MISSING_UUID}.ova"), 404, "SYS.1003")
    error_of(server.client.get("/ova-packages/..%2f..%2fetc%2fpasswd.ova"), 404, "SYS.1003")
    error_of(server.client.post(exported["exportUrl"]), 405, "SYS.1007")


# -- ParseOvf ---------------------------------------------------------------------------------


def _descriptor_of(server: LiveServer, exported: dict[str, Any]) -> bytes:
    whole = server.client.get(exported["exportUrl"]).content
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        first = tar.getmembers()[0]
        return tar.extractfile(first).read()  # type: ignore[union-attr]


def test_parse_ovf(server: LiveServer, token: str, exported: dict[str, Any]) -> None:
    xml = _descriptor_of(server, exported)
    r = server.client.post(
        f"{V1}/ovf/parse",
        headers=server.auth(token),
        json={"params": {"xmlBase64": base64.b64encode(xml).decode()}},
    )
    assert r.status_code == 200, r.text
    info = r.json()["ovfInfo"]
    # ZStack's OvfInfo (sdk OvfInfo): its fields only, sizes in bytes.
    assert set(info) == {
        "vmName", "cpu", "memory", "os", "systemInfo", "disks", "networks", "nics",
        "cdDrivers", "volumes",
    }
    assert info["vmName"] == "exported-once"
    assert info["cpu"] == {"quantity": 1, "coresPerSocket": 1}
    assert info["memory"] == {"quantity": 512 * 1024 * 1024}
    assert info["systemInfo"]["virtualSystemType"].startswith("vmx-")
    assert [d["capacity"] for d in info["disks"]] == [4 * 1024 * 1024, 2 * 1024 * 1024]
    assert [d["index"] for d in info["disks"]] == [0, 1]
    for disk in info["disks"]:
        assert disk["format"] == "vmdk" and disk["fileName"].endswith(".vmdk")
        assert 0 < disk["populatedSize"] <= disk["capacity"]
    assert [v["diskId"] for v in info["volumes"]] == [d["diskId"] for d in info["disks"]]
    assert {n["nicModel"] for n in info["nics"]} <= {"E1000", "VmxNet3", "virtio", "E1000e"}
    assert {n["networkName"] for n in info["nics"]} <= {n["name"] for n in info["networks"]}


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"xmlBase64": base64.b64encode(b"<not-xml").decode()}, 503, "OVF.1001"),
        ({"xmlBase64": base64.b64encode(b"<Envelope/>").decode()}, 503, "OVF.1002"),
        # issue 12 #2: a VirtualQuantity of 10^400 was an OverflowError, answered SYS.1000
        ({"xmlBase64": base64.b64encode(NUMBER_CASES[0][1]()).decode()}, 503, "OVF.1002"),
        ({"xmlBase64": "***"}, 400, "SYS.1007"),
        ({"xmlBase64": 12}, 400, "SYS.1007"),
        ({}, 400, "SYS.1007"),
        ({"xmlBase64": "", "other": 1}, 503, "OVF.1001"),  # "other" is ignored
    ],
)
def test_parse_ovf_errors(
    server: LiveServer, token: str, params: dict[str, Any], status: int, code: str
) -> None:
    r = server.client.post(f"{V1}/ovf/parse", headers=server.auth(token), json={"params": params})
    error_of(r, status, code)


# -- update and delete ------------------------------------------------------------------------


def test_update_package(server: LiveServer, token: str) -> None:
    vm = server.add_vm("update-vm", disks=(1024 * 1024,))
    h = server.auth(token)
    inv = server.client.post(
        f"{V1}/ovf/ova-packages", headers=h, json={"vmUuid": vm, "backupStorageUuid": BS_UUID}
    ).json()["inventory"]
    url = f"{V1}/image-packages/{inv['uuid']}"
    r = server.client.put(url, headers=h, json={"updateImagePackage": {"name": "renamed"}})
    assert r.status_code == 200, r.text
    assert r.json()["inventory"]["name"] == "renamed"
    assert r.json()["inventory"]["description"] == inv["description"]
    r = server.client.put(
        url, headers=h, json={"updateImagePackage": {"description": "new", "systemTags": []}}
    )
    assert r.json()["inventory"]["name"] == "renamed"
    assert r.json()["inventory"]["description"] == "new"
    listed = server.client.get(url, headers=h).json()["inventories"]
    assert listed[0]["name"] == "renamed"
    error_of(
        server.client.put(url, headers=h, json={"updateImagePackage": {"name": "x" * 256}}),
        503, "SYS.1007",
    )
    error_of(
        server.client.put(url, headers=h, json={"updateImagePackage": {"name": 3}}),
        400, "SYS.1007",
    )
    # A field UpdateImagePackage does not have is ignored, as ZStack ignores it.
    r = server.client.put(url, headers=h, json={"updateImagePackage": {"size": 3, "uuid": "u"}})
    assert r.status_code == 200 and r.json()["inventory"]["size"] == inv["size"]
    error_of(server.client.put(url, headers=h, json={"name": "x"}), 400, "SYS.1007")
    error_of(
        server.client.put(
            f"{V1}/image-packages/{MISSING_UUID}", headers=h,
            json={"updateImagePackage": {"name": "x"}},
        ),
        503, "SYS.1003",
    )


def test_delete_package(server: LiveServer, token: str) -> None:
    vm = server.add_vm("delete-vm", disks=(1024 * 1024,))
    h = server.auth(token)
    inv = server.client.post(
        f"{V1}/ovf/ova-packages", headers=h, json={"vmUuid": vm, "backupStorageUuid": BS_UUID}
    ).json()["inventory"]
    url = f"{V1}/image-packages/{inv['uuid']}"
    package = server.data_dir / "bs" / f"{inv['uuid']}.ova"
    assert package.is_file()
    error_of(server.client.delete(url, headers=h, params={"deleteMode": "x"}), 400, "SYS.1007")
    # As ZStack's SDK sends a DELETE: its parameters in the query string.
    r = server.client.delete(
        url, headers=h, params={"deleteMode": "Permissive", "systemTags": "a", "requestIp": "::1"}
    )
    assert r.status_code == 200 and r.json() == {}
    assert not package.exists()
    assert server.client.get(url, headers=h).json() == {"inventories": []}
    error_of(server.client.get(inv["exportUrl"]), 404, "SYS.1003")
    error_of(server.client.delete(url, headers=h), 503, "SYS.1003")
    # The VM can be exported again once its package is gone (one package per VM).
    again = server.client.post(
        f"{V1}/ovf/ova-packages", headers=h, json={"vmUuid": vm, "backupStorageUuid": BS_UUID}
    )
    assert again.status_code == 200, again.text


# -- routing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/zstack/v1/nothing", f"{V1}/image-packages/a/b", f"{V1}/image-packages/"]
)
def test_unknown_paths_404(server: LiveServer, path: str) -> None:
    err = error_of(server.client.get(path), 404, "SYS.1003")
    assert "no api mapping" in err["details"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", f"{V1}/ovf/ova-packages", {"POST"}),
        ("POST", f"{V1}/image-packages", {"GET", "HEAD"}),
        ("PATCH", f"{V1}/image-packages/{MISSING_UUID}", {"GET", "HEAD", "PUT", "DELETE"}),
        ("GET", f"{V1}/accounts/login", {"PUT"}),
    ],
)
def test_wrong_method_405(server: LiveServer, method: str, path: str, allowed: set[str]) -> None:
    r = server.client.request(method, path)
    error_of(r, 405, "SYS.1007")
    assert {m.strip() for m in r.headers["allow"].split(",")} == allowed


def test_openapi_document_served(server: LiveServer) -> None:
    doc = server.client.get(f"{V1}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    ops = {(p, m) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    assert ("/zstack/v1/ovf/ova-packages", "post") in ops
    assert ("/ova-packages/{token}/{uuid}.ova", "get") in ops
