"""The README's HTTP section, followed literally: its shell block run as written by bash, in a
folder that holds nothing but the repository's ``scripts/`` and the set-up's ``.venv`` (as a
fresh clone after the quick start, without its data folders).
Only the port differs (a free one instead of 8080, which other processes on a test machine may
hold), and the background server is stopped afterwards."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from server_helpers import REPO, free_port


def readme_http_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## HTTP service", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the HTTP section has no sh block"
    return match.group(1)


def test_readme_http_steps_work_as_written(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl (Debian package curl) is not installed")
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    (tmp_path / "scripts").symlink_to(REPO / "scripts")
    port = str(free_port())
    block = readme_http_block().replace("8080", port)
    script = "set -e\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + block
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    inv = reply["inventory"]
    assert inv["state"] == "Exported" and inv["name"] == "ova"
    assert inv["exportUrl"].startswith(f"http://127.0.0.1:{port}/ova-packages/")
    package = next((tmp_path / "ovfkit-data").glob("packages/*.ova"))
    assert package.stat().st_size == inv["size"]
