"""The data folder's secrets (session uuids, download tokens, SFTP passwords) are owner-only."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from server_helpers import run_server, setup_data_dir

from ovfkit.zstack.auth import AuthStore
from ovfkit.zstack.context import open_context
from ovfkit.zstack.private import private_database, private_folder

SECRETS = ("auth.sqlite", "auth.sqlite-wal", "auth.sqlite-shm", "packages.db",
           "packages.db-wal", "packages.db-shm", "config.json")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _check_private(data: Path) -> None:
    assert _mode(data) == 0o700, oct(_mode(data))
    present = [name for name in SECRETS if (data / name).exists()]
    assert {"auth.sqlite", "packages.db", "config.json"} <= set(present), present
    for name in present:
        assert _mode(data / name) == 0o600, (name, oct(_mode(data / name)))


def test_a_new_data_folder_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, under which sqlite3 alone makes files 0644
    try:
        data = tmp_path / "new" / "data"
        add = subprocess.run(
            [sys.executable, "-m", "ovfkit", "account", "add", "admin", "--password-stdin",
             "--data-dir", str(data)],
            input="pw\n", capture_output=True, text=True, timeout=60,
        )
        assert add.returncode == 0, add.stderr
        auth = AuthStore(data)
        auth.login("admin", "pw")  # writes a session: the WAL file exists now
        with open_context(data) as ctx:
            ctx.records.query()
            _check_private(data)
    finally:
        os.umask(old)


def test_serve_fixes_an_old_folder_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup_data_dir(data)
    with run_server(data) as live:
        live.login()
    # What an older ovfkit left under umask 022.
    os.chmod(data, 0o755)
    for name in SECRETS:
        if (data / name).exists():
            os.chmod(data / name, 0o644)
    with run_server(data) as live:
        live.login()
        _check_private(data)


def test_a_stricter_mode_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir(mode=0o500)
    private_folder(folder)
    assert _mode(folder) == 0o500
    os.chmod(folder, 0o700)
    db = private_database(folder / "x.db")
    os.chmod(db, 0o400)
    private_database(db)
    assert _mode(db) == 0o400
