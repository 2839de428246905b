"""Package signing: .cert made with `cryptography`, checked by us and by the openssl CLI."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ovfkit.errors import InvalidArgumentError
from ovfkit.ova.signing import load_signer, verify_certificate_file


def make_key_and_cert(
    common_name: str = "ovfkit test", days: int = 30, bits: int = 2048
) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


MANIFEST = b"SHA256(vm.ovf)= " + b"ab" * 32 + b"\n"


@pytest.mark.parametrize("bits", [2048, 3072])
def test_sign_and_verify(bits: int) -> None:
    key, cert = make_key_and_cert(bits=bits)
    signer = load_signer(key, cert)
    data = signer.sign("vm.mf", MANIFEST)
    assert len(data) == signer.certificate_length("vm.mf")
    first, rest = data.split(b"\n", 1)
    assert first.startswith(b"SHA256(vm.mf)= ") and len(first.split(b"= ")[1]) == bits // 4
    assert rest.startswith(b"-----BEGIN CERTIFICATE-----")
    assert verify_certificate_file(data, "vm.mf", MANIFEST) == []


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_openssl_verifies_the_signature(tmp_path: Path) -> None:
    key, cert = make_key_and_cert()
    data = load_signer(key, cert).sign("vm.mf", MANIFEST)
    sig_hex = data.split(b"\n", 1)[0].split(b"= ")[1]
    (tmp_path / "sig").write_bytes(bytes.fromhex(sig_hex.decode()))
    (tmp_path / "vm.mf").write_bytes(MANIFEST)
    (tmp_path / "cert.pem").write_bytes(data.split(b"\n", 1)[1])
    pub = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "cert.pem"), "-pubkey",
                          "-noout"], check=True, capture_output=True).stdout
    (tmp_path / "pub.pem").write_bytes(pub)
    ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"),
                         "-signature", str(tmp_path / "sig"), str(tmp_path / "vm.mf")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "Verified OK" in ok.stdout
    (tmp_path / "vm.mf").write_bytes(MANIFEST.replace(b"ab", b"ac", 1))
    bad = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"),
                          "-signature", str(tmp_path / "sig"), str(tmp_path / "vm.mf")],
                         capture_output=True, text=True)
    assert bad.returncode != 0


def test_tampered_manifest_and_wrong_certificate_fail() -> None:
    key, cert = make_key_and_cert()
    data = load_signer(key, cert).sign("vm.mf", MANIFEST)
    tampered = MANIFEST.replace(b"ab", b"ba", 1)
    assert any("does not verify" in p for p in verify_certificate_file(data, "vm.mf", tampered))
    _, other_cert = make_key_and_cert("someone else")
    swapped = data.split(b"\n", 1)[0] + b"\n" + other_cert
    assert any("does not verify" in p for p in verify_certificate_file(swapped, "vm.mf", MANIFEST))
    assert any("not the manifest" in p for p in verify_certificate_file(data, "x.mf", MANIFEST))
    assert verify_certificate_file(b"garbage", "vm.mf", MANIFEST)


def test_expired_certificate_reported() -> None:
    key, cert = make_key_and_cert(days=1)
    data = load_signer(key, cert).sign("vm.mf", MANIFEST)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
    assert any("not valid now" in p for p in verify_certificate_file(data, "vm.mf", MANIFEST,
                                                                     now=later))


def test_load_signer_refuses_mismatch_and_non_rsa() -> None:
    key, _ = make_key_and_cert()
    _, cert = make_key_and_cert()
    with pytest.raises(InvalidArgumentError, match="does not belong"):
        load_signer(key, cert)
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(InvalidArgumentError, match="RSA"):
        load_signer(ec_key, cert)
    with pytest.raises(InvalidArgumentError):
        load_signer(b"not a key", cert)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda sig: sig[:-1], "odd number of hex digits"),  # issue 12 #3: was a ValueError
        (lambda sig: sig[:-2], "does not verify"),  # one byte short of the key's length
        (lambda sig: sig + b"00", "does not verify"),  # one byte too long
        (lambda sig: b"0" * 9000, "does not start with"),  # longer than any RSA signature
    ],
    ids=["odd", "short", "long", "huge"],
)
def test_malformed_signature_is_a_problem_not_an_exception(
    mangle: Callable[[bytes], bytes], message: str
) -> None:
    key, cert = make_key_and_cert()
    data = load_signer(key, cert).sign("vm.mf", MANIFEST)
    first, rest = data.split(b"\n", 1)
    head, sig = first.split(b"= ", 1)
    bad = head + b"= " + mangle(sig) + b"\n" + rest
    problems = verify_certificate_file(bad, "vm.mf", MANIFEST)
    assert any(message in p for p in problems), problems
