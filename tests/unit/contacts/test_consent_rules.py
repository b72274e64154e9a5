"""The eligibility rule, the consent links (preferences, expiring confirmation) and the
preference link delivery adds to every non-transactional mail: pure, no I/O."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2

from services.common import links
from services.contacts.consent import decide
from services.delivery.domain.rendering import MailLinks, render
from services.delivery.handlers import mail_links

MARKETING = contacts_pb2.CONSENT_PURPOSE_MARKETING
TARGETED = contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES
AUTOMATIONS = contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS
TRANSACTIONAL = contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL
GRANTED = contacts_pb2.CONSENT_STATUS_GRANTED
WITHDRAWN = contacts_pb2.CONSENT_STATUS_WITHDRAWN
PENDING = contacts_pb2.CONSENT_STATUS_PENDING
BOUNCE = contacts_pb2.SUPPRESSION_REASON_HARD_BOUNCE
ERASED = contacts_pb2.SUPPRESSION_REASON_ERASED
SECRET = "unit-link-secret-0123456789"


@pytest.mark.parametrize(
    ("purpose", "consent", "suppressed", "required", "expected"),
    [
        (MARKETING, GRANTED, None, True, (True, "")),
        (MARKETING, None, None, True, (False, "no_consent:marketing")),
        (MARKETING, None, None, False, (True, "")),
        (TARGETED, None, None, False, (True, "")),
        (AUTOMATIONS, None, None, False, (False, "no_consent:automations")),
        (MARKETING, WITHDRAWN, None, False, (False, "consent_withdrawn:marketing")),
        (TARGETED, PENDING, None, False, (False, "consent_pending:targeted_messages")),
        (AUTOMATIONS, PENDING, None, True, (False, "consent_pending:automations")),
        (TRANSACTIONAL, None, None, True, (True, "")),
        (TRANSACTIONAL, WITHDRAWN, None, True, (True, "")),
        (TRANSACTIONAL, None, BOUNCE, True, (False, "suppressed:hard_bounce")),
        (MARKETING, GRANTED, ERASED, False, (False, "suppressed:erased")),
    ],
)
def test_eligibility_rule(
    purpose: int, consent: int | None, suppressed: int | None, required: bool, expected: Any
) -> None:
    assert decide(purpose, consent, suppressed, required) == expected


def test_a_confirmation_link_verifies_until_it_expires_and_not_after() -> None:
    ws, msg, contact = (str(uuid.uuid4()) for _ in range(3))
    path = links.sign_confirm(SECRET, ws, msg, contact, 2_000_000_000)
    token = path.removeprefix("/k/")
    claims = links.verify(SECRET, token, links.LinkKind.CONFIRM, now=1_999_999_999)
    assert (claims.workspace_id, claims.message_id, claims.contact_id) == (ws, msg, contact)
    assert claims.expires_at == 2_000_000_000
    with pytest.raises(links.ExpiredLink):
        links.verify(SECRET, token, links.LinkKind.CONFIRM, now=2_000_000_000)


def test_the_expiry_is_inside_the_mac() -> None:
    ws, msg, contact = (str(uuid.uuid4()) for _ in range(3))
    early = links.sign_confirm(SECRET, ws, msg, contact, 1_000).removeprefix("/k/")
    late = links.sign_confirm(SECRET, ws, msg, contact, 2_000_000_000).removeprefix("/k/")
    raw_early = links.base64.urlsafe_b64decode(early + "=" * (-len(early) % 4))
    raw_late = links.base64.urlsafe_b64decode(late + "=" * (-len(late) % 4))
    # The later expiry with the earlier link's MAC: refused, not a longer-lived link.
    forged = raw_late[: -links.MAC_BYTES] + raw_early[-links.MAC_BYTES :]
    token = links.base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
    with pytest.raises(links.InvalidLink) as caught:
        links.verify(SECRET, token, links.LinkKind.CONFIRM, now=10_000)
    assert not isinstance(caught.value, links.ExpiredLink)


def test_link_kinds_do_not_stand_for_each_other() -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    preferences = links.sign_preferences(SECRET, *ids).removeprefix("/p/")
    unsubscribe = links.sign_unsubscribe(SECRET, *ids).removeprefix("/u/")
    assert links.verify(SECRET, preferences, links.LinkKind.PREFERENCES).contact_id == ids[2]
    with pytest.raises(links.InvalidLink):
        links.verify(SECRET, unsubscribe, links.LinkKind.PREFERENCES)
    with pytest.raises(links.InvalidLink):
        links.verify(SECRET, preferences, links.LinkKind.CONFIRM)


def _deps() -> Any:
    return SimpleNamespace(tracking_url="https://t.example/", link_secret=SECRET)


def _request(kind: int, **vars_: str) -> delivery_pb2.DeliveryRequested:
    return delivery_pb2.DeliveryRequested(
        message_id=str(uuid.uuid4()),
        contact_id=str(uuid.uuid4()),
        kind=kind,  # type: ignore[arg-type]
        vars=vars_,
    )


def test_every_non_transactional_mail_links_its_preference_page_and_transactional_none() -> None:
    ws = str(uuid.uuid4())
    for kind in (delivery_pb2.MESSAGE_KIND_CAMPAIGN, delivery_pb2.MESSAGE_KIND_AUTOMATION):
        request = _request(kind)
        made = mail_links(_deps(), ws, request)
        assert made.preferences.startswith("https://t.example/p/") and not made.confirm
        claims = links.verify(
            SECRET, made.preferences.rsplit("/", 1)[1], links.LinkKind.PREFERENCES
        )
        assert (claims.message_id, claims.contact_id) == (request.message_id, request.contact_id)
        mail = render("S", "Hello", "<p>Hello</p>", {}, made)
        assert made.preferences in mail.body_text
        assert made.preferences in mail.body_html
    assert mail_links(_deps(), ws, _request(delivery_pb2.MESSAGE_KIND_TRANSACTIONAL)) == MailLinks()
    plain = render("S", "Your order", "", {}, MailLinks())
    assert plain.body_text == "Your order"


def test_a_confirmation_mail_gets_its_expiring_link() -> None:
    request = _request(delivery_pb2.MESSAGE_KIND_TRANSACTIONAL, confirm_expires_at="2000000000")
    made = mail_links(_deps(), str(uuid.uuid4()), request)
    assert made.confirm.startswith("https://t.example/k/") and not made.preferences
    mail = render("S", "Confirm: {{ links.confirm }}", "", {}, made)
    assert mail.body_text == f"Confirm: {made.confirm}"
    token = made.confirm.rsplit("/", 1)[1]
    assert links.verify(SECRET, token, links.LinkKind.CONFIRM, now=0).expires_at == 2_000_000_000
