"""Contacts, consent and ingestion rules: pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime
from enum import IntEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
from services.common.contact_limits import check_email
from services.common.errors import Validator
from services.contacts.domain import attributes as attribute_rules

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


def validate_new_contact(
    c: NewContact,
    now: datetime,
    declared: dict[str, int] | None = None,
    *,
    prefix: str = "contact",
    attributes_to_check: set[str] | None = None,
) -> None:
    """Refuse the contact with every violation at once, each named ``<prefix>.<field>``;
    on success its e-mail is the normalised address (``email-validator``'s: the domain in
    lower case). ``declared`` (attribute name -> AttributeType) checks the attributes: only
    declared names, values of the declared type (``<prefix>.attributes.<name>``); of those in
    ``attributes_to_check`` only, when given (an update checks what it changes)."""
    v = Validator()
    email = c.email.strip()
    v.check(bool(email), f"{prefix}.email", "is required")
    if email:
        normalised, reason = check_email(email)
        v.check(not reason, f"{prefix}.email", f"is not a valid e-mail address: {reason}")
        if normalised:
            c.email = normalised
    v.check(len(c.external_id) <= MAX_TEXT, f"{prefix}.external_id", f"longer than {MAX_TEXT}")
    v.check(len(c.first_name) <= MAX_TEXT, f"{prefix}.first_name", f"longer than {MAX_TEXT}")
    v.check(len(c.last_name) <= MAX_TEXT, f"{prefix}.last_name", f"longer than {MAX_TEXT}")
    v.check(
        not c.locale or LOCALE.match(c.locale) is not None, f"{prefix}.locale", "not a BCP 47 tag"
    )
    v.check(not c.time_zone or _is_zone(c.time_zone), f"{prefix}.time_zone", "unknown IANA zone")
    if c.birthday is not None:
        v.check(_is_date(*c.birthday), f"{prefix}.birthday", "not a calendar date")
    if c.signed_up_at is not None:
        v.check(c.signed_up_at <= now + MAX_FUTURE_SKEW, f"{prefix}.signed_up_at", "in the future")
    v.check(
        len(c.attributes) <= MAX_ATTRIBUTES,
        f"{prefix}.attributes",
        f"more than {MAX_ATTRIBUTES}",
    )
    for key, value in sorted(c.attributes.items()):
        v.check(0 < len(key) <= 64, f"{prefix}.attributes.{key[:64]}", "key of 1-64 characters")
        v.check(
            len(value) <= MAX_ATTRIBUTE_VALUE,
            f"{prefix}.attributes.{key[:64]}",
            f"value longer than {MAX_ATTRIBUTE_VALUE}",
        )
    if declared is not None:
        # Each attribute once: those refused for their size above are not checked again.
        checked = {
            k: val
            for k, val in c.attributes.items()
            if (attributes_to_check is None or k in attributes_to_check)
            and 0 < len(k) <= 64
            and len(val) <= MAX_ATTRIBUTE_VALUE
        }
        attribute_rules.check_values(v, checked, declared, f"{prefix}.attributes")
    v.check(len(c.tags) <= MAX_TAGS, f"{prefix}.tags", f"more than {MAX_TAGS}")
    for i, tag in enumerate(c.tags[:MAX_TAGS]):
        v.check(TAG.match(tag) is not None, f"{prefix}.tags[{i}]", "lower-case [a-z0-9_:-], 1-64")
    for i, purpose in enumerate(c.consents):
        v.check(
            purpose in (Purpose.MARKETING, Purpose.TARGETED_MESSAGES, Purpose.AUTOMATIONS),
            f"consents[{i}]",
            "must be MARKETING, TARGETED_MESSAGES or AUTOMATIONS",
        )
    v.check(c.consent_source in ConsentSource.__members__.values(), "consent_source", "unknown")
    v.raise_if_any()


# The paths of UpdateContactRequest.update_mask (and UpsertContact's), as contacts.proto says.
PROFILE_PATHS = (
    "email",
    "external_id",
    "first_name",
    "last_name",
    "locale",
    "time_zone",
    "birthday",
    "signed_up_at",
    "vip",
    "tags",
    "attributes",
)


def check_mask(v: Validator, paths: list[str], field: str = "update_mask") -> None:
    """A mask names at least one path, each a profile field or ``attributes.<name>``."""
    v.check(bool(paths), f"{field}.paths", "is required: name the fields to change")
    for i, path in enumerate(paths):
        name = path.removeprefix("attributes.")
        v.check(
            path in PROFILE_PATHS
            or (path.startswith("attributes.") and attribute_rules.NAME.match(name) is not None),
            f"{field}.paths[{i}]",
            f"unknown field {path[:80]!r}: one of {', '.join(PROFILE_PATHS)}, attributes.<name>",
        )


def apply_patch(
    current: NewContact, patch: NewContact, paths: list[str]
) -> tuple[NewContact, list[str], set[str]]:
    """The contact after setting the ``paths`` of ``patch`` on ``current``; the paths that
    changed a value (in mask order, once each), and the attribute names given new values.
    ``attributes`` replaces them all; ``attributes.<name>`` sets one, or removes it when the
    patch lacks it. Tags compare as sets."""
    new = replace(current, attributes=dict(current.attributes), tags=sorted(set(current.tags)))
    touched: set[str] = set()
    for path in paths:
        if path == "attributes":
            new.attributes = dict(patch.attributes)
            touched |= set(patch.attributes)
        elif path.startswith("attributes."):
            name = path.removeprefix("attributes.")
            if name in patch.attributes:
                new.attributes[name] = patch.attributes[name]
                touched.add(name)
            else:
                new.attributes.pop(name, None)
        elif path == "tags":
            new.tags = sorted(set(patch.tags))
        else:
            setattr(new, path, getattr(patch, path))
    changed: list[str] = []
    for path in dict.fromkeys(paths):
        if path.startswith("attributes."):
            name = path.removeprefix("attributes.")
            differs = current.attributes.get(name) != new.attributes.get(name)
        elif path == "tags":
            differs = sorted(set(current.tags)) != new.tags
        elif path == "email":
            given = new.email.strip()
            differs = current.email != (check_email(given)[0] or given)
        else:
            differs = getattr(current, path) != getattr(new, path)
        if differs:
            changed.append(path)
    touched = {k for k in touched if current.attributes.get(k) != new.attributes.get(k)}
    return new, changed, touched


def modify_tags(current: list[str], add: list[str], remove: list[str]) -> list[str]:
    """The tags after adding ``add`` and removing ``remove`` (a tag in both is added)."""
    return sorted((set(current) - set(remove)) | set(add))


def check_tag_change(v: Validator, add: list[str], remove: list[str]) -> None:
    v.check(bool(add or remove), "add", "is required: tags to add or to remove")
    for name, tags in (("add", add), ("remove", remove)):
        v.check(len(tags) <= MAX_TAGS, name, f"more than {MAX_TAGS} tags")
        for i, tag in enumerate(tags[:MAX_TAGS]):
            v.check(TAG.match(tag) is not None, f"{name}[{i}]", "lower-case [a-z0-9_:-], 1-64")


INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


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
