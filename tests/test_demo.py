"""The demo (`bash scripts/demo`): runs end to end, twice in a row, on a fresh data folder."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import ovfkit_demo as demo

from ovfkit.ova import verify_package
from ovfkit.qemu import img
from ovfkit.zstack.api import query_image_packages
from ovfkit.zstack.context import open_context


def test_demo_twice(tmp_path: Path) -> None:
    data = tmp_path / "demo-data"
    first = demo.run(data, out=io.StringIO())
    proc = subprocess.run(
        [sys.executable, demo.__file__, "--data-dir", str(data)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    second = json.loads(proc.stdout)
    assert "verified" in proc.stderr
    inv = second["inventory"]
    assert inv["state"] == "Exported" and inv["vmUuid"] == demo.DEMO_VM_UUID
    assert inv["uuid"] != first["inventory"]["uuid"]
    with open_context(data) as ctx:
        records = query_image_packages(ctx)
        assert [r.uuid for r in records] == [inv["uuid"]]  # the first package was replaced
    packages = data / "packages"
    assert [p.name for p in packages.iterdir()] == [f"{inv['uuid']}.ova"]
    path = packages / f"{inv['uuid']}.ova"
    assert hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest() == inv["md5Sum"]
    assert verify_package(path).ok
    # The demo disks are real qcow2 images with data in them.
    root = data / "volumes" / demo.DEMO_VM_UUID / "root.qcow2"
    info = img.info(root)
    assert info.format == "qcow2" and info.virtual_size == 32 << 20
    assert b"ovfkit demo demo-vm root disk" not in root.read_bytes()[:4096]  # data, not header
    assert b"ovfkit demo demo-vm root disk" in root.read_bytes()
