"""ZStack clients work unchanged: ``ovfkit serve`` driven by ZStack's own Python SDK logic
(:mod:`zssdk_client`, transcribed from zssdk.py): synchronous calls, the job form (202, then
polling; 503 in the poll; the webhook), sessions and AccessKey signatures, and every reply in the
shape of the SDK's result classes."""

from __future__ import annotations

import base64
import http.server
import io
import json
import re
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, ClassVar

import pytest
import zssdk_client as sdk
from server_helpers import BS_UUID, PASSWORD, USER, LiveServer, run_server, setup_data_dir

from ovfkit.zstack.auth import wire_password
from ovfkit.zstack.inventory import parse_zstack_time

MISSING_VM = "9f1c2b3a4d5e4f60a1b2c3d4e5f60718"

# The SDK's result classes (sdk/src/main/java/org/zstack/sdk/*Result.java): the fields a reply
# may have.
RESULT_FIELDS = {
    "LogInByAccount": {"inventory"},
    "LogOut": set(),
    "ValidateSession": {"valid"},
    "RenewSession": {"inventory"},
    "ExportVmOvaPackage": {"inventory"},
    "QueryImagePackage": {"inventories", "total"},
    "UpdateImagePackage": {"inventory"},
    "DeleteImagePackage": set(),
    "ParseOvf": {"ovfInfo"},
    "QueryUserTag": {"inventories", "total"},
}
# ImagePackageInventory, SessionInventory, OvfInfo and TagInventory fields (sdk/...).
IMAGE_PACKAGE_FIELDS = {
    "uuid", "name", "description", "vmUuid", "backupStorageUuid", "state", "exportUrl", "md5Sum",
    "format", "size", "createDate", "lastOpDate",
}
SESSION_FIELDS = {"uuid", "accountUuid", "userUuid", "expiredDate", "createDate"}
OVF_INFO_FIELDS = {
    "disks", "networks", "cpu", "memory", "vmName", "os", "systemInfo", "nics", "cdDrivers",
    "volumes",
}
TAG_FIELDS = {"uuid", "resourceUuid", "resourceType", "tag", "type", "createDate", "lastOpDate"}


def value_of(result: sdk.Obj, api: str) -> dict[str, Any]:
    """The SDK result's ``value``, checked to be a successful reply of the SDK's shape."""
    assert result.error is None, sdk.as_dict(result.error)
    value: dict[str, Any] = sdk.as_dict(result.value)
    assert set(value) <= RESULT_FIELDS[api], value
    return value


def error_of(result: sdk.Obj) -> dict[str, Any]:
    assert result.value is None
    err: dict[str, Any] = sdk.as_dict(result.error)
    return err


class _Hooks(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    arrived = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers.items()), body))
        self.send_response(200)
        self.end_headers()
        type(self).arrived.set()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def hooks() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/zstack-hook"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("zssdk") / "data"
    setup_data_dir(data)
    with run_server(data, "--log-level", "info") as server:
        port = int(server.url.rsplit(":", 1)[1])
        sdk.configure(hostname="127.0.0.1", port=port, context_path="/zstack",
                      polling_interval=0.2)
        yield server
        assert "Traceback" not in server.log(), server.log()


def login() -> str:
    action = sdk.LogInByAccountAction()
    action.accountName = USER  # type: ignore[attr-defined]
    action.password = wire_password(PASSWORD)  # type: ignore[attr-defined]
    value = value_of(action.call(), "LogInByAccount")
    assert set(value["inventory"]) == SESSION_FIELDS
    uuid: str = value["inventory"]["uuid"]
    return uuid


@pytest.fixture(scope="module")
def session(live: LiveServer) -> str:
    return login()


def export(session: str | None, vm: str, **fields: Any) -> sdk.Obj:
    action = sdk.ExportVmOvaPackageAction()
    action.vmUuid = vm  # type: ignore[attr-defined]
    action.backupStorageUuid = BS_UUID  # type: ignore[attr-defined]
    action.sessionId = session
    for key, value in fields.items():
        setattr(action, key, value)
    return action.call()


def query(session: str | None, *conditions: str, **fields: Any) -> dict[str, Any]:
    action = sdk.QueryImagePackageAction()
    action.conditions = list(conditions)
    action.sessionId = session
    for key, value in fields.items():
        setattr(action, key, value)
    return value_of(action.call(), "QueryImagePackage")


