"""The service's pure parts (query strings, bodies, session header, status mapping, OpenAPI
document against the routes) and the last-resort error net, in process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ovfkit.errors import (
    InvalidArgumentError,
    NotFoundError,
    OperationFailedError,
    OvfkitIOError,
    OvfParseError,
)
from ovfkit.server import Backend, create_app, openapi_document
from ovfkit.server.app import CatchAll, query_spec, session_token
from ovfkit.server.bodies import check_keys, parse_json_object
from ovfkit.server.errors import (
    MalformedRequestError,
    MethodNotAllowedError,
    NoApiMappingError,
    status_for,
)
from ovfkit.zstack.auth import AuthenticationError, AuthStore, InvalidSessionError
from ovfkit.zstack.context import open_context

# -- query strings ----------------------------------------------------------------------------


def test_query_spec_reads_zstack_parameters() -> None:
    spec = query_spec(
        [("q", "name=a"), ("q", "size>3"), ("limit", "5"), ("start", "10"),
         ("sortBy", "createDate"), ("sortDirection", "desc"), ("replyWithCount", "true")]
    )
    assert spec.conditions == ("name=a", "size>3")
    assert (spec.limit, spec.start, spec.sort_by, spec.descending) == (5, 10, "createDate", True)
    assert spec.with_count and not spec.count_only
    assert query_spec([]).limit is None


@pytest.mark.parametrize(
    ("sort", "expected"),
    [("+name", ("name", False)), ("-size", ("size", True)), (" name", ("name", False)),
     ("createDate", ("createDate", False))],
)
def test_query_spec_sort_as_zstack_sdk_sends_it(sort: str, expected: tuple[str, bool]) -> None:
    spec = query_spec([("sort", sort)])
    assert (spec.sort_by, spec.descending) == expected


def test_query_spec_fields() -> None:
    assert query_spec([("fields", "uuid,name")]).fields == ("uuid", "name")


@pytest.mark.parametrize(
    "items",
    [
        [("q", "bogus=1")], [("q", "=1")], [("q", "nothing")], [("limit", "-1")],
        [("limit", "1e3")], [("start", "")], [("sortBy", "install_path")],
        [("sortDirection", "ASC ")], [("count", "yes")], [("x", "1")],
        [("start", "1"), ("start", "2")], [("limit", "9" * 30)], [("sort", "-bogus")],
        [("sort", "name"), ("sortBy", "name")], [("fields", "uuid,password")], [("fields", ",")],
        [("groupBy", "name")], [("filterName", "x")],
    ],
)
def test_query_spec_refuses(items: list[tuple[str, str]]) -> None:
    with pytest.raises(MalformedRequestError):
        query_spec(items)


@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=20)), max_size=5))
def test_query_spec_never_fails_otherwise(items: list[tuple[str, str]]) -> None:
    with contextlib.suppress(MalformedRequestError):
        query_spec(items)


# -- bodies -----------------------------------------------------------------------------------


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
))
def test_parse_json_object_round_trip_or_400(value: Any) -> None:
    body = json.dumps(value).encode()
    if isinstance(value, dict):
        assert parse_json_object(body) == value
    else:
        with pytest.raises(MalformedRequestError, match="must be a JSON object"):
            parse_json_object(body)


@given(st.binary(max_size=64))
def test_parse_json_object_any_bytes(body: bytes) -> None:
    with contextlib.suppress(MalformedRequestError):
        assert isinstance(parse_json_object(body), dict)



@pytest.mark.parametrize(
    "body", [rb'{"name": "\ud800"}', rb'{"a": ["x\udfff"]}', rb'{"\udc00": 1}']
)
def test_parse_json_object_refuses_unpaired_surrogates(body: bytes) -> None:
    # json.loads accepts them, then SQLite's UTF-8 encoding failed: a 503 SYS.1000 in the
    # export's reply instead of a 400 for the malformed body.
    with pytest.raises(MalformedRequestError, match="surrogate"):
        parse_json_object(body)
    assert parse_json_object(rb'{"name": "\ud83d\ude00"}') == {"name": "\U0001f600"}

def test_check_keys_names_the_first_unknown_key() -> None:
    check_keys({"a": 1}, ("a", "b"), "x")
    with pytest.raises(MalformedRequestError, match=r"unknown field\[c\] in x"):
        check_keys({"a": 1, "d": 2, "c": 3}, ("a",), "x")


# -- sessions and statuses --------------------------------------------------------------------


def test_session_token() -> None:
    assert session_token("OAuth abc") == "abc"
    assert session_token("oauth   abc ") == "abc"
    for bad in (None, "", "OAuth", "Basic abc", "OAuth a b", "abc"):
        with pytest.raises(InvalidSessionError):
            session_token(bad)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (MalformedRequestError("x"), 400),
        (AuthenticationError("x"), 401),
        (InvalidSessionError("x"), 401),
        (NoApiMappingError("x"), 404),
        (MethodNotAllowedError("x"), 405),
        (NotFoundError("x"), 503),  # ZStack: a failed API call is 503 whatever its code
        (InvalidArgumentError("x"), 503),
        (OperationFailedError("x"), 503),
        (OvfkitIOError("x"), 503),
        (OvfParseError("x"), 503),
    ],
)
def test_status_for(error: Any, status: int) -> None:
    assert status_for(error) == status


# -- the OpenAPI document matches the routes --------------------------------------------------


def test_openapi_covers_every_route_and_nothing_else(tmp_path: Path) -> None:
    app = create_app(Backend(open_context(tmp_path)), AuthStore(tmp_path))
    routed: set[tuple[str, str]] = set()
    for route in app.routes:
        path = getattr(route, "path")  # noqa: B009
        for method in getattr(route, "methods") or ():  # noqa: B009
            if method != "HEAD":
                routed.add((path, method.lower()))
    doc = openapi_document()
    documented = {
        (path, method) for path, item in doc["paths"].items() for method in item
        if method != "parameters"
    }
    assert routed == documented
    # Every $ref resolves.
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        node: Any = doc
        for key in ref.removeprefix("#/").split("/"):
            node = node[key]


# -- the last net -----------------------------------------------------------------------------


def _call(app: Any, method: str, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path)

    return asyncio.run(go())


def test_catch_all_turns_a_bug_into_sys_1000(caplog: pytest.LogCaptureFixture) -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("secret internal detail")

    app = Starlette(routes=[Route("/boom", boom)], middleware=[Middleware(CatchAll)])
    with caplog.at_level(logging.ERROR, logger="ovfkit.server"):
        r = _call(app, "GET", "/boom")
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "SYS.1000"
    assert "secret" not in r.text and "Traceback" not in r.text
    assert "secret internal detail" in caplog.text  # the log has it


class _BrokenBackend(Backend):
    """A backend whose query hits a bug (fault injection for the service's error path)."""

    def query(self, *args: Any, **kwargs: Any) -> Any:
        raise KeyError("bug")


def test_service_answers_503_for_a_backend_bug(tmp_path: Path) -> None:
    auth = AuthStore(tmp_path)
    auth.create_account("admin", "pw")
    session = auth.login("admin", "pw")
    app = create_app(_BrokenBackend(open_context(tmp_path)), auth)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(
                "/zstack/v1/image-packages", headers={"Authorization": f"OAuth {session.uuid}"}
            )

    r = asyncio.run(go())
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "SYS.1000"
    assert "KeyError" not in r.text
