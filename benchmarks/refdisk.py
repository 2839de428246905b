"""Deterministic reference disk for the disk benchmarks.

At ``--scale 1``: a 4 GiB virtual raw file, sparse, holding ~0.9 GiB of random bytes
(incompressible, like media or encrypted files), ~1 GiB of text-like bytes (log lines and prose,
deflating about 3-4x like real text), ~0.3 GiB of written, really allocated zeros (what a freed,
never-trimmed filesystem area looks like), and holes for the rest. The three kinds are laid out
in interleaved extents of 64 KiB to 8 MiB, 4 KiB aligned, at random offsets, as a filesystem would
scatter them; the first and the last 4 KiB of the disk carry data (partition table, backup GPT).

Same ``seed`` and ``scale`` → the same bytes, on any machine: random bytes come from AES-128-CTR
keyed by SHA-256 of the seed (``os.urandom`` is not reproducible; ``random.randbytes`` is 15x
slower), everything else from ``random.Random(seed)``. Generation runs at disk speed.

    python -m benchmarks.refdisk OUT.raw [--scale 0.01] [--seed 1] [--qcow2 OUT.qcow2]

``--qcow2`` also converts it with ``qemu-img convert -O qcow2`` (qemu turns the written zeros into
unallocated clusters, so the qcow2 has data and holes only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["Extent", "RefDisk", "layout", "main", "make_refdisk", "text_pool"]

GIB = 1 << 30
MIB = 1 << 20
BLOCK = 4096
_BASE = {"virtual": 4 * GIB, "random": int(0.9 * GIB), "text": 1 * GIB, "zero": int(0.3 * GIB)}
_WRITE_CHUNK = 4 * MIB


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    kind: str  # "random" | "text" | "zero"


@dataclass(frozen=True)
class RefDisk:
    path: str
    virtual_size: int
    random_bytes: int
    text_bytes: int
    zero_bytes: int
    extents: int
    seed: int
    scale: float
    seconds: float
    qcow2: str | None = None


def _align(n: int) -> int:
    return max(BLOCK, n // BLOCK * BLOCK)


def layout(scale: float = 1.0, seed: int = 1) -> list[Extent]:
    """The extents of the reference disk, in offset order (holes are the gaps)."""
    if not 0 < scale <= 64:
        raise ValueError(f"scale must be in (0, 64], not {scale}")
    rng = random.Random(f"refdisk-layout-{seed}")
    virtual = _align(int(_BASE["virtual"] * scale))
    budget = {k: _align(int(_BASE[k] * scale)) for k in ("random", "text", "zero")}
    max_len = max(64 * 1024, min(8 * MIB, _align(virtual // 64)))
    pieces: list[tuple[str, int]] = []
    left = dict(budget)
    while any(left.values()):
        kinds = [k for k in left if left[k] > 0]
        kind = rng.choices(kinds, weights=[left[k] for k in kinds])[0]
        size = min(left[kind], _align(int(rng.uniform(64 * 1024, max_len))))
        pieces.append((kind, size))
        left[kind] -= size
    # The first piece sits at offset 0 and the last one ends at the end of the disk; the hole
    # budget is spread over the gaps between them.
    holes = virtual - sum(size for _, size in pieces)
    if holes < 0:
        raise ValueError("data does not fit in the virtual size")
    cuts = sorted(rng.randrange(0, holes // BLOCK + 1) * BLOCK for _ in range(len(pieces) - 1))
    gaps = [b - a for a, b in zip([0, *cuts], [*cuts, holes], strict=True)]
    extents = []
    offset = 0
    for i, (kind, size) in enumerate(pieces):
        if i > 0:
            offset += gaps[i - 1]
        extents.append(Extent(offset, size, kind))
        offset += size
    # the remaining gap goes before the last piece, so the disk ends with data
    if len(pieces) > 1:
        last = extents[-1]
        extents[-1] = Extent(virtual - last.length, last.length, last.kind)
    return extents


_SYLLABLES = (
    "ka",
    "ri",
    "to",
    "ne",
    "mu",
    "sa",
    "lo",
    "vi",
    "de",
    "ta",
    "pe",
    "ro",
    "an",
    "el",
    "is",
    "on",
    "ur",
    "ex",
    "in",
    "al",
    "st",
    "ch",
    "th",
    "qu",
    "er",
    "or",
    "ar",
)
_SERVICES = ("sshd", "kernel", "systemd", "nginx", "cron", "dockerd", "kubelet", "postfix")
_LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")


LOG_SHARE = 0.75
VOCABULARY = 3000


def _stamp(second: int, _cache: dict[int, str] = {}) -> str:  # noqa: B006 - a memo
    text = _cache.get(second)
    if text is None:
        text = _cache[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return text


def text_pool(seed: int = 1, size: int = 2 * MIB) -> bytes:
    """``size`` bytes of log lines and prose from a Zipf-like vocabulary: deflates about 3-4x,
    like real text. The pool is larger than deflate's 32 KiB window, so slicing it never gives
    a compressor an easy repeat."""
    rng = random.Random(f"refdisk-text-{seed}")
    vocab = [
        "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(VOCABULARY)
    ]
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    words = iter(rng.choices(vocab, weights=weights, k=size // 3))
    hosts = [f"node-{i:02d}" for i in range(8)]
    procs = [f"{svc}[{rng.randint(100, 65000)}]" for svc in _SERVICES for _ in range(3)]
    out: list[str] = []
    total = 0
    t = 1_700_000_000.0
    while total < size:
        if rng.random() < LOG_SHARE:
            t += rng.expovariate(5.0)
            line = (
                f"{_stamp(int(t))}.{int(t % 1 * 1e6):06d}Z "
                f"{rng.choice(hosts)} {rng.choice(procs)}: "
                f"{rng.choice(_LEVELS)} {' '.join(next(words) for _ in range(rng.randint(3, 9)))}"
                f" id={rng.getrandbits(24):06x} took {int(rng.expovariate(0.05))}ms\n"
            )
        else:
            n = rng.randint(6, 18)
            line = " ".join(next(words) for _ in range(n)).capitalize() + ".\n"
        out.append(line)
        total += len(line)
    return "".join(out).encode()[:size]


def _random_stream(seed: int) -> Iterator[bytes]:
    key = hashlib.sha256(f"refdisk-random-{seed}".encode()).digest()[:16]
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    zeros = bytes(_WRITE_CHUNK)
    while True:
        yield enc.update(zeros)


def _take(stream: Iterator[bytes], n: int, rest: bytearray) -> bytes:
    while len(rest) < n:
        rest += next(stream)
    out = bytes(rest[:n])
    del rest[:n]
    return out


def make_refdisk(
    path: str,
    *,
    scale: float = 1.0,
    seed: int = 1,
    qcow2: str | None = None,
) -> RefDisk:
    """Write the reference disk to ``path`` (raw, sparse); optionally convert it to ``qcow2``."""
    start = time.perf_counter()
    extents = layout(scale, seed)
    virtual = _align(int(_BASE["virtual"] * scale))
    pool = text_pool(seed)
    text_rng = random.Random(f"refdisk-slices-{seed}")
    rand = _random_stream(seed)
    rand_rest = bytearray()
    zeros = bytes(_WRITE_CHUNK)
    sums = {"random": 0, "text": 0, "zero": 0}
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.truncate(virtual)
        for ext in extents:
            f.seek(ext.offset)
            done = 0
            while done < ext.length:
                n = min(_WRITE_CHUNK, ext.length - done)
                if ext.kind == "random":
                    f.write(_take(rand, n, rand_rest))
                elif ext.kind == "zero":
                    f.write(zeros[:n])
                else:
                    f.write(_text_slice(pool, text_rng, n))
                done += n
            sums[ext.kind] += ext.length
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if qcow2 is not None:
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", path, qcow2],
            check=True,
        )
    return RefDisk(
        path=path,
        virtual_size=virtual,
        random_bytes=sums["random"],
        text_bytes=sums["text"],
        zero_bytes=sums["zero"],
        extents=len(extents),
        seed=seed,
        scale=scale,
        seconds=time.perf_counter() - start,
        qcow2=qcow2,
    )


def _text_slice(pool: bytes, rng: random.Random, n: int) -> bytes:
    """``n`` bytes made of pool slices of 4-64 KiB starting at random places."""
    parts = []
    got = 0
    while got < n:
        size = min(n - got, rng.randint(4096, 65536))
        at = rng.randrange(0, len(pool) - size)
        parts.append(pool[at : at + size])
        got += size
    return b"".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="raw image to write")
    parser.add_argument("--scale", type=float, default=1.0, help="size factor (1 = 4 GiB)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--qcow2", metavar="PATH", help="also convert to this qcow2 file")
    args = parser.parse_args(argv)
    info = make_refdisk(args.output, scale=args.scale, seed=args.seed, qcow2=args.qcow2)
    written = info.random_bytes + info.text_bytes + info.zero_bytes
    figures = {**asdict(info), "write_mb_per_s": round(written / info.seconds / 1e6, 1)}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
