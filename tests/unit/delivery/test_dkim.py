"""DKIM keys and signatures (services/delivery/domain/dkim.py, services/delivery/mail_auth.py):
checked keys, DNS records, and mail that dkimpy verifies against the published record."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
import uuid

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from services.delivery.adapters.dkim_keys import SigningKey
from services.delivery.domain import dkim
from services.delivery.domain.rendering import Rendered
from services.delivery.handlers import build_email
from services.delivery.mail_auth import MailAuth

RSA_2048 = dkim.generate_rsa_key()
# A 512-bit key (openssl genpkey; cryptography no longer makes keys this small).
RSA_512 = """\
-----BEGIN PRIVATE KEY-----
MIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA2bRZB4qoka2ClV3/
4lHrrqPqo8mm567uALLAbxdmhZWv9953ykMsbsiipHKm9MpQHCE+6oAdx9/RD940
jTO7OwIDAQABAkAmbV8Jpb/7dtUF6IGyQSOIwAY6wu1jF82K8gJlmYvPKDlf3+vp
S7v4lwvBp+5LtIDsp0GD6Wak4WZPgAQceo6BAiEA+V4KegDaBZXdc4f0+WJUW52E
2AQ5P0nFSHK1fBUsHf8CIQDffrZXhOdxG8Xoz5LshJb1h/114LlbhVx/vfLSCkta
xQIhAOqlVu5ehsjisDLaJ+XSZNagbjRmJQgsfnshlSxhL9Y5AiBlVLwzvix5WhBH
WCXTWuJe/INsuLERz8t6l5LKrKQxyQIhAMJcxQpDh5B35lnPL0xXEy53wY6SYU9o
FVIYfSkIq+Pj
-----END PRIVATE KEY-----
"""


def pem_of(key: object, *, password: bytes | None = None) -> str:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode()


def dns_for(selector: str, domain: str, record: str):  # type: ignore[no-untyped-def]
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record.encode() if name == f"{selector}._domainkey.{domain}.".encode() else None

    return lookup


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("shop.example.com", "shop.example.com"),
        (" Shop.Example.COM. ", "shop.example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("localhost", None),
        ("-shop.example.com", None),
        ("shop..example.com", None),
        ("shop_1.example.com", None),
        ("bücher.example", None),
        ("a" * 64 + ".com", None),
        ("", None),
    ],
)
def test_domain_syntax(value: str, expected: str | None) -> None:
    assert dkim.normalise_domain(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("nudge", "nudge"), ("2026.Nudge", "2026.nudge"), ("", None), ("a b", None), ("x;y", None)],
)
def test_selector_syntax(value: str, expected: str | None) -> None:
    assert dkim.normalise_selector(value) == expected


def test_a_generated_key_is_rsa_2048_and_its_record_holds_the_public_key() -> None:
    loaded = serialization.load_pem_private_key(RSA_2048.pem.encode(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey) and loaded.key_size == 2048
    value = RSA_2048.dns_record_value()
    assert value.startswith("v=DKIM1; k=rsa; p=MII")
    assert "PRIVATE" not in value
    assert RSA_2048.pem not in repr(RSA_2048)  # never in a log line or a traceback
    assert dkim.dns_record_name("nudge", "shop.example.com") == "nudge._domainkey.shop.example.com"


def test_keys_that_cannot_sign_are_refused_with_a_reason() -> None:
    cases = {
        "not a PEM private key": "hello",
        "not a readable PEM private key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIV",
        "RSA key of 512 bits; at least 1024": RSA_512,
        "encrypted keys are not accepted": pem_of(
            rsa.generate_private_key(public_exponent=65537, key_size=1024), password=b"pw"
        ),
        "only RSA and ed25519 keys can sign DKIM": pem_of(ec.generate_private_key(ec.SECP256R1())),
        "longer than": "-----BEGIN" + "A" * 30_000,
    }
    for reason, pem in cases.items():
        with pytest.raises(dkim.DkimKeyError, match=reason):
            dkim.load_private_key(pem)


def test_a_pkcs1_rsa_key_is_accepted() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    assert dkim.load_private_key(pem).algorithm == "rsa"


FROM = "no-reply@shop.example.com"


def mail(list_unsubscribe: bool = True) -> bytes:
    return build_email(
        str(uuid.uuid4()),
        str(uuid.uuid4()),
        FROM,
        "Bücher & Co, “the shop”",
        ("Ada Lovelace", "ada@example.org"),
        Rendered("Grüße, Ada " * 12, "Hallo Ada\n" * 20, "<p>Hallo <b>Ada</b></p>"),
        "https://t.example.com/u/" + "x" * 300 if list_unsubscribe else "",
    )


class OneKey:
    def __init__(self, key: SigningKey | None) -> None:
        self.key = key
        self.asked: list[tuple[str, str]] = []

    async def get(self, workspace_id: str, domain: str) -> SigningKey | None:
        self.asked.append((workspace_id, domain))
        return self.key


@pytest.mark.parametrize(
    "material",
    [RSA_2048, dkim.load_private_key(pem_of(ed25519.Ed25519PrivateKey.generate()))],
    ids=["rsa", "ed25519"],
)
def test_a_signed_mail_verifies_and_an_altered_one_does_not(material: dkim.KeyMaterial) -> None:
    keys = OneKey(SigningKey("shop.example.com", "nudge", material))
    auth = MailAuth(keys, b"k", "bounces.example.com")  # type: ignore[arg-type]
    raw = asyncio.run(auth.sign("ws-1", FROM, mail()))
    assert keys.asked == [("ws-1", "shop.example.com")]  # the From address's domain
    assert raw.startswith(b"DKIM-Signature: v=1; a=")  # first, as RFC 6376 5.6 asks
    header = str(email.message_from_bytes(raw, policy=email.policy.default)["DKIM-Signature"])
    assert "c=relaxed/relaxed" in header and "d=shop.example.com" in header
    for name in ("from", "to", "subject", "date", "message-id", "list-unsubscribe",
                 "list-unsubscribe-post", "mime-version", "content-type"):  # fmt: skip
        assert name in header.split("h=")[1].split(";")[0]
    dns = dns_for("nudge", "shop.example.com", material.dns_record_value())
    assert dkimpy.verify(raw, dnsfunc=dns)
    # Relaxed: a relay that re-folds a header or trims trailing spaces breaks nothing.
    assert dkimpy.verify(raw.replace(b"\r\nSubject: ", b"\r\nSubject:  "), dnsfunc=dns)
    for before, after in (
        (b"\r\nSubject: ", b"\r\nSubject: X"),
        (b"\r\nTo: Ada", b"\r\nTo: Eve"),
        (b"List-Unsubscribe=One-Click", b"List-Unsubscribe=Two-Clicks"),
        (b"Hallo Ada", b"Hallo Eve"),
    ):
        assert before in raw
        assert not dkimpy.verify(raw.replace(before, after, 1), dnsfunc=dns), before
    # Another key's record does not verify it.
    assert not dkimpy.verify(
        raw,
        dnsfunc=dns_for("nudge", "shop.example.com", dkim.generate_rsa_key().dns_record_value()),
    )


def test_an_added_list_unsubscribe_breaks_the_signature_of_mail_without_one() -> None:
    auth = MailAuth(OneKey(SigningKey("shop.example.com", "nudge", RSA_2048)), b"k", "b.example")  # type: ignore[arg-type]
    raw = asyncio.run(auth.sign("ws", FROM, mail(list_unsubscribe=False)))
    dns = dns_for("nudge", "shop.example.com", RSA_2048.dns_record_value())
    assert dkimpy.verify(raw, dnsfunc=dns)
    added = b"\r\nList-Unsubscribe: <https://evil.example/u>\r\n\r\n"
    assert not dkimpy.verify(raw.replace(b"\r\n\r\n", added, 1), dnsfunc=dns)


def test_without_a_key_the_mail_is_unchanged() -> None:
    auth = MailAuth(OneKey(None), b"k", "b.example")  # type: ignore[arg-type]
    raw = mail()
    assert asyncio.run(auth.sign("ws", FROM, raw)) == raw
    assert b"DKIM-Signature" not in raw


def test_the_openssl_rsa_step_makes_dkimpys_own_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    """PKCS#1 v1.5 is deterministic: at the same second (t=), the header dkim.sign makes
    with its own RSA arithmetic and the one made with OpenSSL's are the same bytes."""
    monkeypatch.setattr(time, "time", lambda: 1_796_150_000.0)
    raw = mail()
    reference = dkimpy.sign(
        raw,
        b"nudge",
        b"shop.example.com",
        RSA_2048.signing_key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=list(dkim.SIGNED_HEADERS),
    )
    assert dkim.sign(raw, "shop.example.com", "nudge", RSA_2048) == reference
    assert b"a=rsa-sha256" in reference and b"t=1796150000" in reference


def test_the_key_of_an_internationalised_from_domain_is_looked_up_by_its_a_labels() -> None:
    """Keys are stored by A-label domain (normalise_domain), as the From header writes it."""
    keys = OneKey(None)
    auth = MailAuth(keys, b"k", "b.example")  # type: ignore[arg-type]
    raw = mail()
    assert asyncio.run(auth.sign("ws", "no-reply@bücher.example", raw)) == raw
    assert keys.asked == [("ws", "xn--bcher-kva.example")]
