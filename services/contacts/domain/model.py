"""Contacts, consent and ingestion rules: pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import IntEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.common.contact_limits import EMAIL as EMAIL
from services.common.contact_limits import LOCALE as LOCALE
from services.common.contact_limits import MAX_ATTRIBUTE_VALUE as MAX_ATTRIBUTE_VALUE
from services.common.contact_limits import MAX_ATTRIBUTES as MAX_ATTRIBUTES
from services.common.contact_limits import MAX_EVENT_STRING as MAX_EVENT_STRING
from services.common.contact_limits import MAX_FUTURE_SKEW as MAX_FUTURE_SKEW
from services.common.contact_limits import MAX_IDEMPOTENCY_KEY as MAX_IDEMPOTENCY_KEY
from services.common.contact_limits import MAX_TAGS as MAX_TAGS
from services.common.contact_limits import MAX_TEXT as MAX_TEXT
from services.common.contact_limits import SLUG as SLUG
from services.common.contact_limits import TAG as TAG
from services.common.errors import Validator

# The gRPC enums' numbers, mirrored so the rules do not import the transport.


class Purpose(IntEnum):
    MARKETING = 1
    TARGETED_MESSAGES = 2
    AUTOMATIONS = 3
    TRANSACTIONAL = 4


class ConsentStatus(IntEnum):
    GRANTED = 1
    WITHDRAWN = 2
    PENDING = 3  # double opt-in: asked, confirmation mail sent, not confirmed (not consent)


class ConsentSource(IntEnum):
    FORM = 1
    IMPORT = 2
    API = 3
    UNSUBSCRIBE_LINK = 4
    PREFERENCE_PAGE = 5
    CONFIRMATION_LINK = 6


# Consent is asked for, and recorded, for these purposes only: transactional mail (order
# details, password resets) needs none, so a consent to it means nothing.
CONSENT_PURPOSES = frozenset({Purpose.MARKETING, Purpose.TARGETED_MESSAGES, Purpose.AUTOMATIONS})


# CONFIRMATION_LINK is the double opt-in link's own source: nobody records it by hand.
RECORDABLE_SOURCES = frozenset(ConsentSource) - {ConsentSource.CONFIRMATION_LINK}
RECORDABLE_STATUSES = frozenset({ConsentStatus.GRANTED, ConsentStatus.WITHDRAWN})


def check_consent_change(v: Validator, purpose: int, status: int, source: int) -> None:
    """A consent change names a purpose consent is asked for, a status and a source; the
    contract's UNSPECIFIED (0) and numbers it does not define are refused."""
    v.check(
        purpose in CONSENT_PURPOSES,
        "purpose",
        "must be MARKETING, TARGETED_MESSAGES or AUTOMATIONS",
    )
    v.check(
        status in RECORDABLE_STATUSES,
        "status",
        "must be GRANTED or WITHDRAWN",
    )
    v.check(source in RECORDABLE_SOURCES, "source", "is required: FORM, IMPORT, API, ...")


@dataclass
class NewContact:
    email: str
    external_id: str = ""
    first_name: str = ""
    last_name: str = ""
    locale: str = ""
    time_zone: str = ""
    birthday: tuple[int, int, int] | None = None  # (year or 0, month, day)
    signed_up_at: datetime | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    vip: bool = False
    tags: list[str] = field(default_factory=list)
    consents: list[int] = field(default_factory=list)
    consent_source: int = ConsentSource.API
    consent_wording: str = ""


def normalize_email(email: str) -> str:
    return email.strip().lower()


