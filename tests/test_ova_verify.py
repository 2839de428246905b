"""open_package / verify_package from binary file objects, and verify on worker processes: the
same report as from a path, and as from one process."""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import MakeImage, MiB, random_bytes, text_like
from test_ova_reader import _members, _rebuild
from test_ova_writer import make_vm

from ovfkit.errors import InvalidArgumentError
from ovfkit.ova import OvaOptions, open_package, verify_package, write_ova
from ovfkit.ova.reader import Report
from ovfkit.vmdk import reader

GT_SPAN = 32 * MiB  # virtual bytes one grain table covers


@pytest.fixture
def package(tmp_path: Path, make_image: MakeImage) -> Path:
    """Two disks; the first spans five grain tables, with data in each."""
    spread = [(k * GT_SPAN + MiB, text_like(300_000, seed=k)) for k in range(5)]
    spread += [(2 * GT_SPAN + 8 * MiB, random_bytes(200_000))]
    big = make_image("raw", size=5 * GT_SPAN, data=spread)
    small = make_image("qcow2", size=3 * MiB)
    target = tmp_path / "p.ova"
    write_ova(make_vm([(big.path, "raw"), (small.path, "qcow2")]), target, OvaOptions(fsync=False))
    return target


def _same(a: Report, b: Report) -> None:
    assert (a.problems, a.checked) == (b.problems, b.checked)


def test_open_and_verify_a_file_object(package: Path) -> None:
    by_path = open_package(package)
    data = package.read_bytes()
    with open(package, "rb") as f:
        for source in (io.BytesIO(data), f):
            pkg = open_package(source)
            assert pkg.path is None and pkg.vm == by_path.vm
            assert [(m.name, m.offset, m.size) for m in pkg.members] == [
                (m.name, m.offset, m.size) for m in by_path.members
            ]
            assert pkg.read_member(pkg.members[1]) == by_path.read_member(by_path.members[1])
            report = verify_package(source)
            assert report.ok and report.path is None, report.problems
            _same(report, verify_package(package))
    # A damaged disk: the same problems whichever way the package comes.
    disk = by_path.member("web-01-disk1.vmdk")
    assert disk is not None
    bad = bytearray(data)
    bad[disk.offset + disk.size // 2] ^= 0xFF
    damaged = package.with_name("damaged.ova")
    damaged.write_bytes(bad)
    from_path = verify_package(damaged)
    assert not from_path.ok
    _same(verify_package(io.BytesIO(bytes(bad))), from_path)


def test_manifest_at_the_end_is_read(package: Path) -> None:
    """DSP0243 §5.3: the manifest and certificate "either both placed after the OVF descriptor
    file, or both placed at the end of the archive"."""
    members = _members(package)
    assert [m.name for m, _ in members][1] == "web-01.mf"
    moved = package.with_name("end.ova")
    _rebuild(moved, [members[0], *members[2:], members[1]])
    pkg = open_package(moved)
    assert [m.name for m in pkg.members][-1] == "web-01.mf"
    report = verify_package(moved)
    assert report.ok, report.problems
    assert "member order follows DSP0243 §5.3" in report.checked


def test_a_streamed_package_in_memory(make_image: MakeImage) -> None:
    img = make_image("qcow2", size=3 * MiB + 512)
    vm = make_vm([(img.path, "qcow2")])
    vm = replace(vm, disks=tuple(replace(d, capacity=None) for d in vm.disks))
    buf = io.BytesIO()
    result = write_ova(vm, buf, OvaOptions(chunk_size=1 << 20))
    assert result.path is None and result.size == len(buf.getvalue())
    package = open_package(io.BytesIO(buf.getvalue()))
    # The descriptor went out before the disk: its capacity was read from the image.
    assert package.vm.disks[0].capacity == 3 * MiB + 512
    report = verify_package(io.BytesIO(buf.getvalue()))
    assert report.ok, report.problems


def test_a_file_object_that_cannot_seek() -> None:
    r, w = os.pipe()
    with open(r, "rb") as pipe, open(w, "wb"):
        with pytest.raises(InvalidArgumentError, match="seekable"):
            open_package(pipe)
        report = verify_package(pipe)
        assert not report.ok and report.problems[0].startswith("cannot open")
    with pytest.raises(InvalidArgumentError):
        open_package(42)  # type: ignore[arg-type]


def test_verify_on_workers_agrees_with_one_process(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "_MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(reader, "_MIN_SEGMENT_SECTORS", 1)
    used: list[bool] = []
    real = reader._walk_in_parallel

    def spy(*args: object, **kwargs: object) -> bool:
        used.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return used[-1]

    monkeypatch.setattr(reader, "_walk_in_parallel", spy)
    one = verify_package(package, workers=1)
    many = verify_package(package, workers=3)
    assert one.ok and used == [False, False, True, False]  # the first disk on workers
    _same(many, one)
    disk = open_package(package).member("web-01-disk1.vmdk")
    assert disk is not None
    bad = bytearray(package.read_bytes())
    bad[disk.offset + disk.size // 3] ^= 0x55
    package.write_bytes(bad)
    one, many = verify_package(package, workers=1), verify_package(package, workers=3)
    assert not one.ok
    _same(many, one)
