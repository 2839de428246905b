"""The pure parts of the socket edge (ovfkit.server.runner): descriptor budget, raw error
replies, one log line per condition."""

from __future__ import annotations

import json
import logging

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovfkit.errors import OperationTimeoutError
from ovfkit.server.runner import (
    FD_PER_EXPORT,
    FD_RESERVE,
    RepeatFilter,
    connection_limit,
    raw_error_reply,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@given(st.integers(1, 10**6), st.integers(0, 10**6), st.integers(1, 64))
def test_connections_and_accept_batch_fit_the_descriptor_limit(
    wanted: int, nofile: int, workers: int
) -> None:
    connections, batch = connection_limit(wanted, nofile, workers)
    assert 1 <= connections <= wanted
    assert 8 <= batch <= 128
    room = nofile - FD_RESERVE - FD_PER_EXPORT * workers
    if room - 2 * batch >= 1:  # a usable limit: connections plus two batches fit
        assert connections + 2 * batch <= room


def test_raw_error_reply_is_one_valid_http_response() -> None:
    data = raw_error_reply(408, OperationTimeoutError("slow"), (("retry-after", "1"),))
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    response = conn.next_event()
    assert isinstance(response, h11.Response) and response.status_code == 408
    headers = dict(response.headers)
    assert headers[b"connection"] == b"close" and headers[b"retry-after"] == b"1"
    body = conn.next_event()
    assert isinstance(body, h11.Data)
    assert json.loads(body.data) == {"error": OperationTimeoutError("slow").to_error_code()}
    assert isinstance(conn.next_event(), h11.EndOfMessage)


def test_repeat_filter_one_line_per_kind_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    flt = RepeatFilter(60, clock=clock)
    logger = logging.getLogger("ovfkit.test.repeat")
    logger.addFilter(flt)
    try:
        with caplog.at_level(logging.WARNING, logger="ovfkit.test.repeat"):
            for i in range(1000):
                logger.warning("closed a connection from %s", f"10.0.0.{i % 250}")
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                for _ in range(50):
                    logger.exception("accept failed")
            assert [r.getMessage() for r in caplog.records] == [
                "closed a connection from 10.0.0.0", "accept failed",
            ]
            flt.flush()  # the interval is not over: nothing yet
            assert len(caplog.records) == 2
            clock.now += 61
            flt.flush()
            summaries = sorted(r.getMessage() for r in caplog.records[2:])
            assert summaries == [
                "49 more like this in 61 s: accept failed",
                "999 more like this in 61 s: closed a connection from %s",
            ]
            # A condition that goes on stays at one line a minute.
            logger.warning("closed a connection from %s", "10.0.0.1")
            assert len(caplog.records) == 4
            clock.now += 61
            logger.warning("closed a connection from %s", "10.0.0.2")
            assert [r.getMessage() for r in caplog.records[4:]] == [
                "1 more like this in 61 s: closed a connection from %s",
                "closed a connection from 10.0.0.2",
            ]
    finally:
        logger.removeFilter(flt)
