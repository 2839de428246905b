"""The Starlette application: routes, session checks, error mapping, the export worker pool.

Handlers are thin: they read and check the request (:mod:`.bodies`), call the function layer
(:mod:`ovfkit.zstack.api` through :class:`.backend.Backend`) in a worker thread, and shape the
answer as ZStack does. Status codes: see :mod:`.errors`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import (
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    NotReadyError,
    OvfkitError,
)
from ..zstack.auth import AuthStore, InvalidSessionError, Session
from ..zstack.inventory import (
    ExportVmOvaPackageRequest,
    Reply,
    parse_condition,
)
from .backend import Backend
from .bodies import (
    DEFAULT_BODY_LIMIT,
    check_keys,
    optional_str,
    parse_json_object,
    read_body,
    string_list,
    sub_object,
)
from .downloads import PackageFileResponse
from .drain import ExportGate
from .errors import (
    MalformedRequestError,
    MethodNotAllowedError,
    NoApiMappingError,
    error_response,
    status_for,
)
from .jobs import Job, JobRegistry
from .openapi import openapi_document
from .vmjson import vm_to_json

__all__ = ["JOB_MODE_HEADER", "ServiceConfig", "create_app"]

log = logging.getLogger("ovfkit.server")

JOB_MODE_HEADER = "X-Job-Mode"
V1 = "/zstack/v1"

_EXPORT_FIELDS = ("name", "description", "vmUuid", "backupStorageUuid", "resourceUuid", "tagUuids")
_TAGS = ("systemTags", "userTags")
_QUERY_PARAMS = (
    "q", "limit", "start", "sort", "sortBy", "sortDirection", "replyWithCount", "count", "fields",
)
# Sent by ZStack's SDK only when the caller sets them; not supported here, refused by name.
_UNSUPPORTED_QUERY = ("groupBy", "filterName")
# ZStack's SDK sends these API parameters in the body (or the query string for DELETE) besides
# the API's own fields; requestIp is also sent as a header.
_COMMON = ("systemTags", "userTags", "requestIp")


@dataclass(frozen=True)
class ServiceConfig:
    """What ``ovfkit serve`` sets: limits and worker counts."""

    body_limit: int = DEFAULT_BODY_LIMIT
    export_workers: int = max(2, min(4, os.cpu_count() or 2))
    job_keep: float = 3600.0


class JobNotFoundError(NotFoundError):
    pass


@dataclass
class _State:
    backend: Backend
    auth: AuthStore
    config: ServiceConfig
    jobs: JobRegistry
    limiter: anyio.CapacityLimiter
    # Running exports and the shutdown: at SIGTERM new exports are refused, running ones get a
    # grace period, then stop at their next check and roll back (SYS.1017), so a restart never
    # waits on, nor finds, a half-written package.
    gate: ExportGate = field(default_factory=ExportGate)


def _state(request: Request) -> _State:
    state: _State = request.app.state.ovfkit
    return state


def _check_common(obj: Mapping[str, Any], where: str) -> None:
    for key in _TAGS:
        string_list(obj, key, where)
    optional_str(obj, "requestIp", where)


# -- sessions ---------------------------------------------------------------------------------


def session_token(header: str | None) -> str:
    """The session uuid of an ``Authorization: OAuth <uuid>`` header; ID.1001 otherwise."""
    if header is None:
        raise InvalidSessionError(
            "missing Authorization header: log in with PUT /zstack/v1/accounts/login and send "
            "'Authorization: OAuth <session uuid>'"
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "oauth" or not token or " " in token:
        raise InvalidSessionError("Authorization header must be 'OAuth <session uuid>'")
    return token


async def require_session(request: Request) -> Session:
    token = session_token(request.headers.get("authorization"))
    return await run_in_threadpool(_state(request).auth.validate, token)


# -- accounts ---------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    state = _state(request)
    body = parse_json_object(await read_body(request, state.config.body_limit))
    check_keys(body, ("logInByAccount", *_TAGS), "the request body")
    for key in _TAGS:
        string_list(body, key, "the request body")
    msg = sub_object(body, "logInByAccount")
    where = "logInByAccount"
    check_keys(
        msg,
        ("accountName", "password", "accountType", "captchaUuid", "verifyCode", "clientInfo",
         *_COMMON),
        where,
    )
    _check_common(msg, where)
    name = optional_str(msg, "accountName", where)
    password = optional_str(msg, "password", where)
    for key in ("accountType", "captchaUuid", "verifyCode"):
        optional_str(msg, key, where)
    if name is None or password is None:
        missing = "accountName" if name is None else "password"
        raise MalformedRequestError(
            f"field[{missing}] of message[APILogInByAccountMsg] is mandatory, can not be null"
        )
    client = request.client.host if request.client else None
    session = await run_in_threadpool(
        lambda: state.auth.login(name, password, client=client)
    )
    return JSONResponse({"inventory": session.to_inventory()})


async def logout(request: Request) -> Response:
    uuid = request.path_params["uuid"]
    await run_in_threadpool(_state(request).auth.logout, uuid)
    return JSONResponse({})


# -- export -----------------------------------------------------------------------------------


def export_request_from_body(body: Mapping[str, Any]) -> ExportVmOvaPackageRequest:
    """Check the body's keys and JSON types (400 on any fault), then build the request."""
    check_keys(body, ("params", *_EXPORT_FIELDS, *_COMMON), "the request body")
    _check_common(body, "the request body")
    params = sub_object(body, "params", required=False)
    check_keys(params, (*_EXPORT_FIELDS, *_COMMON), "params")
    _check_common(params, "params")
    try:
        return ExportVmOvaPackageRequest.from_json(body)
    except InvalidArgumentError as exc:
        raise MalformedRequestError(exc.details) from None


