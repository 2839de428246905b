"""The HTTP service for ZStack's ExportVmOvaPackage and image-package REST endpoints
(``ovfkit serve``), on Starlette + uvicorn: the ``server`` extra (``pip install
'ovfkit[server]'``; without it importing this package is a MissingExtraError). Importing this
package loads Starlette; nothing else happens on import.

Endpoints (the OpenAPI document at ``GET /zstack/v1/openapi.json`` has every schema)::

    PUT    /zstack/v1/accounts/login                 {"logInByAccount": {accountName, password}}
    DELETE /zstack/v1/accounts/sessions/{uuid}       LogOut
    GET    /zstack/v1/accounts/sessions/{uuid}/valid ValidateSession -> {"valid": bool}
    PUT    /zstack/v1/accounts/sessions/{uuid}/renew RenewSession {"renewSession": {duration?}}
    POST   /zstack/v1/ovf/ova-packages               ExportVmOvaPackage ({"params": {...}} or flat)
    GET    /zstack/v1/api-jobs/{uuid}                a job's result (ZStack's job form)
    GET    /zstack/v1/image-packages[/{uuid}]        QueryImagePackage (ZStack's query string)
    PUT    /zstack/v1/image-packages/{uuid}          {"updateImagePackage": {name?, description?}}
    DELETE /zstack/v1/image-packages/{uuid}          DeleteImagePackage (deleteMode accepted)
    GET    /zstack/v1/user-tags, /system-tags        QueryUserTag / QuerySystemTag
    POST   /zstack/v1/ovf/parse                      {"params": {"xmlBase64": ...}} -> {"ovfInfo"}
    GET    /ova-packages/{token}/{uuid}.ova          download = exportUrl (HEAD, byte ranges)
    GET    /zstack/v1/openapi.json                   this API's OpenAPI 3.0 document

Choices:

- Credentials: every API except login, logout, ValidateSession, downloads and the OpenAPI
  document needs ``Authorization: OAuth <session uuid>`` or an AccessKey signature
  (``Authorization: ZStack <id>:<signature>`` and ``Date``; :mod:`ovfkit.zstack.accesskeys`).
  The login password is what ZStack's SDK sends (the SHA-512 hex of the password); a plain
  password is accepted too, for curl users.
- Status codes (:mod:`.errors`): 200 success; 503 ``{"error"}`` when the API call ran and failed
  (ZStack's REST server does the same, so its SDKs read our errors as ZStack's); 400 for a request
  that cannot be read as the API message (RestServer's own refusals in plain text); 401 for
  sessions and credentials; 404 "no api mapping"; 405 with ``Allow``; never 500 (unexpected
  exceptions become SYS.1000, logged, not shown).
- The job form (:mod:`.jobs`): the APIs ZStack's SDKs poll answer ``202 {"location",
  "apiTimeout"}`` when asked (``X-Job-UUID``, ``X-Web-Hook``, ``X-Job-Mode: async``), the
  others and plain requests synchronously. Webhooks only to allowed hosts (:mod:`.webhook`).
  Jobs are kept in memory for an hour after they finish.
- Exports run in worker threads (``--export-workers`` at a time) so the service keeps answering.
  On SIGTERM (:mod:`.runner`, :mod:`.drain`) the service stops accepting, refuses new exports,
  lets running ones finish within ``--shutdown-grace`` seconds, then cancels the rest, which
  roll back and answer SYS.1017.
- Slow and hostile clients (:mod:`.runner`): header and body timeouts (408), a connection limit
  below the file-descriptor limit (503), malformed HTTP (400), all in ZStack JSON, one log line
  per condition. Failed logins back off per (account, client address) (429).
- Packages belong to the account that exported them, as ZStack's resources do: queries (tags
  too), updates and deletes see only the caller's packages; the account named ``admin`` sees
  all. Another account's package is not found, as an unknown one.
- Downloads need no session: exportUrl is what importers and ``wget`` fetch, as ZStack's
  exportUrl is plain HTTP on the backup storage host. It is a capability URL: the random
  256-bit download token in its path opens it, not the package uuid that queries list; with
  ``--download-ttl`` it expires that long after the export or the last UpdateImagePackage.
  Only Exported packages of local backup storages are served.
- ``--ssl-certfile``/``--ssl-keyfile`` serve HTTPS (the session uuid and the password digest
  are replayable, so use it off localhost); exportUrl then starts with https.
- Bodies are limited to 1 MiB. Fields and query parameters an API does not know are ignored and
  logged by name, as ZStack ignores them (its SDKs send more than an API reads); known ones keep
  their type and value checks. Credentials never reach the logs (:mod:`.logs`).
"""

from __future__ import annotations

from .._extras import needs_extra

with needs_extra("server", "the HTTP service"):
    from .app import JOB_MODE_HEADER, ServiceConfig, create_app
    from .backend import Backend
    from .openapi import openapi_document

__all__ = ["JOB_MODE_HEADER", "Backend", "ServiceConfig", "create_app", "openapi_document"]
