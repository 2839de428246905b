"""Accounts and sessions (ovfkit.zstack.auth) on a real SQLite file, with a controllable clock."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovfkit.errors import InvalidArgumentError, NotFoundError
from ovfkit.zstack.auth import (
    AuthenticationError,
    AuthStore,
    InvalidSessionError,
    LoginThrottledError,
    normalize_wire_password,
    wire_password,
    zstack_timestamp,
)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_wire_password_is_sha512_hex_as_zstack_sends_it() -> None:
    # ZStack's own default admin password "password" as the SDK sends it.
    assert wire_password("password") == hashlib.sha512(b"password").hexdigest()
    assert len(wire_password("x")) == 128


@given(st.text(max_size=64))
def test_normalize_accepts_plain_and_digest_alike(plain: str) -> None:
    digest = wire_password(plain)
    assert normalize_wire_password(plain) == digest
    assert normalize_wire_password(digest) == digest
    assert normalize_wire_password(digest.upper()) == digest


def test_login_with_digest_or_plain_password(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    account = store.create_account("admin", "pa55word")
    s1 = store.login("admin", wire_password("pa55word"))
    s2 = store.login("admin", "pa55word")
    assert s1.uuid != s2.uuid
    assert s1.account_uuid == s2.account_uuid == account.uuid
    assert store.validate(s1.uuid) == s1
    inv = s1.to_inventory()
    assert set(inv) == {"uuid", "accountUuid", "userUuid", "expiredDate", "createDate"}
    assert inv["userUuid"] == inv["accountUuid"] == account.uuid


@pytest.mark.parametrize(
    ("name", "password"),
    [("admin", "wrong"), ("admin", wire_password("wrong")), ("nobody", "pa55word"), ("", "")],
)
def test_bad_credentials_give_id_1000(tmp_path: Path, name: str, password: str) -> None:
    store = AuthStore(tmp_path)
    store.create_account("admin", "pa55word")
    with pytest.raises(AuthenticationError) as info:
        store.login(name, password)
    assert info.value.code == "ID.1000"
    # The same words whichever part was wrong: nothing tells which names exist.
    assert info.value.details == "wrong account name or password"


def test_password_is_stored_salted_and_stretched(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    store.create_account("a", "same")
    store.create_account("b", "same")
    db = sqlite3.connect(tmp_path / "auth.sqlite")
    rows = db.execute("SELECT salt, hash FROM accounts ORDER BY name").fetchall()
    db.close()
    (salt_a, hash_a), (salt_b, hash_b) = rows
    assert salt_a != salt_b and hash_a != hash_b
    raw = (tmp_path / "auth.sqlite").read_bytes()
    assert wire_password("same").encode() not in raw and b"same" not in raw


def test_session_expires(tmp_path: Path) -> None:
    clock = Clock()
    store = AuthStore(tmp_path, session_ttl=60, clock=clock)
    store.create_account("admin", "pw")
    session = store.login("admin", "pw")
    assert session.expired_date == clock.now + 60
    clock.now += 59
    store.validate(session.uuid)
    clock.now += 1
    with pytest.raises(InvalidSessionError, match="expired") as info:
        store.validate(session.uuid)
    assert info.value.code == "ID.1001"


def test_logout_ends_session_and_is_idempotent(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    store.create_account("admin", "pw")
    session = store.login("admin", "pw")
    store.logout(session.uuid)
    store.logout(session.uuid)
    with pytest.raises(InvalidSessionError):
        store.validate(session.uuid)
    with pytest.raises(InvalidSessionError):
        store.validate("not-a-session")


def test_sessions_survive_a_new_store_on_the_same_folder(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    store.create_account("admin", "pw")
    session = store.login("admin", "pw")
    assert AuthStore(tmp_path).validate(session.uuid).uuid == session.uuid


def test_expired_sessions_are_purged_at_login(tmp_path: Path) -> None:
    clock = Clock()
    store = AuthStore(tmp_path, session_ttl=10, clock=clock)
    store.create_account("admin", "pw")
    store.login("admin", "pw")
    clock.now += 11
    store.login("admin", "pw")
    db = sqlite3.connect(tmp_path / "auth.sqlite")
    (count,) = db.execute("SELECT count(*) FROM sessions").fetchone()
    db.close()
    assert count == 1


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 256, "a/b"])
def test_invalid_account_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgumentError):
        AuthStore(tmp_path).create_account(name, "pw")


def test_duplicate_account_and_empty_password(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    store.create_account("admin", "pw")
    with pytest.raises(InvalidArgumentError, match="already exists"):
        store.create_account("admin", "other")
    with pytest.raises(InvalidArgumentError, match="empty"):
        store.create_account("other", "")
    assert [a.name for a in store.list_accounts()] == ["admin"]


def test_concurrent_logins(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    store.create_account("admin", "pw")
    out: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            out.append(store.login("admin", "pw").uuid)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(out)) == 8
    for uuid in out:
        store.validate(uuid)


@settings(max_examples=200)
@given(st.floats(min_value=0, max_value=4_000_000_000))
def test_zstack_timestamp_shape(ts: float) -> None:
    from ovfkit.zstack.inventory import parse_zstack_time

    text = zstack_timestamp(ts)
    # The API helper's parser of ZStack dates reads ours back to the same wall-clock second
    # (compared as text: in a DST fall-back hour two instants share one local time).
    assert zstack_timestamp(parse_zstack_time(text).timestamp()) == text


def test_a_failing_client_backs_off_and_nobody_else_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    store = AuthStore(tmp_path, clock=clock)
    store.create_account("admin", "pw")
    free = store.throttle.free_failures
    for _ in range(free - 1):
        with pytest.raises(AuthenticationError, match="wrong"):
            store.login("admin", "guess", client="192.0.2.7")
    store.login("admin", "pw", client="192.0.2.7")  # a success clears the series
    for _ in range(free + 1):
        with pytest.raises(AuthenticationError, match="wrong"):
            store.login("admin", "guess", client="192.0.2.7")
    # That client now waits, even with the right password, which is not looked at...
    with pytest.raises(LoginThrottledError, match="try again in 1 s") as info:
        store.login("admin", "pw", client="192.0.2.7")
    assert info.value.code == "ID.1000" and info.value.retry_after == 1
    # ...while every other client, and that client for other accounts, logs in as usual.
    store.login("admin", "pw", client="192.0.2.8")
    store.login("admin", "pw", client=None)
    store.create_account("bob", "pw2")
    store.login("bob", "pw2", client="192.0.2.7")
    clock.now += 1
    with pytest.raises(AuthenticationError, match="wrong"):
        store.login("admin", "guess", client="192.0.2.7")
    with pytest.raises(LoginThrottledError, match="try again in 2 s"):  # doubled
        store.login("admin", "pw", client="192.0.2.7")
    clock.now += 2
    store.login("admin", "pw", client="192.0.2.7")
    store.login("admin", "pw", client="192.0.2.7")  # cleared


def test_unknown_names_are_counted_alike(tmp_path: Path) -> None:
    store = AuthStore(tmp_path, clock=Clock())
    for _ in range(store.throttle.free_failures + 1):
        with pytest.raises(AuthenticationError, match="wrong"):
            store.login("ghost", "x", client="192.0.2.7")
    with pytest.raises(LoginThrottledError, match="too many"):
        store.login("ghost", "x", client="192.0.2.7")


def test_set_password_ends_sessions(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    store.create_account("admin", "old")
    session = store.login("admin", "old")
    store.set_password("admin", "new")
    with pytest.raises(InvalidSessionError):
        store.validate(session.uuid)
    with pytest.raises(AuthenticationError):
        store.login("admin", "old")
    store.login("admin", "new")
    with pytest.raises(NotFoundError):
        store.set_password("nobody", "x")
    with pytest.raises(InvalidArgumentError):
        store.set_password("admin", "")


def test_remove_account_ends_sessions(tmp_path: Path) -> None:
    store = AuthStore(tmp_path)
    store.create_account("admin", "pw")
    store.create_account("other", "pw")
    session = store.login("admin", "pw")
    kept = store.login("other", "pw")
    store.remove_account("admin")
    with pytest.raises(InvalidSessionError):
        store.validate(session.uuid)
    store.validate(kept.uuid)
    assert [a.name for a in store.list_accounts()] == ["other"]
    with pytest.raises(NotFoundError):
        store.remove_account("admin")
