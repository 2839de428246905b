"""ovfkit.qemu.img against the real qemu-img: parsed results and every kind of failure."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MakeImage, MiB, qemu_img, random_bytes, write_locked

from ovfkit.errors import (
    NotFoundError,
    OperationCancelledError,
    OperationFailedError,
    OvfkitIOError,
    ToolMissingError,
)
from ovfkit.progress import Progress
from ovfkit.qemu import img


def _only(exc: BaseException, cls: type[BaseException]) -> None:
    """exc is exactly of the family cls, not a sibling family (e.g. NotFound is not Io)."""
    assert isinstance(exc, cls)
    for other in (NotFoundError, OvfkitIOError, img.ImageInUseError):
        if not issubclass(cls, other) and not issubclass(other, cls):
            assert not isinstance(exc, other), f"{exc!r} is also a {other.__name__}"


# --- info / map / measure / check / compare --------------------------------------------------


def test_info_qcow2(make_image: MakeImage) -> None:
    image = make_image("qcow2", size=3 * MiB + 512)
    i = img.info(image.path)
    assert i.format == "qcow2"
    assert i.virtual_size == 3 * MiB + 512
    assert i.cluster_size == 65536
    assert i.backing_chain == ()
    assert i.backing_filename is None
    assert not i.dirty and not i.corrupt and not i.encrypted
    assert i.compression_type == "zlib"
    assert i.actual_size is not None and i.actual_size > 0


def test_info_backing_chain(make_image: MakeImage) -> None:
    image = make_image("qcow2-backing")
    i = img.info(image.path, "qcow2")
    assert image.backing is not None
    assert [b.filename for b in i.backing_chain] == [str(image.backing)]
    assert i.backing_format == "qcow2"
    assert i.backing_filename == str(image.backing)
    assert i.backing_chain[0].format == "qcow2"
    assert img.info(image.path, "qcow2", backing_chain=False).backing_chain == ()


def test_info_raw_probe(make_image: MakeImage) -> None:
    image = make_image("raw", size=MiB + 512)
    i = img.info(image.path)
    assert (i.format, i.virtual_size, i.cluster_size) == ("raw", MiB + 512, None)


def test_map_matches_written_data(make_image: MakeImage) -> None:
    image = make_image("qcow2", size=4 * MiB, data=[(MiB, random_bytes(100_000))])
    extents = img.map(image.path, "qcow2")
    assert extents[0].start == 0
    assert sum(e.length for e in extents) == 4 * MiB
    for a, b in itertools.pairwise(extents):
        assert a.start + a.length == b.start
    data = [e for e in extents if e.data]
    # qcow2 allocates whole 64 KiB clusters around the written bytes.
    assert [(e.start, e.length) for e in data] == [(MiB, 2 * 65536)]
    assert all(not e.data and e.zero and e.offset is None for e in extents if e not in data)


def test_map_depth_in_chain(make_image: MakeImage) -> None:
    image = make_image("qcow2-backing")
    depths = {e.depth for e in img.map(image.path) if e.data}
    assert depths == {0, 1}


def test_measure_qcow2(make_image: MakeImage) -> None:
    image = make_image("raw", size=4 * MiB)
    m = img.measure(image.path, "qcow2", fmt="raw")
    assert not m.estimated
    assert 0 < m.required <= m.fully_allocated
    assert img.measure(64 * MiB, "qcow2").fully_allocated > 64 * MiB


def test_measure_vmdk_is_an_upper_bound(make_image: MakeImage, tmp_path: Path) -> None:
    # qemu 7.2's vmdk driver cannot measure: the bound must hold for what qemu-img writes.
    image = make_image("raw", size=4 * MiB, data=[(0, random_bytes(3 * MiB))])
    m = img.measure(image.path, "vmdk", fmt="raw")
    out = tmp_path / "s.vmdk"
    qemu_img(
        "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", image.path, out
    )
    assert m.estimated
    assert out.stat().st_size <= m.required <= m.fully_allocated
    empty = img.measure(10 * 1024 * MiB, "vmdk")
    assert empty.required < MiB < empty.fully_allocated


def test_check(make_image: MakeImage) -> None:
    image = make_image("qcow2")
    result = img.check(image.path)
    assert result.supported and result.ok and result.leaks == 0
    assert not img.check(make_image("raw").path, "raw").supported


def test_check_finds_corruption(make_image: MakeImage) -> None:
    image = make_image("qcow2", data=[(0, random_bytes(65536))])
    # Point the first L2 entry's refcount at nothing: overwrite the refcount table entry.
    with open(image.path, "r+b") as f:
        f.seek(48)  # refcount_table_offset
        refcount_table = int.from_bytes(f.read(8), "big")
        f.seek(refcount_table)
        f.write(bytes(8))
    result = img.check(image.path)
    assert result.supported and not result.ok


def test_compare(make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image("qcow2-compressed")
    assert img.compare(image.path, image.raw, "qcow2", "raw")
    other = make_image("raw", data=[(0, b"x")])
    assert not img.compare(image.path, other.path, "qcow2", "raw")
    with pytest.raises(NotFoundError):
        img.compare(image.path, tmp_path / "missing.raw", "qcow2", "raw")


# --- convert: progress, cancellation ---------------------------------------------------------


def test_convert_reports_progress(make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image("raw", size=8 * MiB, data=[(0, random_bytes(8 * MiB))])
    seen: list[Progress] = []
    dst = tmp_path / "out.qcow2"
    img.convert(image.path, dst, src_fmt="raw", dst_fmt="qcow2", progress=seen.append)
    assert img.compare(image.path, dst, "raw", "qcow2")
    assert seen[-1] == Progress("qemu-img convert", 8 * MiB, 8 * MiB)
    dones = [p.done for p in seen]
    assert dones == sorted(dones) and len(seen) >= 2


def test_convert_options_and_escaping() -> None:
    assert img.format_options({"subformat": "streamOptimized", "x": "a,b", "on": True}) == (
        "subformat=streamOptimized,x=a,,b,on=on"
    )


def _qemu_img_children() -> set[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(os.getpid()), "-x", "qemu-img"], capture_output=True, text=True
    ).stdout
    return {int(p) for p in out.split()}


def test_convert_cancel_ends_child_and_removes_output(
    make_image: MakeImage, tmp_path: Path
) -> None:
    # -r rate-limits qemu-img to 1 MiB/s, so 16 MiB would take ~16 s; cancel at the first report.
    image = make_image("raw", size=16 * MiB, data=[(0, random_bytes(16 * MiB))])
    dst = tmp_path / "out.qcow2"
    cancel = threading.Event()
    seen: list[Progress] = []

    def on_progress(p: Progress) -> None:
        seen.append(p)
        if p.done > 0:
            cancel.set()

    start = time.monotonic()
    with pytest.raises(OperationCancelledError) as err:
        img.convert(
            image.path,
            dst,
            src_fmt="raw",
            dst_fmt="qcow2",
            progress=on_progress,
            cancel=cancel,
            extra_args=["-r", "1M"],
        )
    assert err.value.code == "SYS.1017"
    assert time.monotonic() - start < 10
    assert not dst.exists()
    assert _qemu_img_children() == set()


def test_convert_failure_removes_output(make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image("raw")
    dst = tmp_path / "out.vmdk"
    with pytest.raises(OperationFailedError) as err:
        img.convert(image.path, dst, src_fmt="raw", dst_fmt="vmdk", options={"subformat": "bogus"})
    assert "bogus" in err.value.details
    assert not dst.exists()


def test_convert_keeps_a_preexisting_target_on_failure(tmp_path: Path) -> None:
    dst = tmp_path / "keep.qcow2"
    dst.write_bytes(b"mine")
    with pytest.raises(NotFoundError):
        img.convert(tmp_path / "missing", dst, src_fmt="raw", dst_fmt="qcow2")
    assert dst.read_bytes() == b"mine"


@pytest.mark.parametrize("kind", ["raw", "qcow2-backing"])
def test_image_window_reads_a_slice(make_image: MakeImage, tmp_path: Path, kind: str) -> None:
    """A window is the slice of the guest-visible bytes, through the image's format and its
    backing chain; the last window (no length) runs to the end. Paths with "," and ":" pass (the
    fixture's qemu-io cannot make a qcow2 named with ":")."""
    size = 5 * MiB + 512
    name = "a,b:c" if kind == "raw" else "a,b c"
    image = make_image(kind, size=size, data=[(0, random_bytes(size))], name=name)
    raw = image.read_raw()
    for offset, length in ((MiB, 2 * MiB), (3 * MiB, None)):
        window = img.ImageWindow(str(image.path), image.format, offset, length)
        want = raw[offset : offset + length] if length is not None else raw[offset:]
        assert img.info(window).virtual_size == len(want)
        out = tmp_path / f"window-{offset}.raw"
        img.convert(window, out, src_fmt="qcow2", dst_fmt="raw", total=len(want))
        assert out.read_bytes() == want
    with pytest.raises(NotFoundError):
        img.info(img.ImageWindow(str(tmp_path / "gone.qcow2"), "qcow2", 0, MiB))


# --- every failure kind ----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as err:
        img.info(tmp_path / "nope.qcow2")
    _only(err.value, NotFoundError)
    assert err.value.code == "SYS.1003"
    assert "No such file or directory" in err.value.details
    assert "nope.qcow2" in err.value.details
    assert err.value.opaque is not None and "qemu-img:" in err.value.opaque["stderr"]


def test_missing_backing_file(make_image: MakeImage) -> None:
    image = make_image("qcow2-backing")
    assert image.backing is not None
    image.backing.unlink()
    with pytest.raises(NotFoundError) as err:
        img.info(image.path)
    assert "backing" in err.value.details.lower()


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(OperationFailedError) as err:
        img.info(path, "qcow2")
    _only(err.value, OperationFailedError)
    assert err.value.code == "SYS.1006"
    assert "not in qcow2 format" in err.value.details


def test_unsupported_format(make_image: MakeImage) -> None:
    with pytest.raises(OperationFailedError) as err:
        img.info(make_image("raw").path, "bogus")
    _only(err.value, OperationFailedError)
    assert "Unknown driver 'bogus'" in err.value.details


def test_corrupt_image(make_image: MakeImage) -> None:
    image = make_image("qcow2")
    with open(image.path, "r+b") as f:
        f.seek(64)  # snapshots_offset: point it past any sane place
        f.write(b"\xff" * 8)
    with pytest.raises(OperationFailedError) as err:
        img.info(image.path)
    _only(err.value, OperationFailedError)
    assert "invalid" in err.value.details.lower()


def test_permission_denied(make_image: MakeImage) -> None:
    image = make_image("qcow2")
    image.path.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(OperationFailedError) as err:
            img.info(image.path)
        assert "Permission denied" in err.value.details
        return
    # root reads anything: the real qemu-img runs as nobody, and its message goes through the
    # same classifier img.info uses (a Python child as nobody could not import ovfkit from a
    # checkout only root can read).
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    proc = subprocess.run(
        [*cmd, "qemu-img", "info", "--output=json", str(image.path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "Permission denied" in proc.stderr, proc.stderr
    err = img.classify_failure("qemu-img info", proc.stderr, proc.returncode)
    assert isinstance(err, OperationFailedError)
    assert not isinstance(err, NotFoundError | OvfkitIOError)
    assert err.code == "SYS.1006" and "Permission denied" in err.details


@contextlib.contextmanager
def _tiny_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr!r}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_out_of_space(make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image("raw", size=4 * MiB, data=[(0, random_bytes(4 * MiB))])
    with _tiny_tmpfs(tmp_path / "small", "1m") as small:
        dst = small / "out.qcow2"
        with pytest.raises(OvfkitIOError) as err:
            img.convert(image.path, dst, src_fmt="raw", dst_fmt="qcow2")
        _only(err.value, OvfkitIOError)
        assert err.value.code == "SYS.1016"
        assert "No space left on device" in err.value.details
        assert not dst.exists()


def test_io_error_messages_are_io() -> None:
    # A real EIO needs a failing device (dm-error), which a test machine may not offer; the
    # mapping is a pure function of qemu-img's stderr, checked here on its exact wording.
    stderr = "qemu-img: error while reading at byte 0: Input/output error\n"
    err = img.classify_failure("qemu-img convert", stderr, 1)
    _only(err, OvfkitIOError)
    assert "Input/output error" in err.details


def test_image_in_use(make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image("qcow2")
    with write_locked(image.path):
        with pytest.raises(img.ImageInUseError) as err:
            img.info(image.path)
        _only(err.value, OperationFailedError)
        assert 'Failed to get shared "write" lock' in err.value.details
        assert img.info(image.path, force_share=True).virtual_size == image.size


def test_qemu_img_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissingError) as err:
        img.info(tmp_path / "x.qcow2")
    assert err.value.code == "SYS.1003"
    assert "qemu-utils" in err.value.details
    with pytest.raises(ToolMissingError):
        img.convert(tmp_path / "a", tmp_path / "b", src_fmt="raw", dst_fmt="raw")


@pytest.mark.parametrize("name", ["-dash.qcow2", "colon:name.qcow2"])
def test_file_names_qemu_would_misread(
    make_image: MakeImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # A leading "-" reads as an option, "x:" as a protocol prefix, unless the path says "./".
    image = make_image("qcow2")
    shutil.copy(image.path, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    assert img.path_arg(name) == "./" + name
    assert img.info(name).format == "qcow2"
    assert img.compare(name, image.raw, "qcow2", "raw")
    assert img.check(name).ok
    img.convert(name, "-out:x.raw", src_fmt="qcow2", dst_fmt="raw")
    assert (tmp_path / "-out:x.raw").read_bytes() == image.read_raw()
