"""`ovfkit export`, `ovfkit verify` and `ovfkit inspect`, run as real processes."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeImage, MiB
from test_iso import make_cd_iso
from test_signing import make_key_and_cert

EXAMPLE = Path(__file__).parents[1] / "fixtures" / "zstack" / "vm-inventory-example.json"
BS_UUID = "4ed5bbb150a044b5917e7e6c9c4b8170"
ZSTACK_TIME = re.compile(r"[A-Z][a-z]{2} \d{1,2}, \d{4} \d{1,2}:\d{2}:\d{2} [AP]M")


def ovfkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ovfkit", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def inventory(tmp_path: Path, make_image: MakeImage) -> Path:
    doc: Any = json.loads(EXAMPLE.read_text())
    vm = doc["inventories"][0]
    root = make_image("qcow2", size=6 * MiB)
    data = make_image("raw", size=2 * MiB, data=[(MiB, b"data" * 1000)])
    iso = tmp_path / "cd.iso"
    make_cd_iso(iso)
    vm["allVolumes"][0].update(installPath=str(root.path), size=root.size, format="qcow2")
    vm["allVolumes"][1].update(installPath=str(data.path), size=data.size, format="raw")
    vm["vmCdRoms"][0]["isoInstallPath"] = str(iso)
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(doc))
    return path


def test_export_prints_the_image_package_inventory(tmp_path: Path, inventory: Path) -> None:
    out = tmp_path / "web.ova"
    proc = ovfkit("export", str(inventory), "-o", str(out), "--backup-storage-uuid",
                  BS_UUID)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # piped: no progress bar
    inv = json.loads(proc.stdout)
    data = out.read_bytes()
    assert inv["md5Sum"] == hashlib.md5(data).hexdigest()
    assert inv["size"] == len(data) and isinstance(inv["size"], int)
    assert inv["format"] == "OVA" and inv["state"] == "Exported"
    assert inv["exportUrl"] == out.resolve().as_uri()
    assert inv["vmUuid"] == "6efab7159c6942429c6b0e7e0b64b660"
    assert inv["backupStorageUuid"] == BS_UUID
    assert inv["name"] == "exported-vm-web-01"
    assert inv["description"] == "source vm uuid: 6efab7159c6942429c6b0e7e0b64b660"
    assert re.fullmatch(r"[0-9a-f]{32}", inv["uuid"])
    assert ZSTACK_TIME.fullmatch(inv["createDate"]) and ZSTACK_TIME.fullmatch(inv["lastOpDate"])
    verify = ovfkit("verify", str(out))
    assert verify.returncode == 0 and verify.stdout.strip().endswith("valid"), verify.stdout
    inspect = json.loads(ovfkit("inspect", str(out), "--json").stdout)
    assert inspect["vm"]["vcpus"] == 2 and inspect["vm"]["memory_mib"] == 4096
    assert [m["name"] for m in inspect["members"]][:2] == ["web-01.ovf", "web-01.mf"]
    text = ovfkit("inspect", str(out)).stdout
    assert "memory:    4096 MiB" in text and "web-01-disk2.vmdk" in text


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd <&\"'>",
        "C:\\Windows\\..\\x\ttab\nnewline\x7f\x85",
        "虚拟机-Ωμέγα-тест-" + "ß" * 200,
        "\U0001f600" * 255,
    ],
)
def test_any_zstack_vm_name_exports(tmp_path: Path, inventory: Path, name: str) -> None:
    """A legal ZStack name (up to 255 characters of any script, separators, '..', control
    characters): safe member names, the descriptor keeps the name."""
    doc = json.loads(inventory.read_text())
    doc["inventories"][0]["name"] = name
    inventory.write_text(json.dumps(doc))
    out = tmp_path / "named.ova"
    proc = ovfkit("export", str(inventory), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(out) as tar:
        members = tar.getnames()
        descriptor = tar.extractfile(members[0]).read()  # type: ignore[union-attr]
    for member in members:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", member) and ".." not in member
        assert len(member.encode()) <= 100
    from ovfkit.ovf.reader import parse_descriptor

    assert parse_descriptor(descriptor).name == name
    assert ovfkit("verify", str(out)).returncode == 0
    assert json.loads(proc.stdout)["name"] == f"exported-vm-{name}"[:255]


def test_vm_name_characters_xml_cannot_carry(tmp_path: Path, inventory: Path) -> None:
    doc = json.loads(inventory.read_text())
    doc["inventories"][0]["name"] = "a\x00b\x01c\x1f"
    inventory.write_text(json.dumps(doc))
    out = tmp_path / "ctl.ova"
    proc = ovfkit("export", str(inventory), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    inspect = json.loads(ovfkit("inspect", str(out), "--json").stdout)
    assert inspect["vm"]["name"] == "a\ufffdb\ufffdc\ufffd"


def test_export_to_stdout_streams_the_package(tmp_path: Path, inventory: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ovfkit", "export", str(inventory), "-o", "-"],
        capture_output=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = proc.stdout
    inv = json.loads(proc.stderr)
    assert inv["md5Sum"] == hashlib.md5(data).hexdigest() and inv["size"] == len(data)
    assert "exportUrl" not in inv
    out = tmp_path / "streamed.ova"
    out.write_bytes(data)
    with tarfile.open(out) as tf:
        names = tf.getnames()
    assert names[0] == "web-01.ovf" and names[-1] == "web-01.mf"  # manifest last when streamed
    verify = ovfkit("verify", "--workers", "2", str(out))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_export_options_and_verify_failure(tmp_path: Path, inventory: Path) -> None:
    key, cert = make_key_and_cert()
    (tmp_path / "key.pem").write_bytes(key)
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "props.json").write_text(json.dumps({}))
    out = tmp_path / "full.ova"
    proc = ovfkit("export", str(inventory), "-o", str(out), "--ovf-version", "2.0",
                  "--manifest", "sha512", "--sign", str(tmp_path / "key.pem"),
                  "--cert", str(tmp_path / "cert.pem"), "--include-iso",
                  "--ovf-env", str(tmp_path / "props.json"), "--system-tag", "bootMode::UEFI")
    assert proc.returncode == 0, proc.stderr
    inspect = json.loads(ovfkit("inspect", str(out), "--json").stdout)
    names = [m["name"] for m in inspect["members"]]
    assert names[:3] == ["web-01.ovf", "web-01.mf", "web-01.cert"]
    assert names[-2:] == ["web-01-iso1.iso", "web-01-ovf-env.iso"]
    assert inspect["vm"]["firmware"] == "efi" and inspect["ovfVersion"].startswith("2")
    verify = ovfkit("verify", "-v", str(out))
    assert verify.returncode == 0, verify.stdout
    assert "SHA512 digest matches" in verify.stdout and "signature" in verify.stdout
    disk = next(m for m in inspect["members"] if m["name"] == "web-01-disk1.vmdk")
    with open(out, "r+b") as f:
        f.seek(disk["offset"] + disk["size"] // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x80]))
    verify = ovfkit("verify", str(out))
    assert verify.returncode == 1
    assert "problem: web-01-disk1.vmdk: SHA512 digest" in verify.stdout
    assert "INVALID" in verify.stdout


def test_export_with_the_qemu_img_engine_and_threads(tmp_path: Path, inventory: Path) -> None:
    out = tmp_path / "q.ova"
    proc = ovfkit("export", str(inventory), "-o", str(out), "--engine", "qemu-img",
                  "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["md5Sum"] == hashlib.md5(out.read_bytes()).hexdigest()
    verify = ovfkit("verify", str(out))
    assert verify.returncode == 0, verify.stdout
    for bad in ("0", "two"):
        proc = ovfkit("export", str(inventory), "-o", str(tmp_path / "x.ova"), "--threads", bad)
        assert proc.returncode == 2 and "--threads" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".ova") == ["q.ova"]


def test_export_errors_leave_nothing(tmp_path: Path, inventory: Path) -> None:
    doc = json.loads(inventory.read_text())
    doc["inventories"][0]["allVolumes"][1]["installPath"] = str(tmp_path / "gone.raw")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    out = tmp_path / "out"
    out.mkdir()
    proc = ovfkit("export", str(broken), "-o", str(out / "x.ova"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert re.match(r"ERROR SYS\.10\d\d: ", proc.stderr)
    assert list(out.iterdir()) == []
    proc = ovfkit("export", str(inventory), "-o", str(out / "x.ova"), "--sign", "k.pem")
    assert proc.returncode == 2 and "--cert" in proc.stderr
    # "could not check" (2) is not "invalid" (1): issue 12
    proc = ovfkit("verify", str(tmp_path / "missing.ova"))
    assert proc.returncode == 2 and "error: cannot open" in proc.stdout, proc.stdout
    assert "NOT CHECKED" in proc.stdout
    (tmp_path / "junk.ova").write_bytes(b"\0" * 512 + b"junk" * 200)
    proc = ovfkit("verify", str(tmp_path / "junk.ova"))
    assert proc.returncode == 1 and "problem: cannot open" in proc.stdout, proc.stdout
    # A missing side file is named for what it is, not called the inventory.
    gone = str(tmp_path / "gone.json")
    for option, what in (("--ovf-env", "--ovf-env file"), ("--sign", "--sign key")):
        extra = [option, gone] if option == "--ovf-env" else [option, gone, "--cert", gone]
        proc = ovfkit("export", str(inventory), "-o", str(out / "x.ova"), *extra)
        assert proc.returncode == 2
        assert proc.stderr == f"ERROR SYS.1003: {what} {gone!r} not found\n"


def test_progress_bar_and_ctrl_c(tmp_path: Path, inventory: Path, make_image: MakeImage) -> None:
    out = tmp_path / "p.ova"
    proc = ovfkit("export", str(inventory), "-o", str(out), "--progress", "always")
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[K" in proc.stderr and "disk web-01-disk1.vmdk" in proc.stderr
    assert "100.0%" in proc.stderr
    # SIGINT in the middle of a larger disk: exit 130, nothing left in the folder.
    big = make_image("raw", size=256 * MiB,
                     data=[(i * MiB, bytes(range(256)) * 4096) for i in range(0, 256, 2)])
    doc = json.loads(inventory.read_text())
    doc["inventories"][0]["allVolumes"][0].update(installPath=str(big.path), size=big.size,
                                                  format="raw")
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(doc))
    folder = tmp_path / "int"
    folder.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-m", "ovfkit", "export", str(slow), "-o", str(folder / "x.ova"),
         "--progress", "always"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert child.stderr is not None
    seen = ""
    while "disk web-01-disk1.vmdk" not in seen:  # wait until the disk is being written
        chunk = child.stderr.read(1)
        assert chunk, "export ended before the disk was written"
        seen += chunk
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "SYS.1017" in err
    assert list(folder.iterdir()) == []


def test_storage_root_confines_what_export_reads(tmp_path: Path) -> None:
    """Issue 12 #13: with --storage-root, the service's confinement (realpath of every volume
    and ISO, then every file qemu opens for a disk) applies to the command line too."""
    from conftest import qemu_img, write_raw

    ps, outside, out = tmp_path / "ps", tmp_path / "outside", tmp_path / "out"
    for d in (ps, outside, out):
        d.mkdir()
    secret = outside / "shadow.raw"
    write_raw(secret, MiB, [(0, b"root:secret-hash:19000::::::\n" * 20)])
    inside = ps / "root.raw"
    write_raw(inside, MiB, [(0, b"inside")])
    (ps / "link.raw").symlink_to(secret)
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", ps / "over.qcow2")
    doc: Any = json.loads(EXAMPLE.read_text())
    vm = doc["inventories"][0]
    vm["allVolumes"], vm["vmCdRoms"] = vm["allVolumes"][:1], []

    def export(path: Path, fmt: str, *extra: str) -> subprocess.CompletedProcess[str]:
        vm["allVolumes"][0].update(installPath=str(path), size=MiB, format=fmt)
        inv = tmp_path / "inv.json"
        inv.write_text(json.dumps(doc))
        return ovfkit("export", str(inv), "-o", str(out / "x.ova"), "--storage-root", str(ps),
                      *extra)

    for path, fmt, why in (
        (secret, "raw", "outside the configured storage roots"),
        (ps / "link.raw", "raw", "outside the configured storage roots"),  # realpath'd
        (ps / "over.qcow2", "qcow2", f"reads the backing file {str(secret)!r}"),
    ):
        proc = export(path, fmt)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("ERROR SYS.1007: ") and why in proc.stderr, proc.stderr
        assert list(out.iterdir()) == []
    proc = export(inside, "raw", "--storage-root", str(tmp_path / "another"))
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in out.iterdir()] == ["x.ova"]
