"""ZStack AccessKey authentication: ``Authorization: ZStack <AccessKeyId>:<signature>``.

The SDKs sign instead of sending a session when they are given an AccessKey pair (zssdk.py
``AbstractAction.calculateAccessKey``, Java ``ZSClient.calculateAccessKeySignature``)::

    signature = base64(HMAC-SHA1(secret, METHOD + "\\n" + Date + "\\n" + "/v1/<path>"))

with the request's ``Date`` header (zssdk: ``%a, %d %b %Y %H:%M:%S CST`` in local time; Java:
``EEE, dd MMM yyyy HH:mm:ss VV``) and the URL path after the context path (``/zstack``),
decoded, without the query string. RestServer checks the header first: a missing ``Date`` is
400 ``'Date' must be incuded in request header``, an unreadable one 400 ``'Date' format error,
correct format is 'EEE, dd MMM yyyy HH:mm:ss z'``, one more than 15 minutes
(RestConstants.REQUEST_DURATION_MINUTES) from the server's clock 403 ``requestTimeTooSkewed``
(compared as wall-clock times, the zone ignored: rest.checkTimeZone off, which the Python SDK's
fixed ``CST`` needs), a header that is not ``id:signature`` 400 ``accessKey format is 'ZStack
AccessKeyId:Signature'``.

Like ZStack's scheme, the signature covers neither the body nor the query string, and a signed
request can be replayed for 15 minutes: use it over HTTPS. The secret has to be kept to check
HMACs, so it is stored as is in ``auth.sqlite`` (keep the data folder private).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection, delete, insert, select

from ..db import Database
from ..db.schema import access_keys as K
from ..db.schema import accounts as A
from ..errors import InvalidArgumentError, NotFoundError, OvfkitError
from .auth import AUTH_DB_NAME, AuthenticationError, open_auth_database

__all__ = [
    "AccessKey",
    "AccessKeyRequestError",
    "AccessKeyStore",
    "parse_date_header",
    "sign",
]

REQUEST_DURATION = timedelta(minutes=15)
_ALPHABET = string.ascii_letters + string.digits
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DATE_RE = re.compile(
    r"[A-Za-z]{3}, (\d{1,2}) ([A-Za-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) (\S+)"
)


class AccessKeyRequestError(OvfkitError):
    """A request RestServer refuses before authenticating it (answered 400, or 403 with
    ``status`` for a skewed date), with RestServer's plain-text message."""

    code = "SYS.1007"
    description = "One or more API argument is invalid"

    def __init__(self, details: str, *, status: int = 400) -> None:
        super().__init__(details)
        self.status = status


def sign(secret: str, method: str, date: str, path: str) -> str:
    """The signature zssdk's calculateAccessKey makes (base64 of the HMAC-SHA1)."""
    message = f"{method}\n{date}\n{path}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def parse_date_header(value: str | None, now: datetime) -> None:
    """Check a ``Date`` header as RestServer.checkTime does (see the module docstring)."""
    if value is None:
        raise AccessKeyRequestError("'Date' must be incuded in request header")
    m = _DATE_RE.fullmatch(value.strip())
    month = _MONTHS.index(m.group(2).lower()) + 1 if m and m.group(2).lower() in _MONTHS else 0
    try:
        if m is None or not month:
            raise ValueError(value)
        when = datetime(int(m.group(3)), month, int(m.group(1)), int(m.group(4)),
                        int(m.group(5)), int(m.group(6)))
    except ValueError:
        raise AccessKeyRequestError(
            "'Date' format error, correct format is 'EEE, dd MMM yyyy HH:mm:ss z'"
        ) from None
    if abs(when - now) > REQUEST_DURATION:
        raise AccessKeyRequestError("requestTimeTooSkewed", status=403)


@dataclass(frozen=True)
class AccessKey:
    """ZStack's AccessKeyInventory, less the secret."""

    id: str
    account_uuid: str
    description: str
    create_date: float


class AccessKeyStore:
    """AccessKey pairs of the accounts in ``<data_dir>/auth.sqlite``, or in ``database``
    (shared by API nodes; the caller closes it)."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        database: Database | None = None,
    ) -> None:
        self.path = Path(data_dir) / AUTH_DB_NAME
        self._clock = clock
        self._own = database is None
        self.db = database if database is not None else open_auth_database(self.path)

    def close(self) -> None:
        if self._own:
            self.db.close()

    @staticmethod
    def _account_uuid(conn: Connection, name: str) -> str:
        row = conn.execute(select(A.c.uuid).where(A.c.name == name)).first()
        if row is None:
            raise NotFoundError(f"account {name!r} not found")
        return str(row[0])

    def add(self, account_name: str, description: str = "") -> tuple[AccessKey, str]:
        """A new pair for ``account_name``: (the key, its secret). ZStack's form: a 20-character
        AccessKeyId and a 40-character AccessKeySecret."""
        _check_description(description)
        key_id = "".join(secrets.choice(_ALPHABET) for _ in range(20))
        secret = "".join(secrets.choice(_ALPHABET) for _ in range(40))
        with self.db.begin() as conn:
            account_uuid = self._account_uuid(conn, account_name)
            key = AccessKey(key_id, account_uuid, description, self._clock())
            conn.execute(
                insert(K).values(id=key.id, account_uuid=key.account_uuid, secret=secret,
                                 description=description, create_date=key.create_date)
            )
        return key, secret

    def list(self, account_name: str) -> list[AccessKey]:
        with self.db.connect() as conn:
            account_uuid = self._account_uuid(conn, account_name)
            rows = conn.execute(
                select(K.c.id, K.c.account_uuid, K.c.description, K.c.create_date)
                .where(K.c.account_uuid == account_uuid).order_by(K.c.create_date)
            ).all()
        return [AccessKey(*row) for row in rows]

    def remove(self, key_id: str) -> None:
        with self.db.begin() as conn:
            count = conn.execute(delete(K).where(K.c.id == key_id)).rowcount
        if count == 0:
            raise NotFoundError(f"access key {key_id!r} not found")

    def authenticate(
        self, credentials: str, method: str, date: str | None, path: str
    ) -> str:
        """The account uuid of a valid ``<AccessKeyId>:<signature>`` for this request;
        AccessKeyRequestError for RestServer's header checks, ID.1000 for an unknown key or a
        wrong signature (the same answer for both)."""
        parts = credentials.split(":")
        if len(parts) != 2:
            raise AccessKeyRequestError("accessKey format is 'ZStack AccessKeyId:Signature'")
        parse_date_header(date, datetime.fromtimestamp(self._clock()))
        assert date is not None
        key_id, signature = parts
        with self.db.connect() as conn:
            row = conn.execute(
                select(K.c.secret, K.c.account_uuid).where(K.c.id == key_id)
            ).first()
        # An unknown id costs the same HMAC as a known one.
        secret, account_uuid = row if row is not None else ("\0" * 40, None)
        expected = sign(secret, method, date.strip(), path)
        if not hmac.compare_digest(expected.encode(), signature.strip().encode()) or (
            account_uuid is None
        ):
            raise AuthenticationError("invalid AccessKey id or signature")
        return str(account_uuid)


def _check_description(description: str) -> None:
    if len(description) > 2048:
        raise InvalidArgumentError("an access key description is at most 2048 characters")