def validate_new_contact(c: NewContact, now: datetime) -> None:
    v = Validator()
    v.check(bool(c.email.strip()), "contact.email", "is required")
    v.check(
        not c.email.strip() or (len(c.email) <= 254 and EMAIL.match(c.email.strip()) is not None),
        "contact.email",
        "is not an e-mail address",
    )
    v.check(len(c.external_id) <= MAX_TEXT, "contact.external_id", f"longer than {MAX_TEXT}")
    v.check(len(c.first_name) <= MAX_TEXT, "contact.first_name", f"longer than {MAX_TEXT}")
    v.check(len(c.last_name) <= MAX_TEXT, "contact.last_name", f"longer than {MAX_TEXT}")
    v.check(
        not c.locale or LOCALE.match(c.locale) is not None, "contact.locale", "not a BCP 47 tag"
    )
    v.check(not c.time_zone or _is_zone(c.time_zone), "contact.time_zone", "unknown IANA zone")
    if c.birthday is not None:
        v.check(_is_date(*c.birthday), "contact.birthday", "not a calendar date")
    if c.signed_up_at is not None:
        v.check(c.signed_up_at <= now + MAX_FUTURE_SKEW, "contact.signed_up_at", "in the future")
    v.check(
        len(c.attributes) <= MAX_ATTRIBUTES, "contact.attributes", f"more than {MAX_ATTRIBUTES}"
    )
    for key, value in c.attributes.items():
        v.check(0 < len(key) <= 64, f"contact.attributes[{key[:64]}]", "key of 1-64 characters")
        v.check(
            len(value) <= MAX_ATTRIBUTE_VALUE,
            f"contact.attributes[{key[:64]}]",
            f"value longer than {MAX_ATTRIBUTE_VALUE}",
        )
    v.check(len(c.tags) <= MAX_TAGS, "contact.tags", f"more than {MAX_TAGS}")
    for i, tag in enumerate(c.tags):
        v.check(TAG.match(tag) is not None, f"contact.tags[{i}]", "lower-case [a-z0-9_:-], 1-64")
    for i, purpose in enumerate(c.consents):
        v.check(
            purpose in (Purpose.MARKETING, Purpose.TARGETED_MESSAGES, Purpose.AUTOMATIONS),
            f"consents[{i}]",
            "must be MARKETING, TARGETED_MESSAGES or AUTOMATIONS",
        )
    v.check(c.consent_source in ConsentSource.__members__.values(), "consent_source", "unknown")
    v.raise_if_any()


def validate_workspace(name: str, slug: str) -> None:
    v = Validator()
    v.check(0 < len(name.strip()) <= MAX_TEXT, "name", f"1-{MAX_TEXT} characters")
    v.check(SLUG.match(slug) is not None, "slug", "lower-case [a-z0-9-], 2-63 characters")
    v.raise_if_any()


def check_idempotency_key(v: Validator, key: str) -> None:
    v.check(bool(key), "idempotency_key", "is required: the platform's own id for the event")
    v.check(
        len(key) <= MAX_IDEMPOTENCY_KEY, "idempotency_key", f"longer than {MAX_IDEMPOTENCY_KEY}"
    )


def is_eligible(
    purpose: int,
    consent: int | None,
    suppressed: bool,
    consent_required_for_campaigns: bool,
) -> tuple[bool, str]:
    """May this contact be mailed for ``purpose``? ``consent`` is the latest status or None.

    Suppression beats everything, transactional mail needs no consent, a withdrawal always
    counts, and campaigns go to contacts who never answered only when the workspace chose so.
    """
    if suppressed:
        return False, "suppressed"
    if purpose == Purpose.TRANSACTIONAL:
        return True, ""
    name = Purpose(purpose).name.lower()
    if consent == ConsentStatus.GRANTED:
        return True, ""
    if consent == ConsentStatus.WITHDRAWN:
        return False, f"consent_withdrawn:{name}"
    if (
        purpose in (Purpose.MARKETING, Purpose.TARGETED_MESSAGES)
        and not consent_required_for_campaigns
    ):
        return True, ""
    return False, f"no_consent:{name}"


def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _is_date(year: int, month: int, day: int) -> bool:
    try:
        date(year or 2000, month, day)  # 2000 is a leap year: 29 February without a year is fine
    except ValueError:
        return False
    return True