def test_export_in_job_form_polled_to_the_end(live: LiveServer, session: str) -> None:
    """ExportVmOvaPackage (NEED_POLL): 202 with the SDK's X-Job-UUID as the job, then polling."""
    vm = live.add_vm("sdk-export")
    job = sdk._uuid()
    value = value_of(
        export(session, vm, apiId=job, name="sdk-pkg", systemTags=["bootMode::Legacy"],
               userTags=["team-a", "nightly"]),
        "ExportVmOvaPackage",
    )
    inv = value["inventory"]
    assert set(inv) == IMAGE_PACKAGE_FIELDS
    assert (inv["name"], inv["vmUuid"], inv["state"], inv["format"]) == (
        "sdk-pkg", vm, "Exported", "OVA"
    )
    # The job is the SDK's X-Job-UUID; its result stays there for later polls.
    polled = live.client.get(f"/zstack/v1/api-jobs/{job}", headers=live.auth(session))
    assert polled.status_code == 200 and polled.json() == value


def test_job_form_failure_is_503_in_the_poll(live: LiveServer, session: str) -> None:
    err = error_of(export(session, MISSING_VM))
    assert err["code"] == "SYS.1003" and MISSING_VM in err["details"]
    err = error_of(export(session, live.add_vm("bad-tag"), systemTags=["a::b"]))
    assert (err["code"], err["details"]) == ("SYS.1007", "no system tag matches a::b")


def test_job_uuid_is_checked_and_not_reused(live: LiveServer, session: str) -> None:
    vm = live.add_vm("dup-job")
    bad = export(session, vm, apiId="not-a-uuid")
    assert error_of(bad)["code"] == sdk.HTTP_ERROR and b"X-Job-UUID" in error_of(bad)["details"]
    job = sdk._uuid()
    value_of(export(session, vm, apiId=job), "ExportVmOvaPackage")
    again = export(session, live.add_vm("dup-job-2"), apiId=job)
    assert error_of(again)["code"] == sdk.HTTP_ERROR
    assert f"Duplicate job uuid[{job}]".encode() in error_of(again)["details"]


def test_job_form_reports_zstacks_api_timeout(live: LiveServer, session: str) -> None:
    vm = live.add_vm("timeout-vm", disks=(1024 * 1024,))
    h = {**live.auth(session), "X-Job-UUID": sdk._uuid()}
    body = {"params": {"vmUuid": vm, "backupStorageUuid": BS_UUID}}
    r = live.client.post("/zstack/v1/ovf/ova-packages", headers=h, json=body)
    assert r.status_code == 202
    # APIExportVmOvaPackageMsg: @DefaultTimeout(HOURS, 72); X-API-Timeout (seconds) overrides.
    assert r.json()["apiTimeout"] == 72 * 3600 * 1000
    assert r.json()["location"].endswith(f"/zstack/v1/api-jobs/{h['X-Job-UUID']}")
    pkg = _wait_job(live, session, r.json()["location"])["inventory"]
    r = live.client.put(
        f"/zstack/v1/image-packages/{pkg['uuid']}",
        headers={**live.auth(session), "X-Job-Mode": "async", "X-API-Timeout": "90"},
        json={"updateImagePackage": {"description": "d"}},
    )
    assert r.status_code == 202 and r.json()["apiTimeout"] == 90_000
    _wait_job(live, session, r.json()["location"])


def _wait_job(live: LiveServer, session: str, location: str) -> dict[str, Any]:
    for _ in range(600):
        r = live.client.get(location, headers=live.auth(session))
        if r.status_code != 202:
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body
        threading.Event().wait(0.05)
    raise AssertionError("job still running")