def reply_answer(reply: Reply) -> tuple[int, dict[str, Any]]:
    """ZStack's answer for a finished call: 200 with the inventory, 503 with the error."""
    return (200 if reply.success else 503), reply.to_json()


def _async_mode(request: Request) -> bool:
    value = request.headers.get(JOB_MODE_HEADER)
    if value is None or value.strip().lower() == "sync":
        return False
    if value.strip().lower() == "async":
        return True
    raise MalformedRequestError(f"{JOB_MODE_HEADER} must be 'sync' or 'async', not {value!r}")


async def _run_export(state: _State, req: ExportVmOvaPackageRequest) -> tuple[int, dict[str, Any]]:
    gate = state.gate
    try:
        async with gate.running():
            reply = await anyio.to_thread.run_sync(
                lambda: state.backend.export(req, cancel=gate.stopping), limiter=state.limiter
            )
    except OvfkitError as exc:
        return status_for(exc), {"error": exc.to_error_code()}
    except Exception:
        log.exception("export of vm %s failed unexpectedly", req.vm_uuid)
        err = InternalError(f"unexpected failure while exporting vm[uuid:{req.vm_uuid}]")
        return 503, {"error": err.to_error_code()}
    status, body = reply_answer(reply)
    if "error" in body:
        body["error"] = gate.shutdown_error(body["error"])
    return status, body


async def export_package(request: Request) -> Response:
    state = _state(request)
    session = await require_session(request)
    asynchronous = _async_mode(request)
    body = parse_json_object(await read_body(request, state.config.body_limit))
    req = export_request_from_body(body)
    if not asynchronous:
        status, answer = await _run_export(state, req)
        return JSONResponse(answer, status_code=status)
    job = state.jobs.create(session.account_uuid)
    request.app.state.ovfkit_tasks.start_soon(_job_runner(state, job, req))
    location = str(request.url_for("api_job", uuid=job.uuid))
    return JSONResponse({"location": location}, status_code=202)


