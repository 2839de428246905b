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
from ovfkit.server.app import CatchAll
from ovfkit.server.bodies import parse_json_object, unknown_keys
from ovfkit.server.errors import (
    MalformedRequestError,
    MethodNotAllowedError,
    NoApiMappingError,
    status_for,
)
from ovfkit.server.jobs import JobForm, job_form
from ovfkit.server.query import QuerySpec
from ovfkit.server.query import query_spec as _query_spec
from ovfkit.server.webhook import check_webhook_url
from ovfkit.zstack.accesskeys import AccessKeyRequestError
from ovfkit.zstack.auth import AuthenticationError, AuthStore, InvalidSessionError
from ovfkit.zstack.context import open_context
from ovfkit.zstack.inventory import QUERY_FIELDS, TAG_FIELDS


def query_spec(items: list[tuple[str, str]]) -> QuerySpec:
    """The image packages' query string, as the service reads it."""
    return _query_spec(items, tuple(QUERY_FIELDS), condition_fields=(*QUERY_FIELDS, *TAG_FIELDS))


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
        [("sortDirection", "ASC")], [("count", "yes")],
        [("start", "1"), ("start", "2")], [("limit", "9" * 30)], [("sort", "-bogus")],
        [("sort", "name"), ("sortBy", "name")], [("fields", "uuid,password")], [("fields", ",")],
        [("groupBy", "install_path")], [("filterName", "x")], [("q", "__tag__=x")],
        [("q", "bogus is null")],
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

def test_unknown_keys_are_listed_not_refused() -> None:
    assert unknown_keys({"a": 1}, ("a", "b")) == []
    assert unknown_keys({"a": 1, "d": 2, "c": 3}, ("a",)) == ["c", "d"]


# -- sessions and statuses --------------------------------------------------------------------


def test_job_form_headers() -> None:
    uuid = "a" * 32
    assert job_form({}, "ExportVmOvaPackage") is None
    assert job_form({"X-Job-Mode": "sync", "X-Job-UUID": uuid}, "DeleteImagePackage") is None
    # The SDKs' X-Job-UUID: the job form with that uuid and ZStack's default apiTimeout.
    assert job_form({"X-Job-UUID": uuid}, "ExportVmOvaPackage") == JobForm(
        uuid, None, 72 * 3600 * 1000
    )
    assert job_form({"X-Web-Hook": "http://h/x"}, "RenewSession") == JobForm(
        None, "http://h/x", 30 * 60 * 1000
    )
    assert job_form(
        {"X-Job-Mode": "async", "X-API-Timeout": "60"}, "UpdateImagePackage"
    ) == JobForm(None, None, 60000)
    for bad in ({"X-Job-UUID": "a" * 31}, {"X-Job-UUID": "a" * 31 + "/"},
                {"X-Job-Mode": "later"}, {"X-Job-Mode": "async", "X-API-Timeout": "-1"},
                {"X-Job-Mode": "async", "X-API-Timeout": "0"}):
        with pytest.raises(MalformedRequestError):
            job_form(bad, "ExportVmOvaPackage")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [("http://127.0.0.1:9/hook", True), ("https://localhost/x?y=1", True),
     ("http://[::1]:8/", True), ("http://10.1.2.3/", False), ("http://example.com/", False),
     ("ftp://127.0.0.1/", False), ("file:///etc/passwd", False), ("http://u:p@127.0.0.1/", False),
     ("http:///nohost", False), ("http://127.0.0.1:99999/", False), ("gopher://x", False)],
)
def test_webhook_urls_loopback_by_default(url: str, allowed: bool) -> None:
    if allowed:
        check_webhook_url(url)
    else:
        with pytest.raises(InvalidArgumentError):
            check_webhook_url(url)


def test_webhook_allowed_list_hosts_and_networks() -> None:
    target = check_webhook_url("http://10.1.2.3:8080/a?b", ("10.0.0.0/8",))
    assert (target.host, target.port, target.path) == ("10.1.2.3", 8080, "/a?b")
    check_webhook_url("https://Hooks.Example.com/", ("hooks.example.com",))
    with pytest.raises(InvalidArgumentError, match="not allowed"):
        check_webhook_url("http://127.0.0.1/", ("10.0.0.0/8",))


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (MalformedRequestError("x"), 400),
        (AccessKeyRequestError("x"), 400),
        (AccessKeyRequestError("requestTimeTooSkewed", status=403), 403),
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
