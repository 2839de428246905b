"""The OVA writer's locked temporary files (ovfkit.ova.tempfiles, issue 12 #11): a sweep removes
exactly the files no live writer holds, in this process or another."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovfkit.ova import tempfiles


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_live_writers_file_is_kept_and_a_dead_ones_removed(tmp_path: Path) -> None:
    fd_a, path_a = tempfiles.create(str(tmp_path), "a.ova")
    fd_b, path_b = tempfiles.create(str(tmp_path), "a.ova")  # a second export, same process
    assert Path(path_a).name.startswith(".a.ova.") and path_a.endswith(".ovfkit.part")
    assert path_a != path_b
    (tmp_path / ".other.part").write_bytes(b"not ours")  # another tool's, or an old ovfkit's
    (tmp_path / "x.ovfkit.part").write_bytes(b"not hidden: not ours either")
    assert tempfiles.sweep(str(tmp_path)) == []
    os.close(fd_a)  # writer A dies: its lock goes with it
    assert tempfiles.sweep(str(tmp_path)) == [path_a]
    assert _names(tmp_path) == sorted([".other.part", Path(path_b).name, "x.ovfkit.part"])
    os.close(fd_b)


def test_a_killed_process_leaves_a_file_the_next_sweep_removes(tmp_path: Path) -> None:
    code = (
        "import os, sys; from ovfkit.ova import tempfiles; "
        "fd, p = tempfiles.create(sys.argv[1], 'k.ova'); print(p, flush=True); "
        "sys.stdin.read()"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    path = child.stdout.readline().strip()
    assert tempfiles.sweep(str(tmp_path)) == []  # alive and locked: kept
    child.kill()
    child.wait(timeout=30)
    assert os.path.exists(path)
    assert tempfiles.sweep(str(tmp_path)) == [path]
    assert _names(tmp_path) == []


def test_a_file_swept_before_its_writer_locked_it_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: a sweep locks and removes a file between its creation and the writer's
    flock; the writer notices (the path names no file, or another) and makes a new one."""
    real = tempfiles.fcntl.flock
    calls: list[int] = []

    def sweep_then_flock(fd: int, operation: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            assert len(tempfiles.sweep(str(tmp_path))) == 1  # not locked yet: taken
        real(fd, operation)

    monkeypatch.setattr(tempfiles.fcntl, "flock", sweep_then_flock)
    fd, path = tempfiles.create(str(tmp_path), "r.ova")
    monkeypatch.undo()
    try:
        assert len(calls) == 3  # the first file's flock, the sweep's, the second file's
        assert _names(tmp_path) == [Path(path).name]
        assert tempfiles.sweep(str(tmp_path)) == []
    finally:
        os.close(fd)


def test_an_interrupt_while_creating_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(fd: int, operation: int) -> None:
        raise KeyboardInterrupt  # what SIGTERM becomes in the CLI

    monkeypatch.setattr(tempfiles.fcntl, "flock", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tempfiles.create(str(tmp_path), "i.ova")
    assert _names(tmp_path) == []


def test_sweep_of_a_missing_or_unreadable_folder_is_quiet(tmp_path: Path) -> None:
    assert tempfiles.sweep(str(tmp_path / "missing")) == []
    (tmp_path / ".link.ovfkit.part").symlink_to(tmp_path / "elsewhere")
    assert tempfiles.sweep(str(tmp_path)) == []  # a link is never followed nor removed
