"""The Starlette application: routes, session checks, error mapping, the export worker pool.

Handlers are thin: they read and check the request (:mod:`.bodies`), call the function layer
(:mod:`ovfkit.zstack.api` through :class:`.backend.Backend`) in a worker thread, and shape the
answer as ZStack does. Status codes: see :mod:`.errors`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
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
from ..zstack.accesskeys import AccessKeyStore
from ..zstack.auth import AuthStore, InvalidSessionError, Session
from ..zstack.inventory import QUERY_FIELDS, TAG_FIELDS, ExportVmOvaPackageRequest, Reply
from ..zstack.tags import SYSTEM, TAG_QUERY_FIELDS, USER
from . import webhook
from .backend import Backend
from .bodies import (
    DEFAULT_BODY_LIMIT,
    optional_str,
    parse_json_object,
    read_body,
    string_list,
    sub_object,
    unknown_keys,
)
from .downloads import PackageFileResponse
from .drain import ExportGate
from .errors import (
    MalformedRequestError,
    MethodNotAllowedError,
    NoApiMappingError,
    PlainRequestError,
    error_response,
    status_for,
)
from .jobs import JOB_MODE_HEADER, Job, JobRegistry, current_job, job_form, job_uuid_header
from .openapi import openapi_document
from .ovfinfo import ovf_info
from .query import QuerySpec, query_spec

__all__ = ["JOB_MODE_HEADER", "Caller", "ServiceConfig", "create_app"]

log = logging.getLogger("ovfkit.server")

V1 = "/zstack/v1"
CONTEXT_PATH = "/zstack"

_EXPORT_FIELDS = ("name", "description", "vmUuid", "backupStorageUuid", "resourceUuid", "tagUuids")
_TAGS = ("systemTags", "userTags")
# ZStack's SDK sends these API parameters in the body (or the query string for DELETE) besides
# the API's own fields; requestIp is also sent as a header.
_COMMON = ("systemTags", "userTags", "requestIp")


@dataclass(frozen=True)
class ServiceConfig:
    """What ``ovfkit serve`` sets: limits and worker counts."""

    body_limit: int = DEFAULT_BODY_LIMIT
    export_workers: int = max(2, min(4, os.cpu_count() or 2))
    job_keep: float = 3600.0
    webhook_retry_interval: float = webhook.RETRY_INTERVAL
    # A package's download URL works this long after its export or last update (None: always).
    download_ttl: float | None = None


class JobNotFoundError(NotFoundError):
    pass


@dataclass
class _State:
    backend: Backend
    auth: AuthStore
    access_keys: AccessKeyStore
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


def _log_ignored(request: Request, names: list[str] | tuple[str, ...], where: str) -> None:
    """ZStack ignores what it does not know (RestServer logs "unknown query parameter[%s],
    ignored"); so does this service. Names only: values may be secrets (sessionId)."""
    if names:
        log.info("%s %s: ignored unknown %s: %s", request.method, request.url.path, where,
                 ", ".join(names))


# -- callers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who makes a request: the account, and the session when it came with one (None for an
    AccessKey-signed request). ``admin``: the account is the administrator (named ``admin``,
    as ZStack's initial system admin), which sees every account's packages."""

    account_uuid: str
    session: Session | None = None
    admin: bool = False

    @property
    def scope(self) -> str | None:
        """The account whose packages this caller sees; None: all of them."""
        return None if self.admin else self.account_uuid


def _signed_path(request: Request) -> str:
    """The path zssdk signs: after the context path, decoded, no query (``/v1/...``)."""
    path = request.url.path
    return path[len(CONTEXT_PATH):] if path.startswith(CONTEXT_PATH + "/") else path


async def require_session(request: Request) -> Caller:
    """The caller of an API that needs credentials, as RestServer.handleApi reads them:
    ``Authorization: OAuth <session uuid>`` or ``Authorization: ZStack <AccessKeyId>:<sig>``
    with a ``Date`` header. A missing header and another type are RestServer's plain 400s; a
    bad session is ID.1001 ``Session expired``, a bad signature ID.1000."""
    state = _state(request)
    header = request.headers.get("authorization")
    if header is None:
        raise PlainRequestError("missing header 'Authorization'")
    auth = header.strip()
    scheme = auth[:6].lower()
    if scheme.startswith("oauth"):
        token = auth[5:].strip()
        if not token or any(c.isspace() for c in token):
            raise InvalidSessionError("Session expired")
        session = await run_in_threadpool(state.auth.validate, token)
        admin = await run_in_threadpool(state.auth.is_admin, session.account_uuid)
        return Caller(session.account_uuid, session, admin)
    if scheme == "zstack":
        account = await run_in_threadpool(
            state.access_keys.authenticate, auth[6:].strip(), request.method,
            request.headers.get("date"), _signed_path(request),
        )
        return Caller(account, None, await run_in_threadpool(state.auth.is_admin, account))
    raise PlainRequestError("Authorization type must be 'OAuth'")


# -- answering: synchronously or in ZStack's job form ----------------------------------------

Work = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]


async def _call(fn: Callable[[], dict[str, Any]], what: str) -> tuple[int, dict[str, Any]]:
    """Run a blocking API function in a worker thread; its answer as (status, body)."""
    try:
        return 200, await run_in_threadpool(fn)
    except OvfkitError as exc:
        return status_for(exc), {"error": exc.to_error_code()}
    except Exception:
        log.exception("%s failed unexpectedly", what)
        err = InternalError(f"unexpected failure in {what}; the server log has the details")
        return 503, {"error": err.to_error_code()}


async def answer(request: Request, caller: Caller, api: str, work: Work) -> Response:
    """Run ``work`` and answer with its result, or start it as a job (see :mod:`.jobs`) and
    answer ``202 {"location", "apiTimeout"}``."""
    state = _state(request)
    form = job_form(request.headers, api)
    if form is None:
        status, body = await work()
        return JSONResponse(body, status_code=status)
    target = None
    if form.webhook is not None:
        try:
            target = webhook.check_webhook_url(
                form.webhook, state.backend.context.config.webhook_hosts
            )
        except InvalidArgumentError as exc:
            raise MalformedRequestError(exc.details) from None
    job = state.jobs.create(
        caller.account_uuid, uuid=form.uuid, open=caller.session is None,
        webhook=form.webhook, api_timeout_ms=form.api_timeout_ms,
    )
    request.app.state.ovfkit_tasks.start_soon(_job_runner(state, job, work, target))
    location = str(request.url_for("api_job", uuid=job.uuid))
    return JSONResponse({"location": location, "apiTimeout": form.api_timeout_ms}, status_code=202)


def _job_runner(
    state: _State, job: Job, work: Work, target: webhook.WebhookTarget | None
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        current_job.set(job)  # this task's own context: seen by the work's thread
        status, body = await work()
        # A job that did not succeed polls as 503 whatever stopped it (handleJobQuery).
        state.jobs.finish(job, 200 if status == 200 else 503, body)
        if target is not None and await anyio.to_thread.run_sync(
            state.backend.claim_webhook, job.uuid
        ):
            data = json.dumps(body).encode()
            sent = await anyio.to_thread.run_sync(
                lambda: webhook.post(
                    target, data, job.uuid, status == 200, stop=state.gate.stopping,
                    interval=state.config.webhook_retry_interval,
                )
            )
            if sent or not state.gate.stopping.is_set():  # stopped: another node may send it
                await anyio.to_thread.run_sync(state.backend.webhook_sent, job.uuid, sent)

    return run


async def api_job(request: Request) -> Response:
    """RestServer.handleJobQuery: 202 while running, then 200 or 503 with the reply. A job
    started with a session is the account's; one started with an AccessKey is open to whoever
    has its uuid (the SDKs poll it with no credential, and ZStack checks none)."""
    state = _state(request)
    uuid = request.path_params["uuid"]
    job = state.jobs.get(uuid)
    if job is None or not job.open:
        caller = await require_session(request)
        if job is not None and job.owner != caller.account_uuid:
            job = None
    if job is None:
        # A job another API node started, or this one before a restart (many hosts).
        stored = await run_in_threadpool(state.backend.stored_job, uuid)
        if stored is not None and stored.owner == caller.account_uuid:
            if stored.status is None:
                return JSONResponse({}, status_code=202)
            return JSONResponse(stored.body, status_code=stored.status)
        raise JobNotFoundError(
            f"the job has been expired: no api job[uuid:{uuid}] (finished jobs are kept "
            f"{state.config.job_keep:.0f} s, and not across restarts)"
        )
    if job.status is None or job.body is None:
        return JSONResponse({}, status_code=202)
    return JSONResponse(job.body, status_code=job.status)


# -- accounts and sessions --------------------------------------------------------------------


async def _message(
    request: Request, name: str, fields: tuple[str, ...], *, required: bool = True
) -> Mapping[str, Any]:
    """The API message object ``name`` of a ZStack body ``{name: {...}, systemTags, userTags}``,
    its known keys' JSON types checked (400 on a fault), unknown keys ignored and logged.
    ZStack's SDK puts the tags inside the message object, ZStack's docs beside it: both are
    accepted. ``required=False``: an empty body is an empty message."""
    raw = await read_body(request, _state(request).config.body_limit)
    body = parse_json_object(raw) if raw.strip() or required else {}
    _log_ignored(request, unknown_keys(body, (name, *_TAGS)), "body field(s)")
    for key in _TAGS:
        string_list(body, key, "the request body")
    msg = sub_object(body, name, required=required)
    _log_ignored(request, unknown_keys(msg, (*fields, *_COMMON)), f"field(s) of {name}")
    _check_common(msg, name)
    return msg


async def login(request: Request) -> Response:
    state = _state(request)
    job_uuid_header(request.headers)
    where = "logInByAccount"
    msg = await _message(
        request, where,
        ("accountName", "password", "accountType", "captchaUuid", "verifyCode", "clientInfo"),
    )
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
    """LogOut (@SuppressCredentialCheck): no credential needed, as in ZStack."""
    job_uuid_header(request.headers)
    _log_ignored(request, list(request.query_params), "query parameter(s)")
    uuid = request.path_params["uuid"]
    await run_in_threadpool(_state(request).auth.logout, uuid)
    return JSONResponse({})


async def validate_session(request: Request) -> Response:
    """ValidateSession (@SuppressCredentialCheck): ``{"valid": bool}``
    (APIValidateSessionReply, ``@RestResponse(fieldsTo = {"valid=validSession"})``)."""
    job_uuid_header(request.headers)
    _log_ignored(request, list(request.query_params), "query parameter(s)")
    uuid = request.path_params["uuid"]
    try:
        await run_in_threadpool(_state(request).auth.validate, uuid)
    except InvalidSessionError:
        return JSONResponse({"valid": False})
    return JSONResponse({"valid": True})


# APIRenewSessionMsg: @APIParam(required = false, numberRange = {60L, 31536000L}) duration.
_RENEW_RANGE = (60, 31536000)


async def renew_session(request: Request) -> Response:
    """RenewSession: a live session of the caller's account expires ``duration`` seconds
    (default: the session lifetime) from now; ``{"inventory": SessionInventory}``."""
    state = _state(request)
    caller = await require_session(request)
    job_form(request.headers, "RenewSession")  # header checks before the body
    msg = await _message(request, "renewSession", ("sessionUuid", "duration"), required=False)
    duration = msg.get("duration")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int)):
        raise MalformedRequestError("field[duration] of renewSession must be an integer")
    uuid = request.path_params["uuid"]

    def renew() -> dict[str, Any]:
        if duration is not None and not _RENEW_RANGE[0] <= duration <= _RENEW_RANGE[1]:
            raise InvalidArgumentError(
                f"field[duration] of message[APIRenewSessionMsg] must be in range of "
                f"[{_RENEW_RANGE[0]}, {_RENEW_RANGE[1]}], but {duration} got"
            )
        target = state.auth.validate(uuid)
        if target.account_uuid != caller.account_uuid:
            raise InvalidSessionError("Session expired")
        return {"inventory": state.auth.renew(uuid, duration).to_inventory()}

    async def work() -> tuple[int, dict[str, Any]]:
        status, body = await _call(renew, "RenewSession")
        # The session renewed is the API's argument, not the caller's credential: an expired
        # one fails the API (503), as Session.renewSession's errorOnTimeout does in ZStack.
        return (503 if status != 200 else 200), body

    return await answer(request, caller, "RenewSession", work)


# -- export -----------------------------------------------------------------------------------


def export_request_from_body(body: Mapping[str, Any]) -> ExportVmOvaPackageRequest:
    """Check the body's known keys' JSON types (400 on a fault), then build the request;
    unknown keys end up in ``extra``."""
    _check_common(body, "the request body")
    params = sub_object(body, "params", required=False)
    _check_common(params, "params")
    try:
        return ExportVmOvaPackageRequest.from_json(body)
    except InvalidArgumentError as exc:
        raise MalformedRequestError(exc.details) from None


def reply_answer(reply: Reply) -> tuple[int, dict[str, Any]]:
    """ZStack's answer for a finished call: 200 with the inventory, 503 with the error."""
    return (200 if reply.success else 503), reply.to_json()


async def _run_export(
    state: _State, req: ExportVmOvaPackageRequest, caller: Caller
) -> tuple[int, dict[str, Any]]:
    gate = state.gate
    try:
        async with gate.running():
            reply = await anyio.to_thread.run_sync(
                lambda: state.backend.export(
                    req, account_uuid=caller.account_uuid, cancel=gate.stopping
                ),
                limiter=state.limiter,
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
    caller = await require_session(request)
    job_form(request.headers, "ExportVmOvaPackage")  # header checks before the body
    body = parse_json_object(await read_body(request, state.config.body_limit))
    req = export_request_from_body(body)
    _log_ignored(request, sorted(set(req.extra) - set(_COMMON)), "body field(s)")
    return await answer(
        request, caller, "ExportVmOvaPackage", lambda: _run_export(state, req, caller)
    )


# -- image packages and their tags ------------------------------------------------------------

_PACKAGE_FIELDS = tuple(QUERY_FIELDS)


def _query_answer(
    spec: QuerySpec, rows: list[dict[str, Any]] | None, total: int | None
) -> dict[str, Any]:
    """A query reply: ``inventories`` (only ``fields`` of each, when given) and ``total``."""
    out: dict[str, Any] = {}
    if rows is not None:
        out["inventories"] = (
            [{k: v for k, v in r.items() if k in spec.fields} for r in rows]
            if spec.fields else rows
        )
    if total is not None:
        out["total"] = total
    return out


async def query_packages(request: Request) -> Response:
    """QueryImagePackage: the caller's packages (the admin: everyone's)."""
    state = _state(request)
    caller = await require_session(request)
    spec = query_spec(
        list(request.query_params.multi_items()), _PACKAGE_FIELDS,
        condition_fields=(*_PACKAGE_FIELDS, *TAG_FIELDS),
    )
    _log_ignored(request, spec.ignored, "query parameter(s)")
    conditions = list(spec.conditions)
    uuid = request.path_params.get("uuid")
    if uuid is not None:
        conditions.insert(0, f"uuid={uuid}")
    backend = state.backend

    def run() -> dict[str, Any]:
        total = (
            backend.count(conditions, group_by=spec.group_by, account_uuid=caller.scope)
            if spec.count_only or spec.with_count else None
        )
        if spec.count_only:
            return _query_answer(spec, None, total)
        rows = backend.query(
            conditions, limit=spec.limit, start=spec.start, sort_by=spec.sort_by,
            sort_direction="desc" if spec.descending else "asc", group_by=spec.group_by,
            account_uuid=caller.scope,
        )
        return _query_answer(spec, [inv.to_json() for inv in rows], total)

    return JSONResponse(await run_in_threadpool(run))


def _tag_query(kind: str) -> Callable[[Request], Awaitable[Response]]:
    """QueryUserTag (``GET /user-tags``) / QuerySystemTag (``GET /system-tags``), e.g.
    ``q=resourceUuid=<package uuid>``; tags of the caller's packages (the admin: all)."""

    async def handler(request: Request) -> Response:
        state = _state(request)
        caller = await require_session(request)
        spec = query_spec(
            list(request.query_params.multi_items()), tuple(TAG_QUERY_FIELDS), what="TagInventory"
        )
        _log_ignored(request, spec.ignored, "query parameter(s)")
        if spec.group_by is not None:
            raise MalformedRequestError("groupBy is not supported for tags")
        backend = state.backend

        def run() -> dict[str, Any]:
            total = (
                backend.count_tags(kind, spec.conditions, account_uuid=caller.scope)
                if spec.count_only or spec.with_count else None
            )
            if spec.count_only:
                return _query_answer(spec, None, total)
            rows = backend.query_tags(
                kind, spec.conditions, limit=spec.limit, start=spec.start,
                sort_by=spec.sort_by, sort_direction="desc" if spec.descending else "asc",
                account_uuid=caller.scope,
            )
            return _query_answer(spec, [t.to_json() for t in rows], total)

        return JSONResponse(await run_in_threadpool(run))

    return handler


async def update_package(request: Request) -> Response:
    state = _state(request)
    caller = await require_session(request)
    job_form(request.headers, "UpdateImagePackage")
    msg = await _message(request, "updateImagePackage", ("uuid", "name", "description"))
    name = optional_str(msg, "name", "updateImagePackage")
    description = optional_str(msg, "description", "updateImagePackage")
    uuid = request.path_params["uuid"]

    def update() -> dict[str, Any]:
        inventory = state.backend.update(
            uuid, name=name, description=description, account_uuid=caller.scope
        )
        return {"inventory": inventory.to_json()}

    return await answer(
        request, caller, "UpdateImagePackage", lambda: _call(update, "UpdateImagePackage")
    )


async def delete_package(request: Request) -> Response:
    state = _state(request)
    caller = await require_session(request)
    job_form(request.headers, "DeleteImagePackage")
    # ZStack's SDK sends a DELETE's parameters in the query string (deleteMode, uuid,
    # sessionId, systemTags, ...); RestServer ignores those it does not know.
    ignored = []
    for key, value in request.query_params.multi_items():
        if key == "deleteMode":
            if value not in ("Permissive", "Enforcing"):
                raise MalformedRequestError("deleteMode must be Permissive or Enforcing")
        elif key not in ("uuid", *_COMMON):
            ignored.append(key)
    _log_ignored(request, sorted(set(ignored)), "query parameter(s)")
    uuid = request.path_params["uuid"]

    def delete() -> dict[str, Any]:
        state.backend.delete(uuid, account_uuid=caller.scope)
        return {}

    return await answer(
        request, caller, "DeleteImagePackage", lambda: _call(delete, "DeleteImagePackage")
    )


# -- ParseOvf ---------------------------------------------------------------------------------


async def parse_ovf(request: Request) -> Response:
    """ParseOvf: ``{"ovfInfo": OvfInfo}`` (see :mod:`.ovfinfo`)."""
    state = _state(request)
    await require_session(request)
    job_uuid_header(request.headers)
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
    parsed = await run_in_threadpool(state.backend.parse_ovf, xml)
    return JSONResponse({"ovfInfo": ovf_info(parsed)})


# -- downloads --------------------------------------------------------------------------------


async def download_package(request: Request) -> Response:
    """exportUrl of a local package: a capability URL, fetched with no session (as from a
    ZStack backup storage); its token, not the listable uuid, is what opens it."""
    state = _state(request)
    uuid, token = request.path_params["uuid"], request.path_params["token"]
    path, filename, size = await run_in_threadpool(
        lambda: state.backend.package_file(uuid, token, ttl=state.config.download_ttl)
    )
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


async def untokened_download(request: Request) -> Response:
    """The download URL of versions before tokens: refused, and said why."""
    raise NotFoundError(
        "package download URLs carry a token now (/ova-packages/<token>/<uuid>.ova): "
        "QueryImagePackage gives the package's exportUrl"
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
        Route(f"{V1}/accounts/sessions/{{uuid}}/valid", validate_session, methods=["GET"]),
        Route(f"{V1}/accounts/sessions/{{uuid}}/renew", renew_session, methods=["PUT"]),
        Route(f"{V1}/ovf/ova-packages", export_package, methods=["POST"]),
        Route(f"{V1}/api-jobs/{{uuid}}", api_job, methods=["GET"], name="api_job"),
        Route(f"{V1}/image-packages", query_packages, methods=["GET"]),
        Route(
            f"{V1}/image-packages/{{uuid}}",
            _by_method({"GET": query_packages, "PUT": update_package, "DELETE": delete_package}),
            methods=["GET", "PUT", "DELETE"],
        ),
        Route(f"{V1}/ovf/parse", parse_ovf, methods=["POST"]),
        Route(f"{V1}/user-tags", _tag_query(USER), methods=["GET"]),
        Route(f"{V1}/system-tags", _tag_query(SYSTEM), methods=["GET"]),
        Route("/ova-packages/{token}/{uuid}.ova", download_package, methods=["GET"]),
        Route("/ova-packages/{uuid}.ova", untokened_download, methods=["GET"]),
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
        access_keys=AccessKeyStore(auth.path.parent, database=auth.db),
        config=cfg,
        jobs=JobRegistry(keep=cfg.job_keep),
        limiter=anyio.CapacityLimiter(cfg.export_workers),
    )
    return app
