"""Package signing: the ``.cert`` file as VMware writes it ("OVF Package Signing"; open-vmdk
``sign_manifest``, ovftool ``--privateKey``).

Layout: first line ``SHA256(<name>.mf)= <hex RSA PKCS#1 v1.5 signature of the manifest bytes>``,
then the signer's X.509 certificate in PEM (plus any intermediates). Only RSA keys: that is what
VMware's signing and verification support, and an RSA signature has a length fixed by the key,
which lets the packer reserve the certificate's room before the manifest is known.

``cryptography`` is the ``sign`` extra (``pip install 'ovfkit[sign]'``): it is imported when a
key is loaded or a certificate checked, and its absence is then a MissingExtraError.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._extras import needs_extra
from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["Signer", "load_signer", "verify_certificate_file"]

_DIGESTS = ("sha1", "sha256", "sha512")
# The name is a member name (at most 100 bytes, ustar); the signature's hex at most 4096 digits
# (a 16384-bit RSA key): bounded repeats keep a hostile first line from costing more than that.
_FIRST_LINE = re.compile(
    rb"(SHA1|SHA256|SHA512)\(([^\r\n]{1,1024})\)= ([0-9a-fA-F]{1,8192})\r?\n"
)


@dataclass(frozen=True)
class Signer:
    """An RSA private key and its certificate chain (PEM bytes, leaf first)."""

    key: rsa.RSAPrivateKey
    chain_pem: bytes
    algorithm: str = "sha256"

    def certificate_length(self, manifest_name: str) -> int:
        """Byte length of the .cert file, known before the manifest is."""
        return len(self._first_line(manifest_name, "0" * (self.key.key_size // 4))) + len(
            self.chain_pem
        )

    def _first_line(self, manifest_name: str, signature_hex: str) -> bytes:
        return f"{self.algorithm.upper()}({manifest_name})= {signature_hex}\n".encode()

    def sign(self, manifest_name: str, manifest: bytes) -> bytes:
        """The .cert file's bytes for the manifest ``manifest_name`` holding ``manifest``."""
        from cryptography.hazmat.primitives.asymmetric import padding

        signature = self.key.sign(manifest, padding.PKCS1v15(), _hash(self.algorithm))
        # The signature is exactly key_size/8 bytes (RFC 8017 §8.2.1), so the length is fixed.
        return self._first_line(manifest_name, signature.hex()) + self.chain_pem


def _hash(name: str) -> hashes.HashAlgorithm:
    from cryptography.hazmat.primitives import hashes

    algorithms: dict[str, type[hashes.HashAlgorithm]] = {
        "sha1": hashes.SHA1,
        "sha256": hashes.SHA256,
        "sha512": hashes.SHA512,
    }
    return algorithms[name]()


def load_signer(
    key_pem: bytes, cert_pem: bytes, *, password: bytes | None = None, algorithm: str = "sha256"
) -> Signer:
    """A :class:`Signer` from PEM bytes; InvalidArgumentError (SYS.1007) when the key is not RSA,
    the certificate does not parse, or the certificate is not the key's."""
    if algorithm not in _DIGESTS:
        raise InvalidArgumentError(f"signature digest {algorithm!r} is not sha1, sha256 or sha512")
    with needs_extra("sign", "signing a package"):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    try:
        key = serialization.load_pem_private_key(key_pem, password=password)
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(f"signing key is not a PEM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidArgumentError("signing key must be RSA (VMware verifies only RSA signatures)")
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise InvalidArgumentError(f"signing certificate is not PEM X.509: {exc}") from None
    leaf_key = certs[0].public_key()
    if not isinstance(leaf_key, rsa.RSAPublicKey) or leaf_key.public_numbers() != (
        key.public_key().public_numbers()
    ):
        raise InvalidArgumentError("signing certificate does not belong to the signing key")
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    return Signer(key=key, chain_pem=chain, algorithm=algorithm)


def verify_certificate_file(
    cert_file: bytes, manifest_name: str, manifest: bytes, *, now: dt.datetime | None = None
) -> list[str]:
    """Problems with a .cert file against the manifest it signs; empty when the signature is good.

    Checks: the first line's form and file name, the RSA signature over the manifest bytes with
    the leaf certificate's key, each certificate's validity period, and that each certificate in
    the chain is signed by the next one (a self-signed last certificate is checked against
    itself). Trust in the root is the importer's decision and is not judged here.
    """
    with needs_extra("sign", "checking a package's certificate"):
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
    problems: list[str] = []
    match = _FIRST_LINE.match(cert_file)
    if match is None:
        return ["certificate file does not start with 'SHA256(name.mf)= <signature hex>'"]
    tag, name, sig_hex = (g.decode("ascii", "replace") for g in match.groups())
    if name != manifest_name:
        problems.append(f"certificate signs {name!r}, not the manifest {manifest_name!r}")
    whole_bytes = len(sig_hex) % 2 == 0
    if not whole_bytes:
        problems.append(
            f"signature has an odd number of hex digits ({len(sig_hex)}): it is not whole bytes"
        )
    try:
        certs = x509.load_pem_x509_certificates(cert_file[match.end() :])
    except ValueError as exc:
        return [*problems, f"certificate file holds no readable PEM certificate: {exc}"]
    public = certs[0].public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        return [*problems, "certificate key is not RSA"]
    if whole_bytes:
        try:
            public.verify(
                bytes.fromhex(sig_hex), manifest, padding.PKCS1v15(), _hash(tag.lower())
            )
        except (InvalidSignature, ValueError):
            problems.append("manifest signature does not verify with the certificate's key")
    moment = now or dt.datetime.now(dt.UTC)
    for cert in certs:
        if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
            problems.append(
                f"certificate {cert.subject.rfc4514_string()!r} is not valid now"
                f" ({cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d})"
            )
    for child, parent in zip(certs, [*certs[1:], certs[-1]], strict=True):
        if child is parent and child.issuer != child.subject:
            continue  # chain ends at an intermediate: the importer's trust store completes it
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            problems.append(
                f"certificate {child.subject.rfc4514_string()!r} is not signed by"
                f" {parent.subject.rfc4514_string()!r}"
            )
    return problems