def _job_runner(
    state: _State, job: Job, req: ExportVmOvaPackageRequest
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        status, answer = await _run_export(state, req)
        state.jobs.finish(job, status, answer)

    return run


async def api_job(request: Request) -> Response:
    state = _state(request)
    session = await require_session(request)
    uuid = request.path_params["uuid"]
    job = state.jobs.get(uuid)
    if job is None or job.owner != session.account_uuid:
        raise JobNotFoundError(f"no api job[uuid:{uuid}] found (finished jobs are kept "
                               f"{state.config.job_keep:.0f} s, and not across restarts)")
    if job.status is None or job.body is None:
        return JSONResponse({}, status_code=202)
    return JSONResponse(job.body, status_code=job.status)


# -- image packages ---------------------------------------------------------------------------


def _bool_param(value: str, name: str) -> bool:
    low = value.lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise MalformedRequestError(f"query parameter {name} must be true or false, not {value!r}")


def _int_param(value: str, name: str) -> int:
    if not value.isdigit() or len(value) > 18:
        raise MalformedRequestError(f"query parameter {name} must be a non-negative integer")
    return int(value)


@dataclass(frozen=True)
class QuerySpec:
    conditions: tuple[str, ...]
    limit: int | None = None
    start: int = 0
    sort_by: str | None = None
    descending: bool = False
    with_count: bool = False
    count_only: bool = False
    fields: tuple[str, ...] = ()


_SORTABLE = {
    "uuid", "name", "description", "vmUuid", "backupStorageUuid", "state", "exportUrl",
    "md5Sum", "format", "size", "createDate", "lastOpDate",
}


def _sort(values: Mapping[str, str]) -> tuple[str | None, bool]:
    """(field, descending) from ZStack's ``sort=[+|-]field`` (what its SDK sends) or from
    ``sortBy`` + ``sortDirection``. A ``+`` left unencoded in a URL arrives as a space."""
    field_name: str | None
    if "sort" in values:
        if "sortBy" in values or "sortDirection" in values:
            raise MalformedRequestError("give either sort or sortBy/sortDirection, not both")
        text = values["sort"]
        descending = text.startswith("-")
        field_name = text[1:] if text[:1] in ("+", "-", " ") else text
    else:
        field_name = values.get("sortBy")
        direction = values.get("sortDirection", "asc")
        if direction not in ("asc", "desc"):
            raise MalformedRequestError("sortDirection must be asc or desc")
        descending = direction == "desc"
    if field_name is not None and field_name not in _SORTABLE:
        raise MalformedRequestError(
            f"cannot sort by {field_name!r}; fields: {', '.join(sorted(_SORTABLE))}"
        )
    return field_name, descending


def query_spec(items: list[tuple[str, str]]) -> QuerySpec:
    """ZStack's query string (pure): repeated ``q``, limit/start paging, ``sort=[+|-]field`` or
    sortBy/sortDirection, replyWithCount (adds ``total``), count (only ``total``), fields (a
    comma-separated list of the inventory fields to return)."""
    conditions: list[str] = []
    values: dict[str, str] = {}
    for key, value in items:
        if key in _UNSUPPORTED_QUERY:
            raise MalformedRequestError(f"query parameter {key} is not supported by this service")
        if key not in _QUERY_PARAMS:
            raise MalformedRequestError(
                f"unknown query parameter {key!r}; known: {', '.join(_QUERY_PARAMS)}"
            )
        if key == "q":
            try:
                parse_condition(value)
            except InvalidArgumentError as exc:
                raise MalformedRequestError(exc.details) from None
            conditions.append(value)
        elif key in values:
            raise MalformedRequestError(f"query parameter {key} given more than once")
        else:
            values[key] = value
    sort_by, descending = _sort(values)
    fields: tuple[str, ...] = ()
    if "fields" in values:
        fields = tuple(f.strip() for f in values["fields"].split(",") if f.strip())
        unknown = [f for f in fields if f not in _SORTABLE]
        if unknown or not fields:
            raise MalformedRequestError(
                f"invalid fields {values['fields']!r}; fields: {', '.join(sorted(_SORTABLE))}"
            )
    return QuerySpec(
        conditions=tuple(conditions),
        limit=_int_param(values["limit"], "limit") if "limit" in values else None,
        start=_int_param(values["start"], "start") if "start" in values else 0,
        sort_by=sort_by,
        descending=descending,
        with_count=_bool_param(values.get("replyWithCount", "false"), "replyWithCount"),
        count_only=_bool_param(values.get("count", "false"), "count"),
        fields=fields,
    )


async def query_packages(request: Request) -> Response:
    state = _state(request)
    await require_session(request)
    spec = query_spec(list(request.query_params.multi_items()))
    conditions = list(spec.conditions)
    uuid = request.path_params.get("uuid")
    if uuid is not None:
        conditions.insert(0, f"uuid={uuid}")
    backend = state.backend
    if spec.count_only:
        found = await run_in_threadpool(backend.query, conditions)
        return JSONResponse({"total": len(found)})
    rows = await run_in_threadpool(
        lambda: backend.query(
            conditions,
            limit=spec.limit,
            start=spec.start,
            sort_by=spec.sort_by,
            sort_direction="desc" if spec.descending else "asc",
        )
    )
    inventories = [inv.to_json() for inv in rows]
    if spec.fields:
        inventories = [{k: v for k, v in inv.items() if k in spec.fields} for inv in inventories]
    out: dict[str, Any] = {"inventories": inventories}
    if spec.with_count:
        out["total"] = len(await run_in_threadpool(backend.query, conditions))
    return JSONResponse(out)


async def _message(request: Request, name: str, fields: tuple[str, ...]) -> Mapping[str, Any]:
    """The API message object ``name`` of a ZStack body ``{name: {...}, systemTags, userTags}``,
    its keys and JSON types checked (400 on any fault). ZStack's SDK puts the tags inside the
    message object, ZStack's docs beside it: both are accepted."""
    body = parse_json_object(await read_body(request, _state(request).config.body_limit))
    check_keys(body, (name, *_TAGS), "the request body")
    for key in _TAGS:
        string_list(body, key, "the request body")
    msg = sub_object(body, name)
    check_keys(msg, (*fields, *_COMMON), name)
    _check_common(msg, name)
    return msg


async def update_package(request: Request) -> Response:
    state = _state(request)
    await require_session(request)
    msg = await _message(request, "updateImagePackage", ("name", "description"))
    name = optional_str(msg, "name", "updateImagePackage")
    description = optional_str(msg, "description", "updateImagePackage")
    uuid = request.path_params["uuid"]
    inventory = await run_in_threadpool(
        state.backend.update, uuid, name=name, description=description
    )
    return JSONResponse({"inventory": inventory.to_json()})


async def delete_package(request: Request) -> Response:
    state = _state(request)
    await require_session(request)
    for key, value in request.query_params.multi_items():
        if key in _COMMON:
            continue  # ZStack's SDK sends a DELETE's parameters in the query string
        if key != "deleteMode":
            raise MalformedRequestError(
                f"unknown query parameter {key!r}; known: deleteMode, {', '.join(_COMMON)}"
            )
        if value not in ("Permissive", "Enforcing"):
            raise MalformedRequestError("deleteMode must be Permissive or Enforcing")
    await run_in_threadpool(state.backend.delete, request.path_params["uuid"])
    return JSONResponse({})


# -- ParseOvf ---------------------------------------------------------------------------------


async def parse_ovf(request: Request) -> Response:
    state = _state(request)
    await require_session(request)
    params = await _message(request, "params", ("xmlBase64",))
    text = optional_str(params, "xmlBase64", "params")
    if text is None:
        raise MalformedRequestError(
            "field[xmlBase64] of message[APIParseOvfMsg] is mandatory, can not be null"
        )
    try:
        xml = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise MalformedRequestError("field[xmlBase64] is not valid base64") from None
    vm = await run_in_threadpool(state.backend.parse_ovf, xml)
    return JSONResponse({"ovfInfo": vm_to_json(vm)})


# -- downloads --------------------------------------------------------------------------------


async def download_package(request: Request) -> Response:
    state = _state(request)
    uuid = request.path_params["uuid"]
    path, filename, size = await run_in_threadpool(state.backend.package_file, uuid)
    stat = await anyio.to_thread.run_sync(os.stat, path)
    if stat.st_size != size:
        raise NotFoundError(f"ova package[uuid:{uuid}] is being replaced; try again")
    return PackageFileResponse(
        path,
        media_type="application/octet-stream",
        filename=filename,
        stat_result=stat,
        content_disposition_type="attachment",
    )


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


# -- error handling ---------------------------------------------------------------------------


async def _ovfkit_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OvfkitError)
    if isinstance(exc, JobNotFoundError):
        return JSONResponse({"error": exc.to_error_code()}, status_code=404)
    if isinstance(exc, NotFoundError) and request.url.path.startswith("/ova-packages/"):
        return JSONResponse({"error": exc.to_error_code()}, status_code=404)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    method, path = request.method, request.url.path
    if exc.status_code == 404:
        return error_response(NoApiMappingError(f"no api mapping for {method} {path}"))
    if exc.status_code == 405:
        given = {m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip()}
        order = ("GET", "HEAD", "POST", "PUT", "DELETE")
        allow = tuple(sorted(given, key=lambda m: order.index(m) if m in order else len(order)))
        return error_response(
            MethodNotAllowedError(
                f"method {method} is not allowed on {path}; allowed: {', '.join(allow)}",
                allow=allow,
            )
        )
    err = MalformedRequestError(exc.detail)
    return JSONResponse({"error": err.to_error_code()}, status_code=exc.status_code,
                        headers=exc.headers)


