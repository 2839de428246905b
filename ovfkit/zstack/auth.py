"""Accounts and sessions of the HTTP service, kept in the data folder (``auth.sqlite``) or in
the shared database of a many-host service (``database=``), through :mod:`ovfkit.db`.

ZStack's ``LogInByAccount`` sends the password as the SHA-512 hex digest of the plain password
(zstack-cli and the SDK examples hash it before sending); ZStack stores and compares that digest.
Here the digest is never stored as is: it is stretched with scrypt under a per-account random salt
(RFC 7914 parameters below) and compared in constant time, so a copy of ``auth.sqlite`` does not
give anyone a password that logs in.

Online guessing is slowed per (account name, client address) with exponential backoff
(:mod:`.throttle`): a client that keeps failing waits longer and longer, and nobody else is
affected, so no one can lock an account out for others. Sessions carry ZStack's default
lifetime (global config ``identity.session.timeout``, 7200 s) and are refused once expired; the
uuid of a session is what clients send as ``Authorization: OAuth``.
Error codes follow ZStack's ``IdentityErrors``: ID.1000 authentication error, ID.1001 invalid
session.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import re
import secrets
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..db import Database, open_database, sqlite_url
from ..db.schema import accounts as A
from ..db.schema import sessions as S
from ..errors import InvalidArgumentError, NotFoundError, OvfkitError
from .private import private_database, private_folder
from .throttle import LoginThrottle

__all__ = [
    "ADMIN_ACCOUNT",
    "DEFAULT_SESSION_TTL",
    "Account",
    "AuthStore",
    "AuthenticationError",
    "InvalidSessionError",
    "LoginThrottledError",
    "Session",
    "normalize_wire_password",
    "wire_password",
    "zstack_timestamp",
]

DEFAULT_SESSION_TTL = 7200.0
# ZStack's AccountConstant.INITIAL_SYSTEM_ADMIN_NAME: the account that sees every account's
# resources; the others see their own.
ADMIN_ACCOUNT = "admin"
AUTH_DB_NAME = "auth.sqlite"

# scrypt cost: 16 MiB of memory and ~50 ms per login on one core (RFC 7914 section 2 suggests
# N=2^14, r=8 for interactive logins).
_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
_SCRYPT_LEN = 32

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,254}")
_SHA512_HEX = re.compile(r"[0-9a-fA-F]{128}")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class AuthenticationError(OvfkitError):
    code = "ID.1000"
    description = "Authentication failed"


class LoginThrottledError(AuthenticationError):
    """Too many failed logins from this client for this account: it must wait ``retry_after``
    seconds (the password was not looked at)."""

    def __init__(self, details: str, *, retry_after: float) -> None:
        super().__init__(details)
        self.retry_after = retry_after


class InvalidSessionError(OvfkitError):
    code = "ID.1001"
    description = "Session expired or invalid"


def zstack_timestamp(ts: float) -> str:
    """ZStack's JSON date, e.g. ``May 10, 2022 5:24:03 AM`` (local time, English month)."""
    dt = datetime.fromtimestamp(ts)
    hour = dt.hour % 12 or 12
    half = "AM" if dt.hour < 12 else "PM"
    return f"{_MONTHS[dt.month - 1]} {dt.day}, {dt.year} {hour}:{dt:%M:%S} {half}"


def wire_password(plain: str) -> str:
    """What a ZStack client sends for ``plain``: its SHA-512 as lowercase hex."""
    return hashlib.sha512(plain.encode("utf-8")).hexdigest()


def normalize_wire_password(sent: str) -> str:
    """Accept what ZStack's SDK sends (a SHA-512 hex digest) and, for curl users, a plain
    password, which is hashed the same way; either way the result is the SHA-512 hex."""
    if _SHA512_HEX.fullmatch(sent):
        return sent.lower()
    return wire_password(sent)


def _stretch(wire: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        wire.encode("ascii"),
        salt=salt,
        n=_SCRYPT_N,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        dklen=_SCRYPT_LEN,
        maxmem=64 * 1024 * 1024,
    )


