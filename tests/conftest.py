"""Shared fixtures.

``make_image`` builds small disk images with the real qemu-img, plus the raw file the guest would
see, so any test can compare what it reads or writes against bytes nobody here computed:

    def test_x(make_image):
        img = make_image("qcow2-backing", size=3 * MiB + 512)
        img.path      # the image (Path); img.format its qemu format name
        img.raw       # a raw file with the guest-visible bytes (qemu-img convert -O raw)
        img.size      # virtual size in bytes
        img.backing   # base image for "qcow2-backing", else None

Kinds: ``raw`` (sparse file), ``qcow2``, ``qcow2-compressed`` (``convert -c``), ``qcow2-backing``
(a qcow2 over a qcow2 base: some data only in the base, some overwritten in the top, a zero
cluster in the top hiding base data), ``vmdk`` (monolithicSparse), ``vmdk-stream``
(streamOptimized as qemu-img writes it). ``data`` is a list of (offset, bytes) written into an
otherwise empty disk; None gives ``default_pattern(size)`` (random, text-like, explicit zeros,
data in the last sector). ``data=[]`` gives an empty disk.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# The demo (scripts/ovfkit_demo.py) is not part of the package; tests use its helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

KiB = 1024
MiB = 1024 * KiB

Chunks = Sequence[tuple[int, bytes]]


@dataclass(frozen=True)
class MadeImage:
    path: Path
    format: str
    raw: Path
    size: int
    backing: Path | None = None

    def read_raw(self) -> bytes:
        return self.raw.read_bytes()


MakeImage = Callable[..., MadeImage]


def text_like(n: int, seed: int = 1) -> bytes:
    """Compressible bytes that are not trivially repetitive (words from a small vocabulary)."""
    rng = random.Random(seed)
    words = [b"disk", b"grain", b"sector", b"ovf", b"marker", b"zstack", b"qemu", b"table\n"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def random_bytes(n: int, seed: int = 2) -> bytes:
    return random.Random(seed).randbytes(n)


def default_pattern(size: int) -> list[tuple[int, bytes]]:
    """A mix that exercises extents: random data at 0, text across a 64 KiB boundary at an odd
    offset, allocated zeros, and data in the last sector. Chunks beyond ``size`` are dropped."""
    chunks = [
        (0, random_bytes(64 * KiB)),
        (MiB - 1000, text_like(200 * KiB)),
        (2 * MiB, bytes(128 * KiB)),  # zeros written explicitly (allocated in raw)
        (2 * MiB + 200 * KiB, random_bytes(3000, seed=3)),
        (size - 512, b"last sector " + bytes(500)),
    ]
    return [(o, d) for o, d in chunks if o >= 0 and o + len(d) <= size]


def write_raw(path: Path, size: int, data: Chunks) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, chunk in data:
            f.seek(offset)
            f.write(chunk)


def qemu_img(*args: str | os.PathLike[str]) -> None:
    subprocess.run(["qemu-img", *(os.fspath(a) for a in args)], check=True, capture_output=True)


@contextlib.contextmanager
def write_locked(image: Path, fmt: str = "qcow2") -> Iterator[None]:
    """A writable qemu-nbd holds the image's write lock while inside, as a running VM's qemu
    does; its socket beside the image is waited for (10 s at most)."""
    sock = image.with_name(image.name + ".nbd.sock")
    holder = subprocess.Popen(
        ["qemu-nbd", "--persistent", f"--socket={sock}", f"--format={fmt}", str(image)],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        yield
    finally:
        holder.terminate()
        holder.wait(10)


def _qemu_io(path: Path, fmt: str, command: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", fmt, "-c", command, os.fspath(path)], check=True, capture_output=True
    )


@pytest.fixture
def make_image(tmp_path: Path) -> MakeImage:
    counter = iter(range(1_000_000))

    def make(
        kind: str = "raw",
        size: int = 4 * MiB,
        data: Chunks | None = None,
        *,
        name: str | None = None,
    ) -> MadeImage:
        chunks = list(default_pattern(size) if data is None else data)
        stem = name or f"{kind}-{next(counter)}"
        raw = tmp_path / f"{stem}.raw"
        write_raw(raw, size, chunks)
        if kind == "raw":
            return MadeImage(raw, "raw", raw, size)
        path = tmp_path / f"{stem}.{kind.split('-')[0]}"
        backing = None
        if kind == "qcow2":
            qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, path)
        elif kind == "qcow2-compressed":
            qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", raw, path)
        elif kind == "vmdk":
            qemu_img("convert", "-f", "raw", "-O", "vmdk", raw, path)
        elif kind == "vmdk-stream":
            qemu_img(
                "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, path
            )
        elif kind == "qcow2-backing":
            backing = tmp_path / f"{stem}.base.qcow2"
            _make_chain(tmp_path / stem, size, chunks, backing, path)
        else:
            raise ValueError(f"unknown image kind {kind!r}")
        # The guest-visible bytes, as qemu itself reads them.
        raw.unlink()
        qemu_img("convert", "-f", kind.split("-")[0], "-O", "raw", path, raw)
        return MadeImage(path, kind.split("-")[0], raw, size, backing)

    return make


def _make_chain(stem: Path, size: int, chunks: Chunks, base: Path, top: Path) -> None:
    """Base gets every even chunk plus filler over the odd chunks' places; the top (rebased
    unsafely onto the base) gets the odd chunks, and a zero cluster over the base's first
    cluster when the base has data there, so the chain hides base data in both ways."""
    base_raw = Path(f"{stem}.base.raw")
    top_raw = Path(f"{stem}.top.raw")
    filler = [(o, b"\xee" * len(d)) for o, d in chunks[1::2]]
    write_raw(base_raw, size, [*filler, *chunks[0::2]])
    write_raw(top_raw, size, chunks[1::2])
    qemu_img("convert", "-f", "raw", "-O", "qcow2", base_raw, base)
    qemu_img("convert", "-f", "raw", "-O", "qcow2", top_raw, top)
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", base.name, "-F", "qcow2", top)
    if size >= 128 * KiB:
        _qemu_io(top, "qcow2", f"write -z {64 * KiB} {64 * KiB}")
    base_raw.unlink()
    top_raw.unlink()


def _qemu_nbds_serving(under: str) -> set[int]:
    """Live qemu-nbd processes serving an image under ``under`` (this test run's temp root),
    whoever started them: the test, an ``ovfkit serve`` it ran, a child it killed."""
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                head, _, rest = f.read().rpartition(b")")
            if not head.endswith(b"(qemu-nbd") or rest.split()[0] == b"Z":
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if under.encode() in f.read():
                    found.add(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


@pytest.fixture(autouse=True, scope="module")
def _no_qemu_nbd_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every qemu-nbd a test (or what it runs) starts is ended on every path: one still
    serving a few seconds after a test module's last test is a leak, reported as an error of
    that module (and ended, so one leak does not pile up). Per module, not per test: a look
    through /proc costs ~5 ms."""
    under = str(tmp_path_factory.getbasetemp())
    before = _qemu_nbds_serving(under)
    yield
    left = _qemu_nbds_serving(under) - before
    deadline = time.monotonic() + 5
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left &= _qemu_nbds_serving(under)
    if left:
        described = []
        for pid in sorted(left):
            with contextlib.suppress(OSError):
                described.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        pytest.fail(f"qemu-nbd left running by this module's tests: {described}")
