"""VERP envelope senders (services/delivery/domain/verp.py): short, signed, case-blind."""

from __future__ import annotations

import uuid

from services.delivery.domain import verp

KEY = verp.derive_key("a secret")
DOMAIN = "bounces.example.com"


def test_an_address_names_its_message_and_fits_rfc5321() -> None:
    message_id = str(uuid.uuid4())
    address = verp.address(KEY, message_id, DOMAIN)
    local, _, domain = address.partition("@")
    assert domain == DOMAIN and local.startswith("bounces+")
    assert len(local) <= 64
    assert verp.message_of(KEY, address, DOMAIN) == message_id
    # Relays may change the case of the local part, or quote the address in angle brackets.
    assert verp.message_of(KEY, f"<{address.upper()}>", DOMAIN) == message_id


def test_an_altered_or_foreign_address_names_nothing() -> None:
    address = verp.address(KEY, str(uuid.uuid4()), DOMAIN)
    local, _, _ = address.partition("@")
    for i in range(len("bounces+"), len(local)):  # every character of the token matters
        flipped = local[:i] + ("a" if local[i] != "a" else "b") + local[i + 1 :]
        assert verp.message_of(KEY, f"{flipped}@{DOMAIN}", DOMAIN) is None, i
    assert verp.message_of(verp.derive_key("another"), address, DOMAIN) is None
    assert verp.message_of(KEY, f"{local}@other.example.com", DOMAIN) is None
    for junk in ("", "@", "bounces+@" + DOMAIN, "postmaster@" + DOMAIN, "bounces+!!!@" + DOMAIN):
        assert verp.message_of(KEY, junk, DOMAIN) is None
    assert verp.message_of(KEY, "bounces+" + "0" * 39 + "@" + DOMAIN, DOMAIN) is None


def test_the_key_is_not_the_secret_itself() -> None:
    assert KEY != b"a secret" and len(KEY) == 32
    assert verp.derive_key("a secret") == KEY  # stable across processes and restarts


def test_the_bounce_domain_defaults_to_the_from_domain_and_the_key_to_the_link_secret() -> None:
    from services.delivery.adapters.dkim_keys import KeyCache
    from services.delivery.config import Settings
    from services.delivery.domain.sealing import Sealer
    from services.delivery.mail_auth import mail_auth

    keys = KeyCache(pool=None, sealer=Sealer("s1"))  # type: ignore[arg-type]  # not asked here
    default = mail_auth(Settings(from_address="news@Shop.Example.com", link_secret="s1"), keys)
    assert default.bounce_domain == "shop.example.com"
    assert default.verp_key == verp.derive_key("s1")
    own = mail_auth(Settings(bounce_domain="Bounces.Example.net", link_secret="s1"), keys)
    message_id = str(uuid.uuid4())
    assert own.envelope_sender(message_id).endswith("@bounces.example.net")
    assert verp.message_of(own.verp_key, own.envelope_sender(message_id), own.bounce_domain) == (
        message_id
    )