@dataclass(frozen=True)
class Account:
    uuid: str
    name: str
    create_date: float


@dataclass(frozen=True)
class Session:
    """A login session. ZStack reports ``userUuid`` equal to ``accountUuid`` for account logins."""

    uuid: str
    account_uuid: str
    create_date: float
    expired_date: float

    def to_inventory(self) -> dict[str, Any]:
        """ZStack's SessionInventory JSON."""
        return {
            "uuid": self.uuid,
            "accountUuid": self.account_uuid,
            "userUuid": self.account_uuid,
            "expiredDate": zstack_timestamp(self.expired_date),
            "createDate": zstack_timestamp(self.create_date),
        }


def open_auth_database(path: Path) -> Database:
    """A data folder's ``auth.sqlite``, created 0600 in a 0700 folder (it holds sessions)."""
    private_folder(path.parent)
    private_database(path)
    return open_database(sqlite_url(path))


class AuthStore:
    """Accounts and sessions in ``<data_dir>/auth.sqlite`` (created 0600), or in ``database``
    (shared by API nodes; the caller closes it). Safe to share between threads and processes."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        session_ttl: float = DEFAULT_SESSION_TTL,
        clock: Callable[[], float] = time.time,
        database: Database | None = None,
    ) -> None:
        if session_ttl <= 0:
            raise InvalidArgumentError(f"session lifetime must be positive, got {session_ttl}")
        self.path = Path(data_dir) / AUTH_DB_NAME
        self.session_ttl = session_ttl
        self._clock = clock
        self.throttle = LoginThrottle(clock=clock)
        self._own = database is None
        self.db = database if database is not None else open_auth_database(self.path)

    def close(self) -> None:
        if self._own:
            self.db.close()

    # -- accounts -----------------------------------------------------------------------------

    def create_account(self, name: str, password: str) -> Account:
        """Create account ``name`` with the plain ``password``; SYS.1007 if the name is taken or
        not a valid account name, or the password is empty."""
        if not _NAME_RE.fullmatch(name):
            raise InvalidArgumentError(
                f"invalid account name {name!r}: use 1-255 letters, digits, '_', '.', '@', '-', "
                "starting with a letter or digit"
            )
        if not password:
            raise InvalidArgumentError("the password of an account cannot be empty")
        salt = secrets.token_bytes(16)
        digest = _stretch(wire_password(password), salt)
        account = Account(uuid=uuidlib.uuid4().hex, name=name, create_date=self._clock())
        try:
            with self.db.begin() as conn:
                conn.execute(
                    insert(A).values(uuid=account.uuid, name=name, salt=salt, hash=digest,
                                     create_date=account.create_date)
                )
        except IntegrityError:
            raise InvalidArgumentError(f"account {name!r} already exists") from None
        return account

    def set_password(self, name: str, password: str) -> None:
        """Give ``name`` a new password and end its sessions; SYS.1003 if there is no such
        account."""
        if not password:
            raise InvalidArgumentError("the password of an account cannot be empty")
        salt = secrets.token_bytes(16)
        digest = _stretch(wire_password(password), salt)
        with self.db.begin() as conn:
            row = conn.execute(select(A.c.uuid).where(A.c.name == name)).first()
            if row is None:
                raise NotFoundError(f"account {name!r} not found")
            conn.execute(update(A).where(A.c.uuid == row[0]).values(salt=salt, hash=digest))
            conn.execute(delete(S).where(S.c.account_uuid == row[0]))

    def remove_account(self, name: str) -> None:
        """Remove ``name`` and end its sessions; SYS.1003 if there is no such account."""
        with self.db.begin() as conn:
            # Sessions go with the account (ON DELETE CASCADE too, said here for clarity).
            row = conn.execute(select(A.c.uuid).where(A.c.name == name)).first()
            if row is None:
                raise NotFoundError(f"account {name!r} not found")
            conn.execute(delete(S).where(S.c.account_uuid == row[0]))
            conn.execute(delete(A).where(A.c.uuid == row[0]))

    def is_admin(self, account_uuid: str) -> bool:
        """Whether ``account_uuid`` is the administrator: the account named
        :data:`ADMIN_ACCOUNT`, as ZStack's initial system admin is."""
        with self.db.connect() as conn:
            name = conn.execute(select(A.c.name).where(A.c.uuid == account_uuid)).scalar()
        return name == ADMIN_ACCOUNT

    def list_accounts(self) -> list[Account]:
        with self.db.connect() as conn:
            rows = conn.execute(
                select(A.c.uuid, A.c.name, A.c.create_date).order_by(A.c.name)
            ).all()
        return [Account(uuid=r[0], name=r[1], create_date=r[2]) for r in rows]

    # -- sessions -----------------------------------------------------------------------------

    def login(self, name: str, password: str, *, client: str | None = None) -> Session:
        """Open a session for ``name``; ``password`` as ZStack sends it (SHA-512 hex) or plain.
        A wrong name and a wrong password give the same ID.1000 error after the same work.
        ``client`` (the peer's address) is what failures are counted against (:mod:`.throttle`);
        a client that must wait gets :class:`LoginThrottledError`."""
        self._check_throttle(name, client)
        wire = normalize_wire_password(password)
        with self.db.connect() as conn:
            row = conn.execute(
                select(A.c.uuid, A.c.salt, A.c.hash).where(A.c.name == name)
            ).first()
        if row is None:
            # Same scrypt cost for unknown names, so timing does not tell which names exist.
            _stretch(wire, b"\0" * 16)
            self._failed(name, client)
        account_uuid, salt, stored = row
        if not hmac.compare_digest(_stretch(wire, salt), stored):
            self._failed(name, client)
        self.throttle.succeeded(name, client)
        now = self._clock()
        session = Session(
            uuid=uuidlib.uuid4().hex,
            account_uuid=account_uuid,
            create_date=now,
            expired_date=now + self.session_ttl,
        )
        with self.db.begin() as conn:
            conn.execute(delete(S).where(S.c.expired_date <= now))
            conn.execute(
                insert(S).values(uuid=session.uuid, account_uuid=session.account_uuid,
                                 create_date=session.create_date,
                                 expired_date=session.expired_date)
            )
        return session

    def _check_throttle(self, name: str, client: str | None) -> None:
        wait = self.throttle.wait(name, client)
        if wait > 0:
            seconds = math.ceil(wait)
            raise LoginThrottledError(
                f"too many failed logins for account[{name}] from this client; "
                f"try again in {seconds} s",
                retry_after=seconds,
            )

    def _failed(self, name: str, client: str | None) -> NoReturn:
        self.throttle.failed(name, client)
        raise AuthenticationError("wrong account name or password")

    def validate(self, session_uuid: str) -> Session:
        """The live session ``session_uuid``; ID.1001 if unknown, logged out or expired."""
        with self.db.connect() as conn:
            row = conn.execute(
                select(S.c.uuid, S.c.account_uuid, S.c.create_date, S.c.expired_date)
                .where(S.c.uuid == session_uuid)
            ).first()
        # ZStack's Session.checkSessionExpired answers both cases alike: "Session expired".
        if row is None:
            raise InvalidSessionError("Session expired")
        session = Session(uuid=row[0], account_uuid=row[1], create_date=row[2], expired_date=row[3])
        if session.expired_date <= self._clock():
            raise InvalidSessionError("Session expired")
        return session

    def renew(self, session_uuid: str, duration: float | None = None) -> Session:
        """RenewSession (identity Session.renewSession): a live session expires ``duration``
        seconds from now (default: the session lifetime); ID.1001 if it is not live."""
        session = self.validate(session_uuid)
        expired = self._clock() + (self.session_ttl if duration is None else duration)
        with self.db.begin() as conn:
            conn.execute(update(S).where(S.c.uuid == session.uuid).values(expired_date=expired))
        return dataclasses.replace(session, expired_date=expired)

    def logout(self, session_uuid: str) -> None:
        """End a session; ending an unknown or already ended one is not an error (as ZStack)."""
        with self.db.begin() as conn:
            conn.execute(delete(S).where(S.c.uuid == session_uuid))