def test_query_update_delete_as_the_sdk_sends_them(live: LiveServer, session: str) -> None:
    vms = [live.add_vm(f"q-{i}", disks=(1024 * 1024,)) for i in range(3)]
    uuids = []
    for i, vm in enumerate(vms):
        tags = ["bootMode::UEFI"] if i == 0 else []
        inv = value_of(
            export(session, vm, name=f"q-pkg-{i}", userTags=["q-team"] + (["q-odd"] * (i % 2)),
                   systemTags=tags),
            "ExportVmOvaPackage",
        )["inventory"]
        uuids.append(inv["uuid"])
    # Conditions, count and replyWithCount as QueryAction writes them (count=True ...).
    mine = [f"uuid?={','.join(uuids)}"]
    assert query(session, *mine, count=True) == {"total": 3}
    listed = query(session, *mine, replyWithCount=True, limit=2, sortBy="name",
                   sortDirection="desc")
    assert listed["total"] == 3
    assert [inv["name"] for inv in listed["inventories"]] == ["q-pkg-2", "q-pkg-1"]
    assert all(set(inv) == IMAGE_PACKAGE_FIELDS for inv in listed["inventories"])
    ascending = query(session, *mine, sortBy="name", sortDirection="asc", start=1)
    assert [inv["name"] for inv in ascending["inventories"]] == ["q-pkg-1", "q-pkg-2"]
    slim = query(session, *mine, fields=["uuid", "name"])
    assert all(set(inv) == {"uuid", "name"} for inv in slim["inventories"])
    # Tags and value-less conditions.
    assert {i["uuid"] for i in query(session, "__userTag__=q-odd")["inventories"]} == {uuids[1]}
    assert query(session, *mine, "__userTag__!=q-odd", count=True) == {"total": 2}
    assert query(session, *mine, "__systemTag__=bootMode::UEFI", count=True) == {"total": 1}
    assert query(session, *mine, "__systemTag__ is null", count=True) == {"total": 2}
    assert query(session, *mine, "description not null", count=True) == {"total": 3}
    assert query(session, *mine, groupBy="state", count=True) == {"total": 1}
    tags = sdk.QueryUserTagAction()
    tags.conditions = [f"resourceUuid={uuids[1]}"]
    tags.sessionId = session
    user_tags = value_of(tags.call(), "QueryUserTag")["inventories"]
    assert {t["tag"] for t in user_tags} == {"q-team", "q-odd"}
    assert all(set(t) == TAG_FIELDS for t in user_tags)
    system = sdk.QuerySystemTagAction()
    system.conditions = [f"resourceUuid={uuids[0]}"]
    system.sessionId = session
    (boot,) = value_of(system.call(), "QueryUserTag")["inventories"]
    assert (boot["tag"], boot["type"], boot["inherent"]) == ("bootMode::UEFI", "System", False)

    # UpdateImagePackage (NEED_POLL): the body also carries the path's uuid and the tags.
    update = sdk.UpdateImagePackageAction()
    update.uuid = uuids[0]  # type: ignore[attr-defined]
    update.name = "renamed-by-sdk"  # type: ignore[attr-defined]
    update.sessionId = session
    update.requestIp = "127.0.0.1"
    value = value_of(update.call(), "UpdateImagePackage")
    assert value["inventory"]["name"] == "renamed-by-sdk"
    assert set(value["inventory"]) == IMAGE_PACKAGE_FIELDS

    # DeleteImagePackage (NEED_POLL): every parameter in the query string, session included.
    delete = sdk.DeleteImagePackageAction()
    delete.uuid = uuids[2]  # type: ignore[attr-defined]
    delete.deleteMode = "Permissive"  # type: ignore[attr-defined]
    delete.sessionId = session
    assert value_of(delete.call(), "DeleteImagePackage") == {}
    assert query(session, f"uuid={uuids[2]}") == {"inventories": []}
    tags.conditions = [f"resourceUuid={uuids[2]}"]
    assert value_of(tags.call(), "QueryUserTag") == {"inventories": []}
    # What ZStack ignores was ignored, and logged by name only (never the session's value).
    log = live.log()
    assert "ignored unknown query parameter(s): sessionId" in log
    assert session not in log


def test_parse_ovf_answers_zstacks_ovf_info(live: LiveServer, session: str) -> None:
    vm = live.add_vm("parse-me")
    inv = value_of(export(session, vm), "ExportVmOvaPackage")["inventory"]
    data = live.client.get(inv["exportUrl"]).content
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        first = tar.getmembers()[0]
        xml = tar.extractfile(first).read()  # type: ignore[union-attr]
    action = sdk.ParseOvfAction()
    action.xmlBase64 = base64.b64encode(xml).decode()  # type: ignore[attr-defined]
    action.sessionId = session
    info = value_of(action.call(), "ParseOvf")["ovfInfo"]
    assert set(info) == OVF_INFO_FIELDS
    assert info["vmName"] == "parse-me"
    assert info["memory"]["quantity"] == 512 * 1024 * 1024
    assert [d["capacity"] for d in info["disks"]] == [4 * 1024 * 1024, 2 * 1024 * 1024]
    assert info["disks"][0]["fileName"].endswith(".vmdk")


def test_sessions_validate_renew_logout(live: LiveServer) -> None:
    mine = login()
    valid = sdk.ValidateSessionAction()
    valid.sessionUuid = mine  # type: ignore[attr-defined]
    assert value_of(valid.call(), "ValidateSession") == {"valid": True}
    renew = sdk.RenewSessionAction()
    renew.sessionUuid = mine  # type: ignore[attr-defined]
    renew.duration = 3600 * 24  # type: ignore[attr-defined]
    renew.sessionId = mine
    renewed = value_of(renew.call(), "RenewSession")["inventory"]
    assert set(renewed) == SESSION_FIELDS and renewed["uuid"] == mine
    # RenewSession: expiredDate = now + duration (Session.renewSession).
    lifetime = parse_zstack_time(renewed["expiredDate"]) - parse_zstack_time(
        renewed["createDate"]
    )
    assert timedelta(hours=23, minutes=59) <= lifetime <= timedelta(hours=24, minutes=5)
    too_short = sdk.RenewSessionAction()
    too_short.sessionUuid = mine  # type: ignore[attr-defined]
    too_short.duration = 5  # type: ignore[attr-defined]
    too_short.sessionId = mine
    err = error_of(too_short.call())  # 202, then 503 in the poll
    assert err["code"] == "SYS.1007" and "duration" in err["details"]
    logout = sdk.LogOutAction()
    logout.sessionUuid = mine  # type: ignore[attr-defined]
    assert value_of(logout.call(), "LogOut") == {}
    assert value_of(valid.call(), "ValidateSession") == {"valid": False}
    # A call with the ended session: the SDK gets ZStack's ID.1001 body as an HTTP error.
    err = error_of(export(mine, MISSING_VM))
    assert err["code"] == sdk.HTTP_ERROR
    assert json.loads(err["details"])["error"]["details"] == "Session expired"


