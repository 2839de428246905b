"""The OpenAPI 3.0 document of the service, written by hand so it says exactly what the handlers
do (served at ``GET /zstack/v1/openapi.json`` and used by the fuzz test).

Request bodies list the fields each API reads; other fields are ignored (and logged), as ZStack
ignores them, so the schemas allow additional properties."""

from __future__ import annotations

from typing import Any

from ..zstack.inventory import UUID_PATTERN

__all__ = ["openapi_document"]

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS: dict[str, Any] = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "405": {"$ref": "#/components/responses/MethodNotAllowed"},
    "503": {"$ref": "#/components/responses/Failed"},
}

_UUID_PARAM = {
    "name": "uuid",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "Resource uuid (ZStack form: 32 lowercase hex digits)",
}

_STR_LIST = {"type": "array", "items": {"type": "string"}}
# What ZStack's SDK adds to every message object besides the API's own fields.
_COMMON: dict[str, Any] = {
    "systemTags": _STR_LIST,
    "userTags": _STR_LIST,
    "requestIp": {"type": "string"},
}

_EXPORT_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "maxLength": 255, "description": "default exported-vm-<vmName>"},
    "description": {"type": "string", "maxLength": 2048},
    "vmUuid": {"type": "string", "description": "mandatory"},
    "backupStorageUuid": {"type": "string", "description": "mandatory"},
    "resourceUuid": {"type": "string", "pattern": f"^{UUID_PATTERN}$"},
    "tagUuids": _STR_LIST,
}

