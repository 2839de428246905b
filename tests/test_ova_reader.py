"""open_package / verify_package / extract_package against hostile and broken archives."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import MakeImage, MiB
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ova_writer import make_vm

from ovfkit.errors import CancelledError, InvalidArgumentError, NotFoundError, OvfkitError
from ovfkit.model import VirtualMachine
from ovfkit.ova import extract_package, open_package, verify_package, write_ova
from ovfkit.ova.manifest import encode_line
from ovfkit.ova.reader import MAX_DESCRIPTOR
from ovfkit.ova.tar import BLOCK, END_OF_ARCHIVE, TarFormatError, encode_header, padding
from ovfkit.ovf import build_descriptor


@pytest.fixture
def package(tmp_path: Path, make_image: MakeImage) -> Path:
    img = make_image("qcow2", size=2 * MiB)
    target = tmp_path / "good.ova"
    write_ova(make_vm([(img.path, "qcow2")]), target)
    return target


def _members(package: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(package) as t:
        return [(m, t.extractfile(m).read()) for m in t]  # type: ignore[union-attr]


def _rebuild(path: Path, members: list[tuple[tarfile.TarInfo, bytes]],
             fmt: int = tarfile.USTAR_FORMAT) -> None:
    with tarfile.open(path, "w", format=fmt) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)


def test_open_package_reads_members_in_place(package: Path) -> None:
    pkg = open_package(package)
    assert pkg.kind == "ova" and pkg.descriptor_name == "web-01.ovf"
    assert pkg.vm.vcpus == 2 and pkg.vm.memory_mib == 3072 and len(pkg.vm.disks) == 1
    with tarfile.open(package) as t:
        for m in pkg.members:
            info = t.getmember(m.name)
            assert (m.offset, m.size) == (info.offset_data, info.size)


def _special(name: str, type_: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = "/etc/passwd"
    return info, b""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (_special("link.vmdk", tarfile.SYMTYPE), "symbolic link"),
        (_special("hard.vmdk", tarfile.LNKTYPE), "hard link"),
        (_special("dev", tarfile.CHRTYPE), "character device"),
        (_special("blk", tarfile.BLKTYPE), "block device"),
        (_special("fifo", tarfile.FIFOTYPE), "FIFO"),
        ((tarfile.TarInfo("/etc/cron.d/x"), b""), "unsafe"),
        ((tarfile.TarInfo("../../escape"), b""), "unsafe"),
    ],
)
def test_hostile_members_are_refused(
    tmp_path: Path, package: Path, extra: tuple[tarfile.TarInfo, bytes], message: str
) -> None:
    bad = tmp_path / "bad.ova"
    _rebuild(bad, [*_members(package), extra])
    with pytest.raises(TarFormatError, match=message):
        open_package(bad)
    with pytest.raises(TarFormatError):
        extract_package(bad, tmp_path / "x")
    assert not (tmp_path / "x").exists() or list((tmp_path / "x").iterdir()) == []
    report = verify_package(bad)
    assert not report.ok and report.problems[0].startswith("cannot open")


def test_duplicates_pax_and_truncation_are_refused(tmp_path: Path, package: Path) -> None:
    members = _members(package)
    dup = tmp_path / "dup.ova"
    _rebuild(dup, [*members, members[-1]])
    with pytest.raises(TarFormatError, match="twice"):
        open_package(dup)
    pax = tmp_path / "pax.ova"
    info = tarfile.TarInfo("x" * 120)
    _rebuild(pax, [*members, (info, b"")], fmt=tarfile.PAX_FORMAT)
    with pytest.raises(TarFormatError, match="PAX"):
        open_package(pax)
    cut = tmp_path / "cut.ova"
    data = package.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TarFormatError, match="past the end"):
        open_package(cut)


def test_huge_descriptor_member_is_refused(tmp_path: Path) -> None:
    # A 10 GB descriptor, as a sparse file: refused before anything is read into memory.
    huge = tmp_path / "huge.ova"
    size = 10 * 10**9
    with open(huge, "wb") as f:
        f.write(encode_header("vm.ovf", size, 0))
        f.truncate(BLOCK + size + padding(size) + 2 * BLOCK)
    with pytest.raises(TarFormatError, match=f"more than {MAX_DESCRIPTOR}"):
        open_package(huge)


def test_not_a_tar(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ova"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(TarFormatError, match="checksum"):
        open_package(junk)
    with pytest.raises(NotFoundError):
        open_package(tmp_path / "missing.ova")
    empty = tmp_path / "empty.ova"
    empty.write_bytes(END_OF_ARCHIVE)
    with pytest.raises(InvalidArgumentError, match=r"no \.ovf"):
        open_package(empty)
    # Reading a FIFO waited for a writer: `ovfkit verify FIFO` hung for ever.
    fifo = tmp_path / "pipe.ova"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):
        with pytest.raises(InvalidArgumentError, match="not a regular file"):
            open_package(path)


def test_verify_reports_order_size_and_missing_problems(tmp_path: Path, package: Path) -> None:
    members = _members(package)
    # Disk before the manifest, manifest before the descriptor: order problems listed.
    swapped = tmp_path / "swapped.ova"
    _rebuild(swapped, [members[1], members[0], members[2]])
    report = verify_package(swapped)
    assert any("not the first member" in p for p in report.problems)
    # Missing disk and a stray member.
    stray = tmp_path / "stray.ova"
    extra = tarfile.TarInfo("notes.txt")
    extra.size = 3
    _rebuild(stray, [members[0], members[1], (extra, b"hi!")])
    report = verify_package(stray)
    assert any("is not in the package" in p for p in report.problems)
    assert any("not listed in References" in p for p in report.problems)
    assert any("does not list web-01-disk1.vmdk" in p or "not a package file" in p
               for p in report.problems)
    # A disk member one byte longer than ovf:size says: size problem and VMDK problems.
    longer = tmp_path / "longer.ova"
    disk_info, disk_data = members[2]
    disk_info.size += 1
    _rebuild(longer, [members[0], members[1], (disk_info, disk_data + b"\0")])
    report = verify_package(longer)
    assert any("ovf:size" in p for p in report.problems)


def test_extract_stays_inside_and_refuses_symlinks(tmp_path: Path, package: Path) -> None:
    out = tmp_path / "out"
    paths = extract_package(package, out)
    assert sorted(os.path.basename(p) for p in paths) == sorted(
        m.name for m in open_package(package).members
    )
    assert all(Path(p).parent == out.resolve() for p in paths)
    # The extracted folder is a valid .ovf package too.
    ovf = out / "web-01.ovf"
    pkg = open_package(ovf)
    assert pkg.kind == "ovf" and len(pkg.members) == 3
    report = verify_package(ovf)
    assert report.ok, report.problems
    # A symbolic link planted where a member would go is not followed.
    trap = tmp_path / "trap"
    trap.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (trap / "web-01.mf").symlink_to(victim)
    with pytest.raises(InvalidArgumentError, match="already exists"):
        extract_package(package, trap)
    assert victim.read_bytes() == b"keep"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, 4095), st.integers(1, 255)), max_size=8),
       cut=st.integers(0, 6000))
def test_damaged_archives_fail_cleanly(flips: list[tuple[int, int]], cut: int) -> None:
    """Any damage to the headers or the descriptor gives an OvfkitError or a problem list,
    never another exception."""
    base = bytearray(_SMALL_PACKAGE)
    for at, mask in flips:
        base[at % len(base)] ^= mask
    data = bytes(base[: max(cut, 512)] if cut < len(base) else base)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "damaged.ova"
        path.write_bytes(data)
        with contextlib.suppress(OvfkitError):
            open_package(path)
        if not flips and cut >= len(_SMALL_PACKAGE):
            assert open_package(path).vm.vcpus == 2  # the undamaged package opens
            assert verify_package(path).ok
        report = verify_package(path, check_data=False)
        assert report.ok or report.problems


def _small_package() -> bytes:
    descriptor = _DESCRIPTOR
    out = bytearray()
    manifest = encode_line("sha256", "vm.ovf", hashlib.sha256(descriptor).hexdigest())
    for name, data in (("vm.ovf", descriptor), ("vm.mf", manifest)):
        out += encode_header(name, len(data), 0) + data + bytes(padding(len(data)))
    return bytes(out + END_OF_ARCHIVE)


_DESCRIPTOR = build_descriptor(VirtualMachine(name="vm", vcpus=2))
_SMALL_PACKAGE = _small_package()


# --- issue 12 #4: extraction is all or nothing, with clear errors ---------------------------


class _CancelAfter(threading.Event):
    """Set itself on the ``n``-th check: a cancellation in the middle of an extraction."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def is_set(self) -> bool:
        self.left -= 1
        return self.left < 0


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_extract_into_a_regular_file_is_refused(tmp_path: Path, package: Path) -> None:
    target = tmp_path / "a-file"
    target.write_bytes(b"keep")
    before = _tree(tmp_path)
    with pytest.raises(InvalidArgumentError, match="is not a folder") as exc:
        extract_package(package, target)
    assert exc.value.code == "SYS.1007"
    assert target.read_bytes() == b"keep"
    assert _tree(tmp_path) == before


