"""DKIM (RFC 6376): checking a workspace's key, making one, and signing a mail with it.

Pure: no I/O. The key store (services/delivery/adapters/dkim_keys.py) keeps one key per
sending domain of a workspace; the send path signs each mail with the key of its From
address's domain, and sends it unsigned when there is none (docs/delivery-auth.md).

Signing is dkimpy's (a maintained implementation, also what the tests verify with); keys are
read and made with ``cryptography``, which accepts every PEM form (PKCS#1, PKCS#8) and
tells an RSA key's size, so a bad key is refused with a reason when it is set rather than
failing every send later. What dkimpy wants is made from it once per key: PKCS#1 PEM for
RSA, the base64 32-byte seed for ed25519 (RFC 8463).

Headers signed: the ones a forger or a mailing list would want to change (From, To, Subject,
Date, Message-ID), the RFC 8058 unsubscribe pair (a provider trusts a one-click unsubscribe
only when it is signed) and the MIME structure. Each is signed once whether present or not:
signing an absent List-Unsubscribe means none can be added later without breaking the
signature. Canonicalisation relaxed/relaxed: relays re-fold headers and trim trailing
spaces, which would break a "simple" signature.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"mime-version",
    b"content-type",
)
MIN_RSA_BITS = 1024
GENERATED_RSA_BITS = 2048
MAX_PEM_CHARS = 20_000

Algorithm = Literal["rsa", "ed25519"]

# RFC 1035 host names (letters, digits, hyphens; no leading or trailing hyphen), at least
# two labels: a key for "localhost" or "com" is a mistake. Internationalised domains are
# given in their A-label (xn--) form.
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})+$")
# A selector is one or more labels (RFC 6376 3.1), e.g. "nudge" or "2026.nudge".
_SELECTOR = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


class DkimKeyError(ValueError):
    """The private key cannot be used: the message says why (never the key itself)."""


def normalise_domain(domain: str) -> str | None:
    """The domain, lower-cased without a trailing dot, or None when it is not a host name."""
    candidate = domain.strip().lower().rstrip(".")
    if len(candidate) > 253 or not _DOMAIN.match(candidate):
        return None
    return candidate


def normalise_selector(selector: str) -> str | None:
    candidate = selector.strip().lower()
    if len(candidate) > 63 or not _SELECTOR.match(candidate):
        return None
    return candidate


@dataclass(frozen=True)
class KeyMaterial:
    """A checked private key, in the forms storage, DNS and dkimpy want. Its repr hides the
    secret so that it never reaches a log line or a traceback."""

    algorithm: Algorithm
    pem: str = field(repr=False)  # PKCS#8, as stored
    signing_key: bytes = field(repr=False)  # what dkimpy.sign takes
    public_key_b64: str  # the p= of the DNS record
    rsa_key: rsa.RSAPrivateKey | None = field(default=None, repr=False, compare=False)

    def dns_record_value(self) -> str:
        return f"v=DKIM1; k={self.algorithm}; p={self.public_key_b64}"


def dns_record_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


def load_private_key(pem: str) -> KeyMaterial:
    """Check a PEM private key (RSA of at least 1024 bits, or ed25519; not encrypted)."""
    if len(pem) > MAX_PEM_CHARS:
        raise DkimKeyError(f"longer than {MAX_PEM_CHARS} characters")
    if "-----BEGIN" not in pem:
        raise DkimKeyError("not a PEM private key (-----BEGIN PRIVATE KEY-----)")
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError as err:  # encrypted, and no password given
        raise DkimKeyError("encrypted keys are not accepted: give it without a passphrase") from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise DkimKeyError("not a readable PEM private key") from err
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimKeyError(f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS}")
        return _rsa_material(key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return _ed25519_material(key)
    raise DkimKeyError("only RSA and ed25519 keys can sign DKIM")


def generate_rsa_key() -> KeyMaterial:
    return _rsa_material(
        rsa.generate_private_key(public_exponent=65537, key_size=GENERATED_RSA_BITS)
    )


def _rsa_material(key: rsa.RSAPrivateKey) -> KeyMaterial:
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyMaterial(
        algorithm="rsa",
        rsa_key=key,
        pem=_pkcs8(key),
        signing_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        public_key_b64=base64.b64encode(public).decode(),
    )


def _ed25519_material(key: ed25519.Ed25519PrivateKey) -> KeyMaterial:
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return KeyMaterial(
        algorithm="ed25519",
        pem=_pkcs8(key),
        signing_key=base64.b64encode(seed),
        public_key_b64=base64.b64encode(public).decode(),
    )


def _pkcs8(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def sign(raw: bytes, domain: str, selector: str, key: KeyMaterial) -> bytes:
    """The ``DKIM-Signature: ...\\r\\n`` header line for the mail ``raw`` (CRLF line ends),
    to be put in front of it unchanged."""
    options: dict[str, Any] = {
        "canonicalize": (b"relaxed", b"relaxed"),
        "include_headers": list(SIGNED_HEADERS),
    }
    if key.rsa_key is not None:
        signer = _OpenSslRsaDkim(raw, key.rsa_key)
        signature: bytes = signer.sign(
            selector.encode(), domain.encode(), key.signing_key, **options
        )
        return signature
    signature = dkim.sign(
        raw,
        selector.encode(),
        domain.encode(),
        key.signing_key,
        signature_algorithm=b"ed25519-sha256",
        **options,
    )
    return signature


@dataclass(frozen=True)
class _Signed:
    signature: bytes


class _OpenSslRsa:
    """The RSA step through OpenSSL, in the shape dkimpy's ed25519 step calls
    (``pk.sign(digest).signature``), over the digest dkimpy computed."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key

    def sign(self, digest: bytes) -> _Signed:
        return _Signed(self._key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())))


class _OpenSslRsaDkim(dkim.DKIM):  # type: ignore[misc]
    """dkimpy's signing (canonicalisation, header selection, tags, folding), with the RSA
    signature itself made by OpenSSL: dkimpy computes it with Python integers, about 12 ms
    of CPU per mail for a 2048-bit key against about 1 ms here, which alone would cap a
    2-core machine near 150 signed mails a second. PKCS#1 v1.5 is deterministic, so the
    header is byte for byte dkimpy's own (tests/unit/delivery/test_dkim.py checks it).

    dkimpy has no hook for the key operation; :meth:`gen_header` (where it signs) takes its
    ed25519 branch, which calls ``pk.sign(digest)``, while the tags (``a=rsa-sha256``) and
    the hash (SHA-256 for both) are already fixed by :meth:`dkim.DKIM.sign`."""

    def __init__(self, raw: bytes, key: rsa.RSAPrivateKey) -> None:
        super().__init__(raw, signature_algorithm=b"rsa-sha256", linesep=b"\r\n")
        self._rsa = _OpenSslRsa(key)

    def gen_header(
        self,
        fields: Any,
        include_headers: Any,
        canon_policy: Any,
        header_name: bytes,
        pk: Any,
        standardize: bool = False,
    ) -> bytes:
        algorithm: bytes = self.signature_algorithm  # type: ignore[has-type]
        self.signature_algorithm = b"ed25519-sha256"
        try:
            header: bytes = super().gen_header(
                fields, include_headers, canon_policy, header_name, self._rsa, standardize
            )
        finally:
            self.signature_algorithm = algorithm
        return header
