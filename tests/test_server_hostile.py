"""Hostile clients against a real ``ovfkit serve``: password guessing from one address, slow
clients with the service's file-descriptor limit lowered, malformed HTTP."""

from __future__ import annotations

import json
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_helpers import PASSWORD, USER, LiveServer, run_server, setup_data_dir

from ovfkit.zstack.auth import wire_password

V1 = "/zstack/v1"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data: Path = tmp_path_factory.mktemp("hostile") / "data"
    setup_data_dir(data)
    with run_server(data) as server:
        yield server


def _login(client: httpx.Client, password: str) -> httpx.Response:
    return client.put(
        f"{V1}/accounts/login",
        json={"logInByAccount": {"accountName": USER, "password": wire_password(password)}},
    )


def test_a_guesser_cannot_lock_admin_out_for_others(live: LiveServer) -> None:
    # The guesser connects from another loopback address (Linux routes all of 127/8 to lo).
    guesser = httpx.Client(
        base_url=live.url,
        timeout=30,
        transport=httpx.HTTPTransport(local_address="127.0.0.2"),
    )
    with guesser:
        statuses = [_login(guesser, f"guess {i}").status_code for i in range(12)]
        assert statuses[:6] == [401] * 6, statuses
        # Backing off (a 401 only if a wait ran out on a slow machine), never locked out.
        assert 429 in statuses[6:] and set(statuses[6:]) <= {401, 429}, statuses
        r = _login(guesser, PASSWORD)  # the right password from the failing client: wait
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "ID.1000"
        assert int(r.headers["retry-after"]) >= 1
        assert "from this client" in r.json()["error"]["details"]
    # Everyone else logs in as admin at once.
    r = _login(live.client, PASSWORD)
    assert r.status_code == 200, r.text


# -- slow clients, with a lowered file-descriptor limit -----------------------------------------

FD_LIMIT = 256  # the service then admits 256 - 64 - 32 * export workers connections


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _connect(live: LiveServer, first: bytes = b"") -> socket.socket:
    port = int(live.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if first:
        sock.sendall(first)
    return sock


def _answer(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (bounded by ``timeout``)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def _json_error(answer: bytes, status: int, code: str) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
    assert b"content-type: application/json" in head.lower(), head
    err: dict[str, Any] = json.loads(body)["error"]
    assert err["code"] == code, err
    return err


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data: Path = tmp_path_factory.mktemp("slow") / "data"
    setup_data_dir(data)
    with run_server(
        data, "--header-timeout", "2", "--body-timeout", "2", "--export-workers", "2",
        preexec_fn=_low_fd_limit,
    ) as server:
        yield server


def test_half_sent_headers_neither_exhaust_descriptors_nor_flood_the_log(
    guarded: LiveServer,
) -> None:
    before = len(guarded.log())
    slow = [_connect(guarded, b"GET /zstack/v1/openapi.json HTTP/1.1\r\nHost: x\r\n")
            for _ in range(FD_LIMIT + 150)]
    try:
        # More half-sent requests than the service has descriptors, and it still answers: at
        # once with 503 in ZStack JSON while every connection is young, then by taking the
        # place of the oldest half-sent request.
        deadline = time.monotonic() + 10
        while (r := httpx.get(f"{guarded.url}{V1}/openapi.json", timeout=20)).status_code != 200:
            assert r.status_code == 503 and r.json()["error"]["code"] == "SYS.1006", r.text
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # Every slow client is answered in ZStack JSON and closed: 503 when it came while the
        # service was full of younger connections; 408 when it had to make room or when its
        # header timeout ran out.
        statuses = set()
        for sock in slow:
            answer = _answer(sock, 15)
            if answer.startswith(b"HTTP/1.1 503 "):
                _json_error(answer, 503, "SYS.1006")
                statuses.add(503)
            else:
                assert "headers" in _json_error(answer, 408, "SYS.1001")["details"]
                statuses.add(408)
        assert 408 in statuses
    finally:
        for sock in slow:
            sock.close()
    log = guarded.log()[before:]
    assert "Traceback" not in log and "Too many open files" not in log, log
    # One line per condition (at most a minute's summary besides), not one per connection.
    assert len(log.splitlines()) <= 4, log


def test_a_body_that_never_comes_is_timed_out(guarded: LiveServer) -> None:
    sock = _connect(
        guarded,
        b"PUT /zstack/v1/accounts/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{\"logInByAccount\"",
    )
    with sock:
        err = _json_error(_answer(sock, 15), 408, "SYS.1001")
        assert "body" in err["details"]


def test_at_the_limit_with_every_connection_busy_new_ones_get_503_json(
    guarded: LiveServer,
) -> None:
    # Requests whose bodies trickle in keep their connections busy (not idle, so not evictable).
    busy = [
        _connect(
            guarded,
            b"PUT /zstack/v1/accounts/login HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 100\r\n\r\n{",
        )
        for _ in range(FD_LIMIT)
    ]
    try:
        extra = _connect(guarded)
        with extra:
            err = _json_error(_answer(extra, 15), 503, "SYS.1006")
            assert "connections open" in err["details"]
    finally:
        for sock in busy:
            sock.close()
    # Once they are gone, the service answers again.
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(f"{guarded.url}{V1}/openapi.json", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"BLAH\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"PUT /zstack/v1/accounts/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"\r\nzz\r\n",
    ],
)
def test_malformed_http_is_answered_in_zstack_json(
    guarded: LiveServer, request_bytes: bytes
) -> None:
    with _connect(guarded, request_bytes) as sock:
        err = _json_error(_answer(sock, 15), 400, "SYS.1007")
        assert "not valid HTTP/1.1" in err["details"]
