"""ZStack's Python SDK, its request, status and polling logic transcribed for the tests.

Source: ``zssdk.py``, the Python SDK ZStack generates (zstackio/zstack, e.g. the copies in
ruansteve/zstack-python-sdk and qianfei11/ZStack-RESTful-API): ``AbstractAction`` (``_params``,
``_query_string``, ``_url``, ``calculateAccessKey``, ``call``, ``_write_result``,
``_poll_result``, ``_sync_polling``), ``QueryAction._query_string``, ``_json_http`` over urllib3,
and the generated action classes (their HTTP method, path, NEED_SESSION, NEED_POLL, PARAM_NAME
and PARAMS as in the SDK's Java twins, sdk/src/main/java/org/zstack/sdk/*Action.java).

Kept as the SDK has them, quirks included, since a server must cope with them: the query string
is built unencoded (``q=name=x``, ``count=True``, ``sessionId=<uuid>``, lists as Python reprs);
a GET or DELETE sends every parameter in the query string, the session and the path's
``uuid`` too; a PUT/POST body carries the path's ``uuid`` (the regex meant to find path
variables never matches); ``X-Job-UUID`` goes with every call; the polling "timeout" is the read
timeout already set on the action (15 s by default), counted in polling intervals; polling sends
``Authorization: OAuth <sessionId>`` even for an AccessKey call (``OAuth None``).

Changed for Python 3 and the tests only: bytes for HMAC and base64, no ``print`` of every
request, ``long`` gone, and one fix: zssdk.py sends the configured webhook under the header name
``webhook`` (``headers[CONFIG_WEBHOOK]``), which ZStack's RestServer never reads; here it is sent
as the SDK's own ``HEADER_WEBHOOK`` (``X-Web-Hook``), as the Java SDK (ZSClient) sends it.
"""

from __future__ import annotations

import base64
import datetime
import hmac
import json
import re
import string
import time
from hashlib import sha1
from typing import Any, ClassVar
from uuid import uuid4

import urllib3

CONFIG_HOSTNAME = "hostname"
CONFIG_PORT = "port"
CONFIG_POLLING_TIMEOUT = "default_polling_timeout"
CONFIG_POLLING_INTERVAL = "default_polling_interval"
CONFIG_WEBHOOK = "webhook"
CONFIG_READ_TIMEOUT = "read_timeout"
CONFIG_WRITE_TIMEOUT = "write_timeout"
CONFIG_CONTEXT_PATH = "context_path"

HEADER_JOB_UUID = "X-Job-UUID"
HEADER_WEBHOOK = "X-Web-Hook"
HEADER_JOB_SUCCESS = "X-Job-Success"
HEADER_AUTHORIZATION = "Authorization"
HEADER_REQUEST_IP = "X-Request-Ip"
OAUTH = "OAuth"
LOCATION = "location"

HTTP_ERROR = "sdk.1000"
POLLING_TIMEOUT_ERROR = "sdk.1001"
INTERNAL_ERROR = "sdk.1002"

__config__: dict[str, Any] = {}


class SdkError(Exception):
    pass


def _error_if_not_configured() -> None:
    if not __config__:
        raise SdkError("call configure() before using any APIs")


def _http_error(status: int, body: Any = None) -> dict[str, Any]:
    err = ErrorCode()
    err.code = HTTP_ERROR
    err.description = f"the http status code[{status}] indicates a failure happened"
    err.details = body
    return {"error": err}


def _error(code: str, desc: str, details: str) -> dict[str, Any]:
    err = ErrorCode()
    err.code = code
    err.description = desc
    err.details = details
    return {"error": err}


def configure(
    hostname: str = "127.0.0.1",
    context_path: str | None = None,
    port: int = 8080,
    polling_timeout: int = 3600 * 3,
    polling_interval: float = 1,
    read_timeout: float = 15,
    write_timeout: float = 15,
    web_hook: str | None = None,
) -> None:
    __config__[CONFIG_HOSTNAME] = hostname
    __config__[CONFIG_PORT] = port
    __config__[CONFIG_POLLING_TIMEOUT] = polling_timeout
    __config__[CONFIG_POLLING_INTERVAL] = polling_interval
    __config__[CONFIG_WEBHOOK] = web_hook
    __config__[CONFIG_READ_TIMEOUT] = read_timeout
    __config__[CONFIG_WRITE_TIMEOUT] = write_timeout
    __config__[CONFIG_CONTEXT_PATH] = context_path


