"""The service across restarts and crashes, under concurrent exports, and its CLI set-up."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from server_helpers import BS_UUID, LiveServer, MiB, add_vm, run_server, setup_data_dir

V1 = "/zstack/v1"


def _export(live: LiveServer, token: str, vm: str) -> httpx.Response:
    return live.client.post(
        f"{V1}/ovf/ova-packages",
        headers=live.auth(token),
        json={"params": {"vmUuid": vm, "backupStorageUuid": BS_UUID}},
    )


def test_account_cli_then_login(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup_data_dir(data)
    add = subprocess.run(
        [sys.executable, "-m", "ovfkit", "account", "add", "bob", "--password-stdin",
         "--data-dir", str(data)],
        input="bob's secret\n", capture_output=True, text=True,
    )
    assert add.returncode == 0, add.stderr
    again = subprocess.run(
        [sys.executable, "-m", "ovfkit", "account", "add", "bob", "--password-stdin",
         "--data-dir", str(data)],
        input="x\n", capture_output=True, text=True,
    )
    assert again.returncode == 2 and again.stderr.startswith("ERROR SYS.1007:")
    listed = subprocess.run(
        [sys.executable, "-m", "ovfkit", "account", "list", "--data-dir", str(data)],
        capture_output=True, text=True, check=True,
    ).stdout
    assert " bob " in listed and " admin " in listed
    with run_server(data) as live:
        token = live.login("bob", "bob's secret")
        assert live.client.get(f"{V1}/image-packages", headers=live.auth(token)).status_code == 200
        # A new password from the CLI ends bob's sessions in the running service at once.
        subprocess.run(
            [sys.executable, "-m", "ovfkit", "account", "passwd", "bob", "--password-stdin",
             "--data-dir", str(data)],
            input="new one\n", capture_output=True, text=True, check=True,
        )
        r = live.client.get(f"{V1}/image-packages", headers=live.auth(token))
        assert r.status_code == 401
        token = live.login("bob", "new one")
        subprocess.run(
            [sys.executable, "-m", "ovfkit", "account", "remove", "bob", "--data-dir", str(data)],
            capture_output=True, text=True, check=True,
        )
        r = live.client.get(f"{V1}/image-packages", headers=live.auth(token))
        assert r.status_code == 401
        r = live.client.put(
            f"{V1}/accounts/login",
            json={"logInByAccount": {"accountName": "bob", "password": "new one"}},
        )
        assert r.status_code == 401


def test_restart_keeps_records_sessions_and_downloads(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup_data_dir(data)
    with run_server(data) as live:
        token = live.login()
        inv = _export(live, token, live.add_vm("kept")).json()["inventory"]
    with run_server(data) as live:
        # Sessions are in the data folder too: the same token still works.
        r = live.client.get(f"{V1}/image-packages/{inv['uuid']}", headers=live.auth(token))
        assert r.json()["inventories"][0]["uuid"] == inv["uuid"]
        # The new port is a new base URL; the stored exportUrl keeps the old one, the package
        # path is the same.
        path = inv["exportUrl"].split("/", 3)[3]
        body = live.client.get(f"/{path}").content
        assert hashlib.md5(body).hexdigest() == inv["md5Sum"]


def _writing(folder: Path) -> bool:
    """A partial package with some bytes in it is in ``folder``."""
    for p in folder.iterdir():
        try:
            if p.name.endswith(".part") and p.stat().st_size > 0:
                return True
        except FileNotFoundError:  # renamed meanwhile
            pass
    return False


def _start_export_and_wait_for_bytes(live: LiveServer, vm: str, bs: Path) -> None:
    """Start an export in the job form and return once the package file is being written."""
    token = live.login()
    r = live.client.post(
        f"{V1}/ovf/ova-packages",
        headers={**live.auth(token), "X-Job-Mode": "async"},
        json={"params": {"vmUuid": vm, "backupStorageUuid": BS_UUID}},
    )
    assert r.status_code == 202
    deadline = time.monotonic() + 60
    while not _writing(bs):
        assert time.monotonic() < deadline, "the export never started writing"
        time.sleep(0.005)


def test_concurrent_exports_over_http(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup_data_dir(data)
    vms = [add_vm(data, f"c{i}", disks=(8 * MiB,)) for i in range(4)]
    with run_server(data) as live:
        token = live.login()
        # Four different VMs, plus the first one twice more: one package per VM.
        jobs = [*vms, vms[0], vms[0]]
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(lambda vm: _export(live, token, vm), jobs))
        by_vm: dict[str, list[httpx.Response]] = {}
        for vm, r in zip(jobs, answers, strict=True):
            by_vm.setdefault(vm, []).append(r)
        for vm in vms[1:]:
            assert [r.status_code for r in by_vm[vm]] == [200]
        first = sorted(r.status_code for r in by_vm[vms[0]])
        assert first == [200, 503, 503]
        for r in by_vm[vms[0]]:
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "SYS.1007"
        listed = live.client.get(f"{V1}/image-packages", headers=live.auth(token)).json()
        assert sorted(i["vmUuid"] for i in listed["inventories"]) == sorted(vms)
        for inv in listed["inventories"]:
            assert inv["state"] == "Exported"
            body = live.client.get(inv["exportUrl"]).content
            assert hashlib.md5(body).hexdigest() == inv["md5Sum"]
        assert sorted(p.name for p in (data / "bs").iterdir()) == sorted(
            f"{i['uuid']}.ova" for i in listed["inventories"]
        )


def test_shutdown_cancels_running_exports(tmp_path: Path) -> None:
    """SIGTERM while an export in job form runs past the grace period: the export is cancelled
    and rolls itself back before the service exits (no partial file left for start-up recovery
    to find)."""
    data = tmp_path / "data"
    setup_data_dir(data)
    bs = data / "bs"
    vm = add_vm(data, "big", disks=(128 * MiB,), dense=True)
    with run_server(data, "--shutdown-grace", "0.1") as live:
        _start_export_and_wait_for_bytes(live, vm, bs)
        live.process.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit by SIGTERM).
        assert live.process.wait(60) in (0, -15)
        log = live.log()
    assert "Traceback" not in log, log
    assert sorted(p.name for p in bs.iterdir()) == [], log
    from ovfkit.zstack.records import PackageRecords

    records = PackageRecords(data)
    try:
        assert records.query() == []
    finally:
        records.close()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1, made with the cryptography package."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_export_and_download(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup_data_dir(data)
    cert, key = _self_signed(tmp_path)
    with run_server(data, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)) as live:
        assert live.url.startswith("https://")
        token = live.login()
        inv = _export(live, token, live.add_vm("tls", disks=(MiB,))).json()["inventory"]
        assert inv["exportUrl"].startswith("https://127.0.0.1:")
        body = live.client.get(inv["exportUrl"]).content
        assert hashlib.md5(body).hexdigest() == inv["md5Sum"]
        # Plain HTTP on the TLS port gets nowhere.
        plain = live.url.replace("https://", "http://")
        try:
            r = httpx.get(f"{plain}/zstack/v1/openapi.json", timeout=10)
            assert r.status_code >= 400
        except httpx.HTTPError:
            pass


def test_serve_refuses_half_tls_settings(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ovfkit", "serve", "--data-dir", str(tmp_path / "d"),
         "--ssl-certfile", str(tmp_path / "cert.pem")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("ERROR SYS.1007:") and "--ssl-keyfile" in done.stderr


def test_serve_on_a_busy_port_is_one_error_line(tmp_path: Path) -> None:
    # uvicorn alone logs the bind failure over several lines and exits 3.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "ovfkit", "serve", "--data-dir", str(tmp_path / "d"),
             "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.startswith("ERROR SYS.1016:") and str(port) in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
