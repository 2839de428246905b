"""Package downloads at the exportUrl: byte ranges per RFC 9110 section 14 and the OpenAPI
document's word on them, errors in ZStack JSON."""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from server_helpers import LiveServer, MiB, run_server, setup_data_dir

from ovfkit.server import openapi_document
from ovfkit.server.downloads import MAX_RANGES, satisfiable_ranges

V1 = "/zstack/v1"


@pytest.fixture(scope="module")
def package(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LiveServer, dict[str, Any]]]:
    data: Path = tmp_path_factory.mktemp("downloads") / "data"
    setup_data_dir(data)
    with run_server(data) as live:
        r = live.export(live.add_vm("dl", disks=(MiB,)))
        assert r.status_code == 200, r.text
        yield live, r.json()["inventory"]


def _get(live: LiveServer, inv: dict[str, Any], rng: str) -> httpx.Response:
    return live.client.get(inv["exportUrl"], headers={"Range": rng})


def _json_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == "SYS.1007"
    return err


@pytest.mark.parametrize("rng", ["bytes=abc", "bytes=", "bytes=9-5", "bytes"])
def test_malformed_range_is_400_json(
    package: tuple[LiveServer, dict[str, Any]], rng: str
) -> None:
    live, inv = package
    assert "Range" in _json_error(_get(live, inv, rng), 400)["details"]


def test_unsatisfiable_range_is_416_json(package: tuple[LiveServer, dict[str, Any]]) -> None:
    live, inv = package
    size = inv["size"]
    r = _get(live, inv, f"bytes={size}-,{size + 10}-{size + 20}")
    _json_error(r, 416)
    assert r.headers["content-range"] == f"bytes */{size}"


def test_multiple_ranges_as_the_openapi_document_says(
    package: tuple[LiveServer, dict[str, Any]],
) -> None:
    live, inv = package
    size = inv["size"]
    whole = live.client.get(inv["exportUrl"]).content
    # Several ranges: 206 multipart/byteranges, one part per range, in order.
    r = _get(live, inv, "bytes=0-9, 512-1023, -16")
    assert r.status_code == 206
    assert r.headers["content-type"].startswith("multipart/byteranges; boundary=")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + r.headers["content-type"].encode() + b"\r\n\r\n" + r.content
    )
    parts = [(p["Content-Range"], p.get_payload(decode=True)) for p in msg.iter_parts()]
    assert parts == [
        (f"bytes 0-9/{size}", whole[:10]),
        (f"bytes 512-1023/{size}", whole[512:1024]),
        (f"bytes {size - 16}-{size - 1}/{size}", whole[-16:]),
    ]
    # Overlapping ranges are merged into one.
    r = _get(live, inv, "bytes=0-99,50-199")
    assert r.status_code == 206 and r.content == whole[:200]
    assert r.headers["content-range"] == f"bytes 0-199/{size}"
    # A range past the end is dropped when another one can be served (RFC 9110 14.1.2).
    r = _get(live, inv, f"bytes=10-19,{size + 5}-")
    assert r.status_code == 206 and r.content == whole[10:20]
    # An unknown unit, or too many ranges, is ignored: the whole file.
    for rng in ("items=0-1", "bytes=" + ",".join(f"{i}-{i}" for i in range(MAX_RANGES + 1))):
        r = _get(live, inv, rng)
        assert r.status_code == 200 and r.content == whole
    # The document says so.
    op = openapi_document()["paths"]["/ova-packages/{token}/{uuid}.ova"]["get"]
    assert "multipart/byteranges" in op["responses"]["206"]["content"]
    for word in ("multipart/byteranges", "merged", "416", "ignored", "400"):
        assert word in op["description"], word


@given(st.text(max_size=60), st.integers(0, 10**6))
def test_satisfiable_ranges_never_fails(header: str, size: int) -> None:
    out = satisfiable_ranges(header, size)
    assert out is None or isinstance(out, str)


def test_satisfiable_ranges_examples() -> None:
    assert satisfiable_ranges("bytes=0-1", 10) == "bytes=0-1"
    assert satisfiable_ranges("bytes=20-,0-1", 10) == "bytes=0-1"
    assert satisfiable_ranges("bytes=20-,30-", 10) == "bytes=20-,30-"  # none: 416
    assert satisfiable_ranges("bytes=-0,-5", 10) == "bytes=-5"
    assert satisfiable_ranges("Bytes=0-1", 10) == "Bytes=0-1"
    assert satisfiable_ranges("pages=1", 10) is None
    assert satisfiable_ranges("nonsense", 10) == "nonsense"
