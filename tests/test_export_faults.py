"""Fault injection on ``ovfkit export`` run as a real process (issue 12 #11, #13).

The export is stopped (SIGSTOP) at a chosen point, checked to be still writing its temporary
file, then killed: SIGKILL leaves the file, which the next export to the folder removes;
SIGTERM, SIGHUP and SIGINT make the export remove it itself and exit 128 + the signal. A live
export's temporary file survives another export's sweep and the export completes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ovfkit.ova import verify_package

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "fixtures" / "zstack" / "vm-inventory-example.json"
MiB = 1 << 20
# Incompressible, and three of the MD5 pass's 32 MiB windows: the first checksum progress
# leaves two to go (the disk itself streams at ~400 MiB/s on the 2-core machine).
DISK = 96 * MiB
WAIT_S = 60


def _inventory(tmp_path: Path, disk: Path, size: int) -> Path:
    doc: Any = json.loads(EXAMPLE.read_text())
    vm = doc["inventories"][0]
    vm["allVolumes"] = vm["allVolumes"][:1]
    vm["allVolumes"][0].update(installPath=str(disk), size=size, format="raw")
    vm["vmCdRoms"] = []
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("faults")
    disk = tmp / "root.raw"
    disk.write_bytes(os.urandom(DISK))
    return _inventory(tmp, disk, DISK)


def _parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.part"))


# What the progress bar (``--progress always``) shows at each point.
_POINTS = {"disk": re.compile(r"disk \S+"), "checksum": re.compile(r"checksum")}


class Export:
    """``ovfkit export`` in a child process; ``stop_at`` freezes it at a point of its work."""

    def __init__(self, inventory: Path, target: Path, *extra: str) -> None:
        self.folder = target.parent
        self.before = set(_parts(self.folder))  # what earlier exports left
        self.child = subprocess.Popen(
            [sys.executable, "-m", "ovfkit", "export", str(inventory), "-o", str(target),
             "--progress", "always", "--threads", "1", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )
        self.stderr = ""
        self.marker: re.Pattern[str] | None = None
        self.seen = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.child.stderr is not None
        for char in iter(lambda: self.child.stderr.read(1), ""):  # type: ignore[union-attr]
            self.stderr += char
            if self.marker and not self.seen.is_set() and self.marker.search(self.stderr):
                os.kill(self.child.pid, signal.SIGSTOP)  # at once, from the reading thread
                self.seen.set()

    def stop_at(self, point: str) -> None:
        """``created`` (its temporary file exists), ``disk`` (the disk's first bytes) or
        ``checksum`` (the MD5 pass over the written package, its first 32 MiB window done).
        Asserts that it is still writing its temporary file when stopped."""
        deadline = time.monotonic() + WAIT_S
        if point == "created":
            while self.part() is None:
                assert self.child.poll() is None, self.stderr
                assert time.monotonic() < deadline, f"no temporary file: {_parts(self.folder)}"
                time.sleep(0.002)
            os.kill(self.child.pid, signal.SIGSTOP)
        else:
            self.marker = _POINTS[point]
            assert self.seen.wait(WAIT_S), f"never reached {point}: {self.stderr}"
        assert self.child.poll() is None, f"finished before {point}"
        assert self.part() is not None

    def part(self) -> str | None:
        """This export's temporary file: one that was not there when it started."""
        new = sorted(set(_parts(self.folder)) - self.before)
        assert len(new) <= 1, new
        return new[0] if new else None

    def signal(self, signum: int) -> tuple[int, str]:
        os.kill(self.child.pid, signum)
        if signum != signal.SIGKILL:
            os.kill(self.child.pid, signal.SIGCONT)
        self.child.wait(timeout=WAIT_S)
        self.reader.join(timeout=WAIT_S)
        return self.child.returncode, self.stderr

    def finish(self) -> dict[str, Any]:
        os.kill(self.child.pid, signal.SIGCONT)
        out, _ = self.child.communicate(timeout=WAIT_S)
        self.reader.join(timeout=WAIT_S)
        assert self.child.returncode == 0, self.stderr
        result: dict[str, Any] = json.loads(out)
        return result


def _run(inventory: Path, target: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "ovfkit", "export", str(inventory), "-o",
                           str(target), "--threads", "1"], capture_output=True, text=True,
                          timeout=WAIT_S, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_sigkill_leftovers_are_removed_by_the_next_export(
    tmp_path: Path, inventory: Path
) -> None:
    left: list[str] = []
    for point in ("created", "disk", "checksum"):
        export = Export(inventory, tmp_path / "x.ova")
        assert export.before == set(left)
        export.stop_at(point)
        # This export swept what the previous killed one left before making its own file.
        assert _parts(tmp_path) == [export.part()], (point, left)
        rc, _ = export.signal(signal.SIGKILL)
        assert rc == -signal.SIGKILL
        left = _parts(tmp_path)
        assert len(left) == 1, f"SIGKILL at {point} should leave its file: {left}"
        assert not (tmp_path / "x.ova").exists()
    result = _run(inventory, tmp_path / "y.ova")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.ova"]
    assert result["size"] == (tmp_path / "y.ova").stat().st_size
    assert verify_package(tmp_path / "y.ova", check_data=False).ok


@pytest.mark.parametrize(
    ("signum", "point"),
    [(signal.SIGTERM, "created"), (signal.SIGTERM, "disk"), (signal.SIGHUP, "checksum"),
     (signal.SIGINT, "checksum")],
    ids=["TERM-created", "TERM-disk", "HUP-checksum", "INT-checksum"],
)
def test_term_hup_and_int_clean_up_themselves(
    tmp_path: Path, inventory: Path, signum: int, point: str
) -> None:
    export = Export(inventory, tmp_path / "x.ova")
    export.stop_at(point)
    rc, err = export.signal(signum)
    assert rc == 128 + signum, err
    assert "ERROR SYS.1017: " in err and signal.Signals(signum).name in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no temporary file, no package


def test_a_live_exports_file_survives_another_exports_sweep(
    tmp_path: Path, inventory: Path
) -> None:
    slow = Export(inventory, tmp_path / "p.ova")
    slow.stop_at("disk")
    part = slow.part()
    _run(inventory, tmp_path / "q.ova")  # sweeps the folder while p.ova is being written
    assert _parts(tmp_path) == [part]
    result = slow.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.ova", "q.ova"]
    assert result["size"] == (tmp_path / "p.ova").stat().st_size
    assert verify_package(tmp_path / "p.ova", check_data=False).ok