def test_webhook_gets_the_final_reply(live: LiveServer, session: str, hooks: str) -> None:
    _Hooks.received.clear()
    _Hooks.arrived.clear()
    port = sdk.__config__[sdk.CONFIG_PORT]
    sdk.configure(hostname="127.0.0.1", port=port, context_path="/zstack",
                  polling_interval=0.2, web_hook=hooks)
    try:
        job = sdk._uuid()
        value = value_of(export(session, live.add_vm("hooked"), apiId=job), "ExportVmOvaPackage")
        assert _Hooks.arrived.wait(30)
        headers, body = _Hooks.received[0]
        assert headers["X-Job-UUID"] == job and headers["X-Job-Success"] == "true"
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(body) == value
        # A failing job: X-Job-Success false, the error as the poll gives it.
        _Hooks.arrived.clear()
        err = error_of(export(session, MISSING_VM))
        assert _Hooks.arrived.wait(30)
        headers, body = _Hooks.received[1]
        assert headers["X-Job-Success"] == "false" and json.loads(body) == {"error": err}
    finally:
        sdk.configure(hostname="127.0.0.1", port=port, context_path="/zstack",
                      polling_interval=0.2)
    # Anything but an allowed http(s) host is refused before a job starts.
    for url in ("http://203.0.113.9/hook", "file:///etc/passwd", "ftp://127.0.0.1/x"):
        r = live.client.post(
            "/zstack/v1/ovf/ova-packages",
            headers={**live.auth(session), "X-Web-Hook": url},
            json={"params": {"vmUuid": MISSING_VM, "backupStorageUuid": BS_UUID}},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "SYS.1007", r.text


def test_access_key_signed_calls(live: LiveServer) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ovfkit", "account", "access-key", "add", USER,
         "--data-dir", str(live.data_dir)],
        check=True, capture_output=True, text=True,
    ).stdout
    key_id = re.search(r"AccessKeyId: (\S+)", out).group(1)  # type: ignore[union-attr]
    secret = re.search(r"AccessKeySecret: (\S+)", out).group(1)  # type: ignore[union-attr]
    # A query, signed as calculateAccessKey signs (Date in local time labelled CST).
    assert "inventories" in query(None, accessKeyId=key_id, accessKeySecret=secret)
    # An export in job form: the SDK polls it with "OAuth None", and it is answered.
    vm = live.add_vm("signed")
    value = value_of(
        export(None, vm, accessKeyId=key_id, accessKeySecret=secret), "ExportVmOvaPackage"
    )
    assert value["inventory"]["vmUuid"] == vm
    # A wrong secret, and RestServer's header checks.
    err = error_of(query_raw(accessKeyId=key_id, accessKeySecret="x" * 40))
    assert err["code"] == sdk.HTTP_ERROR and b"ID.1000" in err["details"]
    url = f"{live.url}/zstack/v1/image-packages"
    assert live.client.get(url, headers={"Authorization": f"ZStack {key_id}:x"}).text == (
        "'Date' must be incuded in request header"
    )
    r = live.client.get(url, headers={"Authorization": f"ZStack {key_id}:x", "Date": "today"})
    assert (r.status_code, r.text) == (
        400, "'Date' format error, correct format is 'EEE, dd MMM yyyy HH:mm:ss z'"
    )
    r = live.client.get(url, headers={"Authorization": f"ZStack {key_id}:x",
                                      "Date": "Mon, 01 Jan 2001 00:00:00 CST"})
    assert (r.status_code, r.text) == (403, "requestTimeTooSkewed")
    r = live.client.get(url, headers={"Authorization": "ZStack nocolon", "Date": "x"})
    assert (r.status_code, r.text) == (400, "accessKey format is 'ZStack AccessKeyId:Signature'")


def query_raw(**fields: Any) -> sdk.Obj:
    action = sdk.QueryImagePackageAction()
    action.conditions = []
    for key, value in fields.items():
        setattr(action, key, value)
    return action.call()