def test_extract_where_a_member_folder_is_a_file(tmp_path: Path, package: Path) -> None:
    members = _members(package)
    nested = tmp_path / "nested.ova"
    sub = tarfile.TarInfo("sub/x.txt")
    sub.size = 3
    _rebuild(nested, [*members, (sub, b"abc")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_bytes(b"a file where a folder would go")
    before = _tree(tmp_path)
    with pytest.raises(InvalidArgumentError, match="exists and is not a folder"):
        extract_package(nested, out)
    assert _tree(tmp_path) == before  # nothing of the package was left behind
    # Into a fresh folder the same package extracts, sub-folder and all.
    paths = extract_package(nested, tmp_path / "fresh")
    assert (tmp_path / "fresh" / "sub" / "x.txt").read_bytes() == b"abc"
    assert len(paths) == len(members) + 1


def test_extract_refusal_or_cancel_leaves_nothing(tmp_path: Path, package: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_bytes(b"mine")
    (out / "web-01-disk1.vmdk").write_bytes(b"the last member's name, taken")
    with pytest.raises(InvalidArgumentError, match="already exists"):
        extract_package(package, out)
    assert _tree(out) == ["mine.txt", "web-01-disk1.vmdk"]  # the .ovf and .mf did not stay
    (out / "web-01-disk1.vmdk").unlink()
    before = _tree(tmp_path)
    for folder in (out, tmp_path / "new"):  # an existing folder, and one made for it
        with pytest.raises(CancelledError):
            extract_package(package, folder, cancel=_CancelAfter(3))
    assert _tree(tmp_path) == before
    paths = extract_package(package, out)
    assert _tree(out) == sorted(["mine.txt", *(os.path.basename(p) for p in paths)])


# --- verify: oversized .mf/.cert, directory members, could-not-check --------------------------


def test_verify_lists_an_oversized_manifest_and_goes_on(tmp_path: Path, package: Path) -> None:
    members = _members(package)
    big = tmp_path / "big-mf.ova"
    mf_info, _ = next(m for m in members if m[0].name == "web-01.mf")
    mf_info.size = (1 << 20) + 1
    cert = tarfile.TarInfo("web-01.cert")
    cert.size = 2 << 20
    _rebuild(big, [m if m[0].name != "web-01.mf" else (mf_info, b"x" * mf_info.size)
                   for m in members] + [(cert, b"c" * cert.size)])
    report = verify_package(big)
    assert any("web-01.mf is 1048577 bytes, more than" in p for p in report.problems)
    assert any("web-01.cert is 2097152 bytes" in p for p in report.problems)
    # ... and the other checks still ran: the disk was inspected.
    assert any("VMDK structure and every grain valid" in c for c in report.checked)
    assert report.errors == ()


def test_verify_reports_a_directory_named_like_a_disk(tmp_path: Path, package: Path) -> None:
    members = _members(package)
    odd = tmp_path / "dir.ova"
    folder = tarfile.TarInfo("web-01-disk1.vmdk.d")
    folder.type = tarfile.DIRTYPE
    other = tarfile.TarInfo("notes")
    other.type = tarfile.DIRTYPE
    _rebuild(odd, [members[0], (folder, b""), *members[1:], (other, b"")])
    report = verify_package(odd)
    assert "tar member 'web-01-disk1.vmdk.d' is a directory named like a package file" in (
        report.problems
    ), report.problems
    assert any("'notes' is a directory" in p for p in report.problems)
    # A directory standing in for the disk itself: the disk is missing too.
    swapped = tmp_path / "swapped.ova"
    disk = tarfile.TarInfo("web-01-disk1.vmdk")
    disk.type = tarfile.DIRTYPE
    _rebuild(swapped, [*members[:-1], (disk, b"")])
    report = verify_package(swapped)
    assert any("directory named like a package file" in p for p in report.problems)
    assert any("is not in the package" in p for p in report.problems)


def test_verify_tells_could_not_check_from_invalid(tmp_path: Path, package: Path) -> None:
    missing = verify_package(tmp_path / "missing.ova")
    assert not missing.ok and missing.problems == () and missing.errors
    assert missing.errors[0].startswith("cannot open")
    # An .ovf whose disk file cannot be read: the check could not run, nothing is invalid.
    out = tmp_path / "x"
    extract_package(package, out)
    if os.geteuid() != 0:
        (out / "web-01-disk1.vmdk").chmod(0)
        report = verify_package(out / "web-01.ovf")
        assert report.problems == () and any("cannot read" in e for e in report.errors)