class ParamAnnotation:
    def __init__(
        self,
        required: bool = False,
        valid_values: list[str] | None = None,
        max_length: int | None = None,
        non_empty: bool | None = None,
        null_elements: bool | None = None,
        empty_string: bool | None = None,
        number_range: list[int] | None = None,
        no_trim: bool = False,
    ) -> None:
        self.required = required
        self.valid_values = valid_values
        self.max_length = max_length
        self.non_empty = non_empty
        self.null_elements = null_elements
        self.empty_string = empty_string
        self.number_range = number_range
        self.no_trim = no_trim


class ErrorCode:
    def __init__(self) -> None:
        self.code: Any = None
        self.description: Any = None
        self.details: Any = None
        self.cause: Any = None


class Obj:
    def __init__(self, d: dict[str, Any]) -> None:
        for a, b in d.items():
            if isinstance(b, list | tuple):
                setattr(self, a, [Obj(x) if isinstance(x, dict) else x for x in b])
            else:
                setattr(self, a, Obj(b) if isinstance(b, dict) else b)

    def __getattr__(self, item: str) -> Any:
        return None


def as_dict(value: Any) -> Any:
    """An SDK result object back to plain data (for the tests' shape checks)."""
    if isinstance(value, Obj):
        return {k: as_dict(v) for k, v in vars(value).items()}
    if isinstance(value, ErrorCode):
        return {k: v for k, v in vars(value).items() if v is not None}
    if isinstance(value, list):
        return [as_dict(v) for v in value]
    return value


class AbstractAction:
    HTTP_METHOD = ""
    PATH = ""
    NEED_SESSION = True
    NEED_POLL = False
    PARAM_NAME = ""
    PARAMS: ClassVar[dict[str, ParamAnnotation]] = {}

    def __init__(self) -> None:
        self.apiId: str | None = None
        self.sessionId: str | None = None
        self.requestIp: str | None = None
        self.systemTags: list[str] | None = None
        self.userTags: list[str] | None = None
        self.timeout: float | None = None
        self.pollingInterval: float | None = None
        self.accessKeyId: str | None = None
        self.accessKeySecret: str | None = None
        self._param_descriptors = {
            "systemTags": ParamAnnotation(),
            "userTags": ParamAnnotation(),
        }
        self._param_descriptors.update(self.PARAMS)
        for name in self.PARAMS:
            if not hasattr(self, name):
                setattr(self, name, None)

    def _check_params(self) -> None:
        for param_name, annotation in self._param_descriptors.items():
            value = getattr(self, param_name, None)
            if value is None and annotation.required:
                raise SdkError(f"missing a mandatory parameter[{param_name}]")
            if value is not None and annotation.valid_values and (
                value not in annotation.valid_values
            ):
                raise SdkError(f"invalid parameter[{param_name}], the value[{value}] is not in "
                               f"the valid options{annotation.valid_values}")
            if value is not None and isinstance(value, str) and annotation.max_length and (
                len(value) > annotation.max_length
            ):
                raise SdkError(f"invalid length[{len(value)}] of the parameter[{param_name}]")
            if value is not None and isinstance(value, str) and annotation.no_trim is False:
                value = str(value).strip()
                setattr(self, param_name, value)
        if self.NEED_SESSION and self.sessionId is None and (
            self.accessKeyId is None or self.accessKeySecret is None
        ):
            raise SdkError("sessionId or accessKey must be provided")

    def _params(self) -> dict[str, Any]:
        ret = {}
        for k in self._param_descriptors:
            val = getattr(self, k, None)
            if val is not None:
                ret[k] = val
        return ret

    def _query_string(self, params: dict[str, Any]) -> str:
        query_params = {}
        for k, v in params.items():
            if k in ("accessKeySecret", "accessKeyId"):
                continue
            query_params[k] = v
        return "&".join(f"{k}={v}" for k, v in query_params.items())

    def _url(self) -> tuple[str, list[str]]:
        elements = ["http://", __config__[CONFIG_HOSTNAME], ":", str(__config__[CONFIG_PORT])]
        context_path = __config__.get(CONFIG_CONTEXT_PATH)
        if context_path is not None:
            elements.append(context_path)
        elements.append("/v1")

        path = self.PATH.replace("{", "${")
        # zssdk.py's pattern: '$' anchors the end, so it never finds anything.
        unresolved = re.findall(r"${(.+?)}", path)
        params = self._params()
        path = string.Template(path).substitute(params)
        elements.append(path)

        if self.HTTP_METHOD in ("GET", "DELETE"):
            elements.append("?")
            elements.append(self._query_string(params))
        return "".join(elements), unresolved

    def calculateAccessKey(self, url: str, date: str) -> str:
        # url example:  http://127.0.0.1:8080/zstack/v1/vminstances/uuid?xx
        elements = url.split(":")
        path = elements[2].split("/", 2)
        path = path[2].split("?")
        assert self.accessKeySecret is not None
        h = hmac.new(
            self.accessKeySecret.encode(),
            (self.HTTP_METHOD + "\n" + date + "\n" + "/" + path[0]).encode(),
            sha1,
        )
        signature = base64.b64encode(h.digest()).decode()
        return f"ZStack {self.accessKeyId}:{signature}"

    def call(self) -> Obj:
        _error_if_not_configured()
        self._check_params()
        url, params_in_url = self._url()

        headers: dict[str, Any] = {}
        headers[HEADER_JOB_UUID] = self.apiId if self.apiId is not None else _uuid()

        date = time.time()
        datestr = datetime.datetime.fromtimestamp(date).strftime("%a, %d %b %Y %H:%M:%S CST")

        if self.requestIp is not None:
            headers[HEADER_REQUEST_IP] = self.requestIp

        if self.NEED_SESSION:
            if self.sessionId is not None:
                headers[HEADER_AUTHORIZATION] = f"{OAUTH} {self.sessionId}"
            else:
                headers["Date"] = datestr
                headers[HEADER_AUTHORIZATION] = self.calculateAccessKey(url, datestr)

        web_hook = __config__.get(CONFIG_WEBHOOK)
        if web_hook is not None:
            headers[HEADER_WEBHOOK] = web_hook  # zssdk.py: headers[CONFIG_WEBHOOK], see above

        params = self._params()
        body = None
        if self.HTTP_METHOD in ("POST", "PUT"):
            m = {}
            for k, v in params.items():
                if v is None or k in ("sessionId", "accessKeyId", "accessKeySecret"):
                    continue
                if k in params_in_url:
                    continue
                m[k] = v
            body = {self.PARAM_NAME: m}

        if not self.timeout:
            self.timeout = __config__[CONFIG_READ_TIMEOUT]

        rsp = _json_http(uri=url, body=body, headers=headers, method=self.HTTP_METHOD,
                         timeout=self.timeout)

        if rsp.status < 200 or rsp.status >= 300:
            return Obj(_http_error(rsp.status, rsp.data))
        elif rsp.status in (200, 204):
            # the API completes
            return Obj(self._write_result(rsp))
        elif rsp.status == 202:
            # the API needs polling
            return self._poll_result(rsp)
        raise SdkError(f"[Internal Error] the server returns an unknown status code"
                       f"[{rsp.status}], body[{rsp.data!r}]")

    def _write_result(self, rsp: Any) -> dict[str, Any]:
        data = rsp.data
        if not data:
            data = "{}"
        if rsp.status == 200:
            return {"value": json.loads(data)}
        elif rsp.status == 503:
            loaded: dict[str, Any] = json.loads(data)
            return loaded
        raise SdkError(f"unknown status code[{rsp.status}]")

    def _poll_result(self, rsp: Any) -> Obj:
        if not self.NEED_POLL:
            raise SdkError("[Internal Error] the api is not an async API but the server returns "
                           "202 status code")
        m = json.loads(rsp.data)
        location = m[LOCATION]
        if not location:
            raise SdkError("Internal Error] the api[%s] is an async API but the server doesn't "
                           "return the polling location url")
        return self._sync_polling(location)

    def _fill_timeout_parameters(self) -> None:
        if self.timeout is None:
            self.timeout = __config__.get(CONFIG_POLLING_TIMEOUT)
        if self.pollingInterval is None:
            self.pollingInterval = __config__.get(CONFIG_POLLING_INTERVAL)

    def _sync_polling(self, location: str) -> Obj:
        count: float = 0
        self._fill_timeout_parameters()
        assert self.timeout is not None and self.pollingInterval is not None
        while count < self.timeout:
            rsp = _json_http(
                uri=location,
                headers={HEADER_AUTHORIZATION: f"{OAUTH} {self.sessionId}"},
                method="GET",
            )
            if rsp.status not in (200, 503, 202):
                return Obj(_http_error(rsp.status, rsp.data))
            elif rsp.status in (200, 503):
                return Obj(self._write_result(rsp))
            time.sleep(self.pollingInterval)
            count += self.pollingInterval
        return Obj(_error(POLLING_TIMEOUT_ERROR, "polling an API result time out",
                          f"failed to poll the result after {self.timeout} seconds"))


class QueryAction(AbstractAction):
    PARAMS: ClassVar[dict[str, ParamAnnotation]] = {
        "conditions": ParamAnnotation(required=True),
        "limit": ParamAnnotation(),
        "start": ParamAnnotation(),
        "count": ParamAnnotation(),
        "groupBy": ParamAnnotation(),
        "filterName": ParamAnnotation(),
        "replyWithCount": ParamAnnotation(),
        "sortBy": ParamAnnotation(),
        "sortDirection": ParamAnnotation(valid_values=["asc", "desc"]),
        "fields": ParamAnnotation(),
    }

    def __init__(self) -> None:
        super().__init__()
        self.conditions: list[str] = []

    def _query_string(self, params: dict[str, Any]) -> str:
        m = []
        ps = {k: v for k, v in params.items() if k in self.PARAMS}
        for k, v in ps.items():
            if v is None or k in ("accessKeySecret", "accessKeyId"):
                continue
            if k == "sortBy" and v is not None:
                if getattr(self, "sortDirection", None) is None:
                    m.append(f"sort={v}")
                else:
                    op = "+" if self.sortDirection == "asc" else "-"  # type: ignore[attr-defined]
                    m.append(f"sort={op}{v}")
            elif k == "sortDirection":
                continue
            elif k == "fields":
                m.append("fields=" + ",".join(v))
            elif k == "conditions":
                m.extend(f"q={q}" for q in v)
            else:
                m.append(f"{k}={v}")
        return "&".join(m)


def _uuid() -> str:
    return str(uuid4()).replace("-", "")


def _json_http(
    uri: str,
    body: Any = None,
    headers: dict[str, Any] | None = None,
    method: str = "POST",
    timeout: float = 120.0,
) -> Any:
    headers = {} if headers is None else headers
    pool = urllib3.PoolManager(timeout=timeout, retries=urllib3.util.retry.Retry(15))
    headers.update({"Content-Type": "application/json", "Connection": "close"})
    if body is not None and not isinstance(body, str):
        body = json.dumps(body).encode("utf-8")
    if body:
        headers["Content-Length"] = str(len(body))
        return pool.request(method, uri, body=body, headers=headers)
    return pool.request(method, uri, headers=headers)


# -- the generated actions (HTTP method, path, session, polling, body name, parameters) -------

_SESSION_PARAMS = {
    "sessionId": ParamAnnotation(required=False),
    "accessKeyId": ParamAnnotation(required=False),
    "accessKeySecret": ParamAnnotation(required=False),
    "requestIp": ParamAnnotation(required=False),
}


class LogInByAccountAction(AbstractAction):
    HTTP_METHOD = "PUT"
    PATH = "/accounts/login"
    NEED_SESSION = False
    NEED_POLL = False
    PARAM_NAME = "logInByAccount"
    PARAMS: ClassVar[dict[str, ParamAnnotation]] = {
        "accountName": ParamAnnotation(required=True),
        "password": ParamAnnotation(required=True),
        "accountType": ParamAnnotation(),
        "captchaUuid": ParamAnnotation(),
        "verifyCode": ParamAnnotation(),
        "clientInfo": ParamAnnotation(),
        "systemTags": ParamAnnotation(),
        "userTags": ParamAnnotation(),
        "requestIp": ParamAnnotation(),
    }


class LogOutAction(AbstractAction):
    HTTP_METHOD = "DELETE"
    PATH = "/accounts/sessions/{sessionUuid}"
    NEED_SESSION = False
    NEED_POLL = False
    PARAM_NAME = ""
    PARAMS: ClassVar[dict[str, ParamAnnotation]] = {
        "sessionUuid": ParamAnnotation(),
        "clientInfo": ParamAnnotation(),
        "systemTags": ParamAnnotation(),
        "userTags": ParamAnnotation(),
        "requestIp": ParamAnnotation(),
    }


class ValidateSessionAction(AbstractAction):
    HTTP_METHOD = "GET"
    PATH = "/accounts/sessions/{sessionUuid}/valid"
    NEED_SESSION = False
    NEED_POLL = False
    PARAM_NAME = ""
    PARAMS: ClassVar[dict[str, ParamAnnotation]] = {
        "sessionUuid": ParamAnnotation(required=True),
        "systemTags": ParamAnnotation(),
        "userTags": ParamAnnotation(),
        "requestIp": ParamAnnotation(),
    }


class RenewSessionAction(AbstractAction):
    HTTP_METHOD = "PUT"
    PATH = "/accounts/sessions/{sessionUuid}/renew"
    NEED_SESSION = True
    NEED_POLL = True
    PARAM_NAME = "renewSession"
    PARAMS: ClassVar[dict[str, ParamAnnotation]] = {
        "sessionUuid": ParamAnnotation(required=True),
        "duration": ParamAnnotation(number_range=[60, 31536000]),
        "systemTags": ParamAnnotation(),
        "userTags": ParamAnnotation(),
        **_SESSION_PARAMS,
    }


class ExportVmOvaPackageAction(AbstractAction):
    HTTP_METHOD = "POST"
    PATH = "/ovf/ova-packages"
    NEED_SESSION = True
    NEED_POLL = True
    PARAM_NAME = "params"
    PARAMS: ClassVar[dict[str, ParamAnnotation]] = {
        "name": ParamAnnotation(max_length=255),
        "description": ParamAnnotation(max_length=2048),
        "vmUuid": ParamAnnotation(required=True),
        "backupStorageUuid": ParamAnnotation(required=True),
        "resourceUuid": ParamAnnotation(),
        "tagUuids": ParamAnnotation(),
        "systemTags": ParamAnnotation(),
        "userTags": ParamAnnotation(),
        **_SESSION_PARAMS,
    }


class QueryImagePackageAction(QueryAction):
    HTTP_METHOD = "GET"
    PATH = "/image-packages"
    NEED_SESSION = True
    NEED_POLL = False
    PARAM_NAME = ""
    PARAMS: ClassVar[dict[str, ParamAnnotation]] = {
        **QueryAction.PARAMS,
        "systemTags": ParamAnnotation(),
        "userTags": ParamAnnotation(),
        **_SESSION_PARAMS,
    }


class QueryUserTagAction(QueryImagePackageAction):
    PATH = "/user-tags"


class QuerySystemTagAction(QueryImagePackageAction):
    PATH = "/system-tags"


class UpdateImagePackageAction(AbstractAction):
    HTTP_METHOD = "PUT"
    PATH = "/image-packages/{uuid}"
    NEED_SESSION = True
    NEED_POLL = True
    PARAM_NAME = "updateImagePackage"
    PARAMS: ClassVar[dict[str, ParamAnnotation]] = {
        "uuid": ParamAnnotation(required=True),
        "name": ParamAnnotation(),
        "description": ParamAnnotation(),
        "systemTags": ParamAnnotation(),
        "userTags": ParamAnnotation(),
        **_SESSION_PARAMS,
    }


class DeleteImagePackageAction(AbstractAction):
    HTTP_METHOD = "DELETE"
    PATH = "/image-packages/{uuid}"
    NEED_SESSION = True
    NEED_POLL = True
    PARAM_NAME = ""
    PARAMS: ClassVar[dict[str, ParamAnnotation]] = {
        "uuid": ParamAnnotation(required=True),
        "deleteMode": ParamAnnotation(),
        "systemTags": ParamAnnotation(),
        "userTags": ParamAnnotation(),
        **_SESSION_PARAMS,
    }


class ParseOvfAction(AbstractAction):
    HTTP_METHOD = "POST"
    PATH = "/ovf/parse"
    NEED_SESSION = True
    NEED_POLL = False
    PARAM_NAME = "params"
    PARAMS: ClassVar[dict[str, ParamAnnotation]] = {
        "xmlBase64": ParamAnnotation(required=True),
        "systemTags": ParamAnnotation(),
        "userTags": ParamAnnotation(),
        **_SESSION_PARAMS,
    }
