"""AccessKey pairs: the signature is the one zssdk's calculateAccessKey makes, RestServer's
header checks, the store; and credentials kept out of the access log."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import zssdk_client as sdk
from hypothesis import given
from hypothesis import strategies as st

from ovfkit.errors import NotFoundError
from ovfkit.server.logs import RedactCredentials, redact
from ovfkit.zstack.accesskeys import (
    AccessKeyRequestError,
    AccessKeyStore,
    parse_date_header,
    sign,
)
from ovfkit.zstack.auth import AuthenticationError, AuthStore


def _sdk_header(key_id: str, secret: str, method: str, url: str, date: str) -> str:
    action = sdk.QueryImagePackageAction()
    action.HTTP_METHOD = method
    action.accessKeyId, action.accessKeySecret = key_id, secret
    return action.calculateAccessKey(url, date)


@given(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789", min_size=1, max_size=40),
    st.sampled_from(["GET", "PUT", "POST", "DELETE"]),
    st.from_regex(r"/image-packages(/[0-9a-f]{32})?", fullmatch=True),
)
def test_signature_is_zssdks(secret: str, method: str, path: str) -> None:
    date = "Tue, 05 Mar 2024 10:00:00 CST"
    url = f"http://127.0.0.1:8080/zstack/v1{path}?q=name=x&sessionId=s"
    header = _sdk_header("KEYID", secret, method, url, date)
    assert header == f"ZStack KEYID:{sign(secret, method, date, '/v1' + path)}"


def test_date_header_checks_as_restserver() -> None:
    now = datetime(2024, 3, 5, 10, 0, 0)
    parse_date_header("Tue, 05 Mar 2024 10:14:59 CST", now)
    parse_date_header("tue, 05 mar 2024 09:45:01 Asia/Shanghai", now)  # zone not checked
    for value, status in [(None, 400), ("05 Mar 2024", 400), ("Tue, 31 Feb 2024 10:00:00 X", 400),
                          ("Tue, 05 Mar 2024 10:15:01 CST", 403),
                          ("Tue, 05 Mar 2024 09:44:59 CST", 403)]:
        with pytest.raises(AccessKeyRequestError) as info:
            parse_date_header(value, now)
        assert info.value.status == status


def test_store_authenticates_its_pairs_only(tmp_path: Path) -> None:
    auth = AuthStore(tmp_path)
    account = auth.create_account("admin", "pw")
    keys = AccessKeyStore(tmp_path)
    key, secret = keys.add("admin", "ci")
    assert len(key.id) == 20 and len(secret) == 40 and key.account_uuid == account.uuid
    date = datetime.now().strftime("%a, %d %b %Y %H:%M:%S CST")
    good = sign(secret, "GET", date, "/v1/image-packages")
    assert keys.authenticate(f"{key.id}:{good}", "GET", date, "/v1/image-packages") == (
        account.uuid
    )
    for creds, method, path in [
        (f"{key.id}:{good}", "DELETE", "/v1/image-packages"),  # another method
        (f"{key.id}:{good}", "GET", "/v1/image-packages/x"),  # another path
        (f"{'A' * 20}:{good}", "GET", "/v1/image-packages"),  # unknown id
    ]:
        with pytest.raises(AuthenticationError):
            keys.authenticate(creds, method, date, path)
    with pytest.raises(AccessKeyRequestError, match="AccessKeyId:Signature"):
        keys.authenticate("no-colon", "GET", date, "/v1/image-packages")
    old = (datetime.now() - timedelta(hours=1)).strftime("%a, %d %b %Y %H:%M:%S CST")
    with pytest.raises(AccessKeyRequestError, match="requestTimeTooSkewed"):
        keys.authenticate(f"{key.id}:{good}", "GET", old, "/v1/image-packages")
    assert [k.id for k in keys.list("admin")] == [key.id]
    keys.remove(key.id)
    with pytest.raises(AuthenticationError):
        keys.authenticate(f"{key.id}:{good}", "GET", date, "/v1/image-packages")
    with pytest.raises(NotFoundError):
        keys.remove(key.id)
    with pytest.raises(NotFoundError):
        keys.add("nobody")
    # Removing the account removes its pairs.
    key, _ = keys.add("admin")
    auth.remove_account("admin")
    with pytest.raises(NotFoundError):
        keys.list("admin")


def test_credentials_never_reach_the_access_log() -> None:
    assert redact("/zstack/v1/image-packages?q=a=b&sessionId=abc&limit=1") == (
        "/zstack/v1/image-packages?q=a=b&sessionId=***&limit=1"
    )
    assert redact("/x?sessionid=abc") == "/x?sessionid=***"
    assert redact("/x?mysessionId=abc") == "/x?mysessionId=abc"
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:1", "DELETE", "/v1/image-packages/u?sessionId=secret", "1.1", 200), None,
    )
    assert RedactCredentials().filter(record)
    assert "secret" not in record.getMessage() and "sessionId=***" in record.getMessage()