_SCHEMAS: dict[str, Any] = {
    "ErrorCode": {
        "type": "object",
        "required": ["code", "description"],
        "properties": {
            "code": {"type": "string", "example": "SYS.1006"},
            "description": {"type": "string"},
            "details": {"type": "string"},
            "elaboration": {"type": "string"},
            "location": {"type": "string"},
            "cost": {"type": "string"},
            "opaque": {"type": "object"},
            "cause": {"$ref": _REF + "ErrorCode"},
        },
    },
    "ErrorReply": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": _ref("ErrorCode")},
    },
    "ImagePackageInventory": {
        "type": "object",
        "required": ["uuid", "name", "vmUuid", "backupStorageUuid", "state", "format"],
        "properties": {
            "uuid": {"type": "string"},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "vmUuid": {"type": "string"},
            "backupStorageUuid": {"type": "string"},
            "state": {"type": "string", "enum": ["Exporting", "Exported"]},
            "exportUrl": {"type": "string"},
            "md5Sum": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "format": {"type": "string", "enum": ["OVA"]},
            "size": {"type": "integer", "minimum": 0},
            "createDate": {"type": "string", "example": "May 10, 2022 5:24:03 AM"},
            "lastOpDate": {"type": "string", "example": "May 10, 2022 5:24:03 AM"},
        },
    },
    "ImagePackageReply": {
        "type": "object",
        "required": ["inventory"],
        "properties": {"inventory": _ref("ImagePackageInventory")},
    },
    "ImagePackageQueryReply": {
        "type": "object",
        "description": "inventories, plus total with replyWithCount=true; only total with "
        "count=true",
        "properties": {
            "inventories": {"type": "array", "items": _ref("ImagePackageInventory")},
            "total": {"type": "integer", "minimum": 0},
        },
    },
    "ExportVmOvaPackageParams": {
        "type": "object",
        "properties": {**_EXPORT_FIELDS, **_COMMON},
    },
    "ExportVmOvaPackageRequest": {
        "description": "ZStack's form ({params, systemTags, userTags}) or the flat form of the "
        "reference page's curl example (fields at the top level); both may be mixed, params win.",
        "type": "object",
        "properties": {
            "params": _ref("ExportVmOvaPackageParams"),
            **_EXPORT_FIELDS,
            **_COMMON,
        },
    },
    "LogInByAccountRequest": {
        "type": "object",
        "required": ["logInByAccount"],
        "properties": {
            "logInByAccount": {
                "type": "object",
                        "required": ["accountName", "password"],
                "properties": {
                    "accountName": {"type": "string"},
                    "password": {
                        "type": "string",
                        "description": "SHA-512 hex of the password, as ZStack's SDK sends it "
                        "(a plain password is accepted too)",
                    },
                    "accountType": {"type": "string"},
                    "captchaUuid": {"type": "string"},
                    "verifyCode": {"type": "string"},
                    "clientInfo": {"type": "object"},
                    **_COMMON,
                },
            },
            "systemTags": _STR_LIST,
            "userTags": _STR_LIST,
        },
    },
    "SessionInventory": {
        "type": "object",
        "required": ["uuid", "accountUuid", "userUuid", "expiredDate", "createDate"],
        "properties": {
            "uuid": {"type": "string"},
            "accountUuid": {"type": "string"},
            "userUuid": {"type": "string"},
            "expiredDate": {"type": "string"},
            "createDate": {"type": "string"},
        },
    },
    "LogInReply": {
        "type": "object",
        "required": ["inventory"],
        "properties": {"inventory": _ref("SessionInventory")},
    },
    "UpdateImagePackageRequest": {
        "type": "object",
        "required": ["updateImagePackage"],
        "properties": {
            "updateImagePackage": {
                "type": "object",
                        "properties": {
                    "name": {"type": "string", "maxLength": 255},
                    "description": {"type": "string", "maxLength": 2048},
                    **_COMMON,
                },
            },
            "systemTags": _STR_LIST,
            "userTags": _STR_LIST,
        },
    },
    "ParseOvfRequest": {
        "type": "object",
        "required": ["params"],
        "properties": {
            "params": {
                "type": "object",
                        "required": ["xmlBase64"],
                "properties": {
                    "xmlBase64": {"type": "string", "format": "byte"},
                    **_COMMON,
                },
            },
            "systemTags": _STR_LIST,
            "userTags": _STR_LIST,
        },
    },
    "OvfInfo": {
        "type": "object",
        "description": "ZStack's OvfInfo (sdk OvfInfo and its parts); sizes in bytes",
        "required": ["vmName", "cpu", "memory", "disks", "networks", "nics", "cdDrivers",
                     "volumes", "os", "systemInfo"],
        "properties": {
            "vmName": {"type": "string"},
            "cpu": {
                "type": "object",
                "properties": {
                    "instanceId": {"type": "string"},
                    "quantity": {"type": "integer"},
                    "coresPerSocket": {"type": "integer"},
                },
            },
            "memory": {
                "type": "object",
                "properties": {
                    "instanceId": {"type": "string"}, "quantity": {"type": "integer"},
                },
            },
            "os": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "version": {"type": "string"},
                    "osType": {"type": "string"},
                    "description": {"type": "string"},
                },
            },
            "systemInfo": {
                "type": "object",
                "properties": {
                    "virtualSystemType": {"type": "string"},
                    "firmwareType": {"type": "string"},
                },
            },
            "disks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "diskId"],
                    "properties": {
                        "index": {"type": "integer"},
                        "diskId": {"type": "string"},
                        "fileRef": {"type": "string"},
                        "fileName": {"type": "string"},
                        "format": {"type": "string"},
                        "populatedSize": {"type": "integer"},
                        "capacity": {"type": "integer"},
                    },
                },
            },
            "networks": {
                "type": "array",
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
            "nics": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "networkName": {"type": "string"},
                        "nicModel": {"type": "string"},
                        "nicName": {"type": "string"},
                        "autoAllocation": {"type": "boolean"},
                    },
                },
            },
            "cdDrivers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "autoAllocation": {"type": "boolean"},
                        "driverType": {"type": "string"},
                        "subType": {"type": "string"},
                        "name": {"type": "string"},
                    },
                },
            },
            "volumes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "diskId": {"type": "string"},
                        "driverType": {"type": "string"},
                    },
                },
            },
        },
    },
    "ParseOvfReply": {
        "type": "object",
        "required": ["ovfInfo"],
        "properties": {"ovfInfo": _ref("OvfInfo")},
    },
    "TagInventory": {
        "type": "object",
        "required": ["uuid", "resourceUuid", "resourceType", "tag", "type"],
        "properties": {
            "uuid": {"type": "string"},
            "resourceUuid": {"type": "string"},
            "resourceType": {"type": "string", "example": "ImagePackageVO"},
            "tag": {"type": "string"},
            "type": {"type": "string", "enum": ["System", "Simple"]},
            "inherent": {"type": "boolean", "description": "system tags only"},
            "createDate": {"type": "string"},
            "lastOpDate": {"type": "string"},
        },
    },
    "TagQueryReply": {
        "type": "object",
        "properties": {
            "inventories": {"type": "array", "items": _ref("TagInventory")},
            "total": {"type": "integer", "minimum": 0},
        },
    },
    "ValidateSessionReply": {
        "type": "object",
        "required": ["valid"],
        "properties": {"valid": {"type": "boolean"}},
    },
    "RenewSessionRequest": {
        "type": "object",
        "properties": {
            "renewSession": {
                "type": "object",
                "properties": {
                    "duration": {
                        "type": "integer",
                        "description": "seconds, 60 to 31536000 (default: the session lifetime)",
                    },
                    **_COMMON,
                },
            },
            "systemTags": _STR_LIST,
            "userTags": _STR_LIST,
        },
    },
    "JobLocation": {
        "type": "object",
        "required": ["location", "apiTimeout"],
        "properties": {
            "location": {"type": "string", "format": "uri"},
            "apiTimeout": {"type": "integer", "description": "milliseconds"},
        },
    },
    "JobResult": {
        "description": "What the call would have answered synchronously",
        "anyOf": [_ref("ImagePackageReply"), _ref("LogInReply"), _ref("Empty")],
    },
    "Empty": {"type": "object", "maxProperties": 0},
}

