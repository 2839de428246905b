"""The one-pass layout (``OvaOptions(layout="one-pass")``, ``ovfkit export --layout one-pass``):
descriptor without the disks' sizes, the files, then manifest and certificate (DSP0243 §5.3),
hashed while it is written. Judged by GNU tar, Python tarfile, qemu-img reading each disk in
place, virt-v2v, the DMTF schemas, and ovfkit's own reader and verifier (paths and file objects).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from conftest import MakeImage, MiB
from test_iso import make_cd_iso
from test_ova_writer import (
    V2V,
    make_vm,
    members_by_tarfile,
    qemu_compare_in_place,
    virt_v2v_print_source,
)
from test_signing import make_key_and_cert

from ovfkit.errors import InvalidArgumentError, OperationCancelledError
from ovfkit.model_json import vm_to_json
from ovfkit.ova import OvaOptions, load_signer, open_package, verify_package, write_ova
from ovfkit.ova.manifest import parse_manifest
from ovfkit.ova.seekable import _Follower
from ovfkit.ovf import parse_package_descriptor, validate_descriptor
from ovfkit.progress import Progress

ONE_PASS = OvaOptions(layout="one-pass", mtime=1_700_000_000)


@pytest.fixture
def two_disks(make_image: MakeImage) -> list[tuple[Path, str]]:
    a = make_image("qcow2", size=5 * MiB + 512 * 3)
    b = make_image("raw", size=3 * MiB, data=[(MiB, b"\x5a" * 70000), (3 * MiB - 512, b"end")])
    return [(a.path, "qcow2"), (b.path, "raw")]


def test_one_pass_package_read_by_independent_readers(
    tmp_path: Path, two_disks: list[tuple[Path, str]]
) -> None:
    target = tmp_path / "out.ova"
    stages: list[str] = []
    result = write_ova(make_vm(two_disks), target, ONE_PASS,
                       progress=lambda p: stages.append(p.stage))
    data = target.read_bytes()
    assert result.path == str(target) and result.size == len(data)
    assert result.md5 == hashlib.md5(data).hexdigest()
    names = ["web-01.ovf", "web-01-disk1.vmdk", "web-01-disk2.vmdk", "web-01.mf"]
    listing = subprocess.run(["tar", "tvf", str(target)], check=True, capture_output=True,
                             text=True).stdout.splitlines()
    assert [line.split()[-1] for line in listing] == names
    infos = members_by_tarfile(target)
    assert [m.name for m in infos] == names
    assert all(not m.pax_headers and m.mtime == 1_700_000_000 for m in infos)
    for prev, cur in itertools.pairwise(infos):
        assert cur.offset == prev.offset_data + -(-prev.size // 512) * 512
    assert data.endswith(bytes(1024))
    assert [(f.name, f.size) for f in result.files] == [(m.name, m.size) for m in infos]
    manifest = parse_manifest(data[infos[3].offset_data: infos[3].offset_data + infos[3].size])
    assert [e.name for e in manifest] == names[:3]
    for entry, info in zip(manifest, infos[:3], strict=True):
        blob = data[info.offset_data: info.offset_data + info.size]
        assert hashlib.sha256(blob).hexdigest() == entry.digest
    # The descriptor went out before the disks: no ovf:size, no ovf:populatedSize, capacities.
    descriptor = data[512: 512 + infos[0].size]
    validate_descriptor(descriptor, strict=True)
    assert b"ovf:size=" not in descriptor and b"ovf:populatedSize=" not in descriptor
    parsed = parse_package_descriptor(descriptor)
    assert [(f.href, f.size) for f in parsed.files] == [(n, None) for n in names[1:3]]
    assert [d.capacity for d in parsed.vm.disks] == [5 * MiB + 512 * 3, 3 * MiB]
    for info, (path, fmt) in zip(infos[1:3], two_disks, strict=True):
        qemu_compare_in_place(target, info, path, fmt)
    assert "checksum" in stages
    report = verify_package(target)
    assert report.ok, report.problems
    assert "member order follows DSP0243 §5.3" in report.checked
    # The same package from a binary file object: the reader finds the manifest at the end.
    with open(target, "rb") as f:
        package = open_package(f)
        assert package.path is None and [m.name for m in package.members] == names
        mf = package.member("web-01.mf")
        assert mf is not None and parse_manifest(package.read_member(mf)) == manifest
        from_file = verify_package(f)
    assert from_file.ok and from_file.path is None, from_file.problems


def test_one_pass_with_iso_environment_and_signature(
    tmp_path: Path, two_disks: list[tuple[Path, str]]
) -> None:
    iso = tmp_path / "install.iso"
    make_cd_iso(iso)
    key, cert = make_key_and_cert()
    target = tmp_path / "vm.ova"
    options = OvaOptions(layout="one-pass", include_iso=True, ovf_env={"hostname": "db-7"},
                         signer=load_signer(key, cert), ovf_version="2.0")
    result = write_ova(make_vm(two_disks, iso=str(iso)), target, options)
    infos = members_by_tarfile(target)
    assert [m.name for m in infos] == [
        "web-01.ovf", "web-01-disk1.vmdk", "web-01-disk2.vmdk", "web-01-iso1.iso",
        "web-01-ovf-env.iso", "web-01.mf", "web-01.cert",
    ]
    assert result.md5 == hashlib.md5(target.read_bytes()).hexdigest()
    package = open_package(target)
    validate_descriptor(package.descriptor, strict=True)
    # Sizes known before the files are written stay in the descriptor: the ISO images'.
    sizes = {f.href: f.size for f in package.parsed.files}
    assert sizes["web-01-iso1.iso"] == iso.stat().st_size
    assert sizes["web-01-ovf-env.iso"] == infos[4].size
    assert sizes["web-01-disk1.vmdk"] is None
    report = verify_package(target)
    assert report.ok, report.problems
    assert any("signature" in c for c in report.checked)
    # A flipped byte in the first disk: its digest and nothing else.
    with open(target, "r+b") as f:
        f.seek(infos[1].offset_data + infos[1].size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    report = verify_package(target)
    assert [p for p in report.problems if "SHA256 digest" in p], report.problems
    assert all("signature" not in p for p in report.problems)


@pytest.mark.skipif(not V2V, reason="virt-v2v not installed")
def test_virt_v2v_reads_the_one_pass_package(
    tmp_path: Path, two_disks: list[tuple[Path, str]]
) -> None:
    target = tmp_path / "vm.ova"
    write_ova(make_vm(two_disks), target, ONE_PASS)
    out = virt_v2v_print_source(target)
    assert out.returncode == 0, out.stderr
    assert "memory: 3221225472 (bytes)" in out.stdout and "nr vCPUs: 2" in out.stdout
    disks_part = out.stdout.split("disks:")[1].split("removable media:")[0]
    assert len([line for line in disks_part.splitlines() if "[scsi]" in line]) == 2
    # virt-v2v checks the manifest at the end of the archive too.
    disk = members_by_tarfile(target)[2]
    with open(target, "r+b") as f:
        f.seek(disk.offset_data + 600)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    out = virt_v2v_print_source(target)
    assert out.returncode != 0
    assert "checksum" in (out.stdout + out.stderr).lower()


def test_python_tarfile_extracts_the_one_pass_package(
    tmp_path: Path, two_disks: list[tuple[Path, str]]
) -> None:
    target = tmp_path / "vm.ova"
    result = write_ova(make_vm(two_disks), target, ONE_PASS)
    out = tmp_path / "x"
    with tarfile.open(target, "r:") as archive:
        archive.extractall(out, filter="data")
    # Every member's digests in the result (the disks' taken from the page cache afterwards)
    # are those of the bytes in the archive.
    for f in result.files:
        assert f.digests["sha256"] == hashlib.sha256((out / f.name).read_bytes()).hexdigest()
    assert len(result.files) == 4
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(["tar", "xf", str(target), "-C", str(gnu)], check=True)
    for name in ("web-01.ovf", "web-01-disk1.vmdk", "web-01-disk2.vmdk", "web-01.mf"):
        assert (out / name).read_bytes() == (gnu / name).read_bytes()
    for name, (path, fmt) in zip(("web-01-disk1.vmdk", "web-01-disk2.vmdk"), two_disks,
                                 strict=True):
        subprocess.run(["qemu-img", "compare", "-F", fmt, str(out / name), str(path)],
                       check=True, capture_output=True)


def test_one_pass_cancel_and_failure_leave_nothing(
    tmp_path: Path, make_image: MakeImage
) -> None:
    first = make_image("raw", size=8 * MiB, data=[(i * MiB, os.urandom(MiB)) for i in range(8)])
    second = make_image("raw", size=8 * MiB, data=[(0, os.urandom(MiB))])
    vm = make_vm([(first.path, "raw"), (second.path, "raw")])
    out = tmp_path / "out"
    out.mkdir()
    cancel = threading.Event()

    def cancel_in_second_disk(p: Progress) -> None:
        # The first disk is final by then: the hashing thread is running behind the writer.
        if p.stage.startswith("disk") and "disk2" in p.stage and p.done > 0:
            cancel.set()

    stages: list[str] = []

    def note(p: Progress) -> None:
        stages.append(p.stage)
        cancel_in_second_disk(p)

    with pytest.raises(OperationCancelledError):
        write_ova(vm, out / "vm.ova", ONE_PASS, progress=note, cancel=cancel)
    assert any("disk2" in s for s in stages), stages
    assert sorted(p.name for p in out.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == "ovfkit-package-md5"]

    def interrupt(p: Progress) -> None:
        if p.stage == "checksum":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_ova(vm, out / "vm.ova", ONE_PASS, progress=interrupt)
    assert sorted(p.name for p in out.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == "ovfkit-package-md5"]
    with pytest.raises(InvalidArgumentError, match="layout"):
        OvaOptions(layout="two-pass")  # type: ignore[arg-type]


def test_follower_hashes_what_is_final_in_order(tmp_path: Path) -> None:
    """The hashing thread, fed in uneven steps (windows cut off their alignment), gives the
    digest of the whole file; stopped early, it ends without a result."""
    blob = os.urandom(3 * (32 << 20) // 2 + 4097)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    fd = os.open(path, os.O_RDONLY)
    try:
        follower = _Follower(fd)
        # Member ranges hashed on the way as well: inside a window, across windows' edges.
        spans = [(3, 700), (513, 40 << 20), ((40 << 20) + 4096, len(blob) - 1)]
        ranges = {}
        for final, (start, end) in zip((0, 1, 513), spans, strict=True):
            ranges[(start, end)] = follower.add_range(start, end, ("sha256", "sha1"))
            follower.advance(final)
        for final in (40 << 20, (40 << 20) + 4096, len(blob) - 1):
            follower.advance(final)
        follower.wait_until(len(blob) - 1, None, None, len(blob))
        md5, _ = follower.finish(len(blob), None, None)
        follower.stop()
        assert md5 == hashlib.md5(blob).hexdigest()
        for (start, end), hashes in ranges.items():
            assert hashes["sha256"].hexdigest() == hashlib.sha256(blob[start:end]).hexdigest()
            assert hashes["sha1"].hexdigest() == hashlib.sha1(blob[start:end]).hexdigest()
        stopped = _Follower(fd)
        stopped.advance(len(blob) // 2)
        stopped.stop()
        assert not [t for t in threading.enumerate() if t.name == "ovfkit-package-md5"]
    finally:
        os.close(fd)


def test_cli_export_layout_one_pass(tmp_path: Path, make_image: MakeImage) -> None:
    disk = make_image("raw", size=2 * MiB, data=[(MiB, b"data" * 1000)])
    vm = make_vm([(disk.path, "raw")], name="cli-vm")
    src = tmp_path / "vm.json"
    src.write_text(json.dumps(vm_to_json(vm)))
    out = tmp_path / "cli.ova"
    proc = subprocess.run([sys.executable, "-m", "ovfkit", "export", str(src), "-o", str(out),
                           "--layout", "one-pass"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["md5"] == hashlib.md5(out.read_bytes()).hexdigest()
    assert [m.name for m in members_by_tarfile(out)] == [
        "cli-vm.ovf", "cli-vm-disk1.vmdk", "cli-vm.mf"]
    verify = subprocess.run([sys.executable, "-m", "ovfkit", "verify", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout
