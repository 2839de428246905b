"""Hostile clients against a real ``ovfkit serve``: password guessing from one address."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