_RESPONSES: dict[str, Any] = {
    "BadRequest": {
        "description": "Malformed request: not JSON, not an object, wrong type, too large, bad "
        "header (SYS.1007); RestServer's refusals before any API runs in plain text (missing "
        "Authorization header, other authorization type, AccessKey Date checks)",
        "content": {
            "application/json": {"schema": _ref("ErrorReply")},
            "text/plain": {"schema": {"type": "string"}},
        },
    },
    "Unauthorized": {
        **_json(_ref("ErrorReply"), "No valid session (ID.1001) or wrong password (ID.1000)"),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    "NotFound": _json(_ref("ErrorReply"), "No such route or resource (SYS.1003)"),
    "MethodNotAllowed": {
        **_json(_ref("ErrorReply"), "Method not allowed on this path"),
        "headers": {"Allow": {"schema": {"type": "string"}}},
    },
    "Failed": _json(
        _ref("ErrorReply"),
        "The API call failed; ZStack answers failed calls with 503 and an ErrorCode",
    ),
}

_Q_PARAMS: list[dict[str, Any]] = [
    {
        "name": "q",
        "in": "query",
        "schema": {"type": "array", "items": {"type": "string"}},
        "style": "form",
        "explode": True,
        "description": "ZStack query condition field<op>value (op one of = != > < >= <= ~= !~= "
        "?= !?=) or 'field is null' / 'field not null'; the fields __userTag__ and "
        "__systemTag__ match the packages' tags (repeatable, all must hold)",
    },
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    {"name": "start", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    {
        "name": "sort",
        "in": "query",
        "schema": {"type": "string"},
        "description": "[+|-]field, as ZStack's SDK sends it (+ ascending, - descending)",
    },
    {"name": "sortBy", "in": "query", "schema": {"type": "string"}},
    {
        "name": "sortDirection",
        "in": "query",
        "schema": {"type": "string", "enum": ["asc", "desc"]},
    },
    {"name": "replyWithCount", "in": "query", "schema": {"type": "boolean"}},
    {"name": "count", "in": "query", "schema": {"type": "boolean"}},
    {
        "name": "fields",
        "in": "query",
        "schema": {"type": "string"},
        "description": "comma-separated inventory fields to return",
    },
    {
        "name": "groupBy",
        "in": "query",
        "schema": {"type": "string"},
        "description": "one inventory per distinct value of this field (total: the groups)",
    },
    {
        "name": "filterName",
        "in": "query",
        "schema": {"type": "string"},
        "description": "a named ZQL filter; none is defined for image packages or tags",
    },
]

# Query strings of the tag queries: the same parameters (no groupBy).
_TAG_Q_PARAMS = [p for p in _Q_PARAMS if p["name"] != "groupBy"]

_JOB_HEADERS: list[dict[str, Any]] = [
    {
        "name": "X-Job-UUID",
        "in": "header",
        "schema": {"type": "string"},
        "description": "the job form with this uuid (32 letters/digits), as ZStack's SDKs send",
    },
    {
        "name": "X-Web-Hook",
        "in": "header",
        "schema": {"type": "string"},
        "description": "the job form, its final reply POSTed to this URL (allowed hosts only)",
    },
    {
        "name": "X-API-Timeout",
        "in": "header",
        "schema": {"type": "string"},
        "description": "apiTimeout reported in the 202, in seconds",
    },
    {
        "name": "X-Job-Mode",
        "in": "header",
        "schema": {"type": "string", "enum": ["sync", "async"]},
        "description": "async: the job form; sync: the synchronous answer whatever else is sent",
    },
]

_JOB_STARTED = _json(_ref("JobLocation"), "Job started; poll location")

_SECURED: list[dict[str, list[str]]] = [{"OAuth": []}]


def _paths() -> dict[str, Any]:
    export_body = {
        "required": True,
        "content": {"application/json": {"schema": _ref("ExportVmOvaPackageRequest")}},
    }
    return {
        "/zstack/v1/accounts/login": {
            "put": {
                "operationId": "LogInByAccount",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("LogInByAccountRequest")}},
                },
                "responses": {
                    "200": _json(_ref("LogInReply"), "A new session"),
                    **_ERRORS,
                    "429": _json(
                        _ref("ErrorReply"),
                        "This client failed too often for this account: wait Retry-After seconds",
                    ),
                },
            }
        },
        "/zstack/v1/accounts/sessions/{uuid}": {
            "parameters": [_UUID_PARAM],
            "delete": {
                "operationId": "LogOut",
                "security": [],
                "responses": {"200": _json(_ref("Empty"), "Session ended (or did not exist)"),
                              **_ERRORS},
            },
        },
        "/zstack/v1/accounts/sessions/{uuid}/valid": {
            "parameters": [_UUID_PARAM],
            "get": {
                "operationId": "ValidateSession",
                "security": [],
                "responses": {
                    "200": _json(_ref("ValidateSessionReply"), "Whether the session is live"),
                    **_ERRORS,
                },
            },
        },
        "/zstack/v1/accounts/sessions/{uuid}/renew": {
            "parameters": [_UUID_PARAM],
            "put": {
                "operationId": "RenewSession",
                "security": _SECURED,
                "parameters": _JOB_HEADERS,
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("RenewSessionRequest")}},
                },
                "responses": {
                    "200": _json(_ref("LogInReply"), "The session with its new expiredDate"),
                    "202": _JOB_STARTED,
                    **_ERRORS,
                },
            },
        },
        "/zstack/v1/user-tags": {
            "get": {
                "operationId": "QueryUserTag",
                "security": _SECURED,
                "parameters": _TAG_Q_PARAMS,
                "responses": {"200": _json(_ref("TagQueryReply"), "Matching user tags"),
                              **_ERRORS},
            }
        },
        "/zstack/v1/system-tags": {
            "get": {
                "operationId": "QuerySystemTag",
                "security": _SECURED,
                "parameters": _TAG_Q_PARAMS,
                "responses": {"200": _json(_ref("TagQueryReply"), "Matching system tags"),
                              **_ERRORS},
            }
        },
        "/zstack/v1/ovf/ova-packages": {
            "post": {
                "operationId": "ExportVmOvaPackage",
                "security": _SECURED,
                "parameters": _JOB_HEADERS,
                "requestBody": export_body,
                "responses": {
                    "200": _json(_ref("ImagePackageReply"), "The package is Exported"),
                    "202": _JOB_STARTED,
                    **_ERRORS,
                },
            }
        },
        "/zstack/v1/api-jobs/{uuid}": {
            "parameters": [_UUID_PARAM],
            "get": {
                "operationId": "GetApiJob",
                "security": _SECURED,
                "responses": {
                    "200": _json(_ref("JobResult"), "The job's result"),
                    "202": _json(_ref("Empty"), "Still running"),
                    "404": {"$ref": "#/components/responses/NotFound"},
                    **_ERRORS,
                },
            },
        },
        "/zstack/v1/image-packages": {
            "get": {
                "operationId": "QueryImagePackage",
                "security": _SECURED,
                "parameters": _Q_PARAMS,
                "responses": {"200": _json(_ref("ImagePackageQueryReply"), "Matching records"),
                              **_ERRORS},
            }
        },
        "/zstack/v1/image-packages/{uuid}": {
            "parameters": [_UUID_PARAM],
            "get": {
                "operationId": "GetImagePackage",
                "security": _SECURED,
                "parameters": _Q_PARAMS,
                "responses": {
                    "200": _json(_ref("ImagePackageQueryReply"), "The record (0 or 1, as ZStack)"),
                    **_ERRORS,
                },
            },
            "put": {
                "operationId": "UpdateImagePackage",
                "security": _SECURED,
                "parameters": _JOB_HEADERS,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("UpdateImagePackageRequest")}
                    },
                },
                "responses": {"200": _json(_ref("ImagePackageReply"), "Updated record"),
                              "202": _JOB_STARTED, **_ERRORS},
            },
            "delete": {
                "operationId": "DeleteImagePackage",
                "security": _SECURED,
                "parameters": [
                    {
                        "name": "deleteMode",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["Permissive", "Enforcing"]},
                    },
                    {"name": "systemTags", "in": "query", "schema": _STR_LIST},
                    {"name": "userTags", "in": "query", "schema": _STR_LIST},
                    {"name": "requestIp", "in": "query", "schema": {"type": "string"}},
                    *_JOB_HEADERS,
                ],
                "responses": {"200": _json(_ref("Empty"), "Deleted"), "202": _JOB_STARTED,
                              **_ERRORS},
            },
        },
        "/zstack/v1/ovf/parse": {
            "post": {
                "operationId": "ParseOvf",
                "security": _SECURED,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ParseOvfRequest")}},
                },
                "responses": {"200": _json(_ref("ParseOvfReply"), "The VM"), **_ERRORS},
            }
        },
        "/ova-packages/{token}/{uuid}.ova": {
            "parameters": [
                {"name": "token", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "The package's download token (only in its exportUrl)"},
                _UUID_PARAM,
            ],
            "get": {
                "operationId": "DownloadOvaPackage",
                "security": [],
                "description": "The package file of a local backup storage (exportUrl). No "
                "session, as ZStack's exportUrl is plain HTTP on the backup storage host: the "
                "token in the path is the capability (256 random bits, shown only to the "
                "package's account and the admin; the package uuid alone opens nothing). With "
                "`ovfkit serve --download-ttl`, the URL works that long after the export or the "
                "package's last UpdateImagePackage; then 404. Byte ranges (RFC 9110 14): one range "
                "gives 206 with Content-Range; several give 206 multipart/byteranges, "
                "overlapping ones merged; ranges past the end are dropped, 416 only when none "
                "is left; a unit other than bytes, or more than 100 ranges, is ignored (200, "
                "the whole file); a malformed header is 400.",
                "parameters": [
                    {"name": "Range", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "The whole package",
                        "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                           "format": "binary"}}},
                    },
                    "206": {
                        "description": "The range asked for; several ranges as multipart",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                            "multipart/byteranges": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                        },
                    },
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "404": {"$ref": "#/components/responses/NotFound"},
                    "405": {"$ref": "#/components/responses/MethodNotAllowed"},
                    "416": {
                        **_json(_ref("ErrorReply"), "No range starts inside the package"),
                        "headers": {"Content-Range": {"schema": {"type": "string"},
                                                      "description": "bytes */<size>"}},
                    },
                    "503": {"$ref": "#/components/responses/Failed"},
                },
            },
        },
        "/ova-packages/{uuid}.ova": {
            "parameters": [_UUID_PARAM],
            "get": {
                "operationId": "DownloadOvaPackageWithoutToken",
                "deprecated": True,
                "security": [],
                "description": "The download URL of versions before download tokens: always "
                "404, with the hint that the package's exportUrl (QueryImagePackage) is the URL "
                "to fetch now.",
                "responses": {"404": {"$ref": "#/components/responses/NotFound"}},
            },
        },
        "/zstack/v1/openapi.json": {
            "get": {
                "operationId": "GetOpenApi",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "This document")},
            }
        },
    }


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "ovfkit ZStack OVA service",
            "version": "1.0",
            "description": "ZStack's ExportVmOvaPackage and image-package APIs served by "
            "`ovfkit serve`. Every error body is {\"error\": ErrorCode}.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _SCHEMAS,
            "responses": _RESPONSES,
            "securitySchemes": {
                "OAuth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`OAuth <session uuid>` from PUT /zstack/v1/accounts/login, "
                    "or `ZStack <AccessKeyId>:<signature>` with a Date header (zssdk's "
                    "calculateAccessKey)",
                }
            },
        },
        "security": _SECURED,
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