class CatchAll:
    """The last net: an exception nobody handled becomes 503 SYS.1000 with no traceback in the
    answer (it goes to the log). Placed inside Starlette's ServerErrorMiddleware, so that
    middleware never sees an exception and never answers 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                return  # headers already sent; the server closes the connection
            err = InternalError("unexpected internal error; the server log has the details")
            await error_response(err)(scope, receive, send)
        except BaseException:
            # Cancelled: the server's shutdown ran out of time for this request. Answer in
            # ZStack JSON rather than leave uvicorn to answer a plain-text 500, then go on
            # being cancelled.
            if not started:
                stopped = NotReadyError("the service shut down before this request finished")
                with contextlib.suppress(Exception):
                    await error_response(stopped)(scope, receive, send)
            raise


# -- the application --------------------------------------------------------------------------

Endpoint = Callable[[Request], Awaitable[Response]]


def _by_method(handlers: Mapping[str, Endpoint]) -> Endpoint:
    """One route per path, so a 405 lists every method the path has in ``Allow``."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return dispatch



def create_app(
    backend: Backend, auth: AuthStore, config: ServiceConfig | None = None
) -> Starlette:
    """The ASGI application over an opened backend and account store. The backend is closed
    when the application shuts down."""
    cfg = config or ServiceConfig()
    routes = [
        Route(f"{V1}/accounts/login", login, methods=["PUT"]),
        Route(f"{V1}/accounts/sessions/{{uuid}}", logout, methods=["DELETE"]),
        Route(f"{V1}/ovf/ova-packages", export_package, methods=["POST"]),
        Route(f"{V1}/api-jobs/{{uuid}}", api_job, methods=["GET"], name="api_job"),
        Route(f"{V1}/image-packages", query_packages, methods=["GET"]),
        Route(
            f"{V1}/image-packages/{{uuid}}",
            _by_method({"GET": query_packages, "PUT": update_package, "DELETE": delete_package}),
            methods=["GET", "PUT", "DELETE"],
        ),
        Route(f"{V1}/ovf/parse", parse_ovf, methods=["POST"]),
        Route("/ova-packages/{uuid}.ova", download_package, methods=["GET"]),
        Route(f"{V1}/openapi.json", openapi, methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            app.state.ovfkit_tasks = tasks
            try:
                yield
            finally:
                # Jobs still running are told to stop; leaving the group waits for their
                # roll-back before the records are closed.
                app.state.ovfkit.gate.stopping.set()
        backend.close()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(CatchAll)],
        exception_handlers={OvfkitError: _ovfkit_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    app.state.ovfkit = _State(
        backend=backend,
        auth=auth,
        config=cfg,
        jobs=JobRegistry(keep=cfg.job_keep),
        limiter=anyio.CapacityLimiter(cfg.export_workers),
    )
    return app
