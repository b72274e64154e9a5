r"""The JSON the gateway speaks: request and response models, strict and bounded.

Strict means a string is a string (``"vip": "yes"`` is refused, not read as true) and unknown
fields are refused. These models are also the OpenAPI document, so they say what the services
accept, taking each limit and pattern from the service's own rules (one source): a request the
document calls valid is not refused for its shape. What JSON Schema cannot say (a segment
that exists, a template that parses, an instant not in the future) is said in the field's
description, and the service's field errors come back through the gateway as 422s.
Patterns use only what every regex dialect reads alike (explicit classes; no ``\s``, ``\d``
or look-arounds), so that the document (ECMA-262), the gateway (pydantic's Rust engine) and
the services (Python) agree on every string.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from services.common import campaign_limits as campaign_rules
from services.common import contact_limits as contact_rules


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ResponseModel(BaseModel):
    pass


# Pydantic would also read "1700000000" as seconds since the epoch: RFC 3339 starts with a date.
_RFC3339_START = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


def _rfc3339_string(value: Any) -> Any:
    if not isinstance(value, str) or not _RFC3339_START.match(value):
        raise ValueError("must be an RFC 3339 date-time string, e.g. 2026-05-01T12:00:00Z")
    return value


def _in_utc(value: datetime) -> datetime:
    """The same instant in UTC; refused when UTC has no such date (``9999-12-31T23:59:59-01:00``
    is in the year 10000), as protobuf timestamps cannot hold it either."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            "out of range: must fall between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
        ) from None


# JSON has no date-time type: accept RFC 3339 strings with an offset, nothing else. Query
# parameters use the same type. The value is in UTC once validated.
Rfc3339 = Annotated[
    AwareDatetime, Strict(False), BeforeValidator(_rfc3339_string), AfterValidator(_in_utc)
]


# The services refuse NUL in every string they store (PostgreSQL text cannot hold it).
NO_NUL = r"^[^\x00]*$"


def _text(max_length: int, min_length: int = 0) -> Any:
    return StringConstraints(min_length=min_length, max_length=max_length, pattern=NO_NUL)


# The characters str.isspace() (and so str.strip(), which the services use) counts as white
# space, spelled out so that the pattern means the same in every regex dialect.
WHITE_SPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


PATTERN_MESSAGES: dict[str, str] = {}
"""What a value that does not match a pattern lacks, in words (problems.validation_problem)."""


def _filled_text(max_length: int, *, one_line: bool = False) -> Any:
    """1-``max_length`` characters, not all white space, no NUL (PostgreSQL text cannot hold
    it) and, for ``one_line``, no line breaks: the campaigns service's rule for its texts."""
    other = r"\x00\n\r" if one_line else r"\x00"
    pattern = f"^[^{other}]*[^{other}{WHITE_SPACE}][^{other}]*$"
    PATTERN_MESSAGES[pattern] = "must not be blank or contain NUL" + (
        " or line breaks" if one_line else ""
    )
    return StringConstraints(min_length=1, max_length=max_length, pattern=pattern)


# A calendar date: YYYY-MM-DD, or --MM-DD when the year is unknown (then 29 February is fine;
# year 0000 also means unknown). contacts checks the same (domain/model.py ``_is_date``).
_MONTH_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
BIRTHDAY_PATTERN = rf"^(?:(?:[0-9]{{4}}|-)-{_MONTH_DAY}|(?:{_LEAP_YEAR}|-)-02-29)$"

# The addresses this API takes: plain ASCII `local@domain.tld`, a subset of what
# email-validator (the contacts service's check) accepts, said so the document can state it.
# The gateway runs email-validator first (its precise reason is the answer), then this
# pattern; every address the pattern matches passes email-validator, but for the special-use
# top-level names (.test, .local, ...), which it refuses with its reason.
EMAIL_PATTERN = (
    r"^[A-Za-z0-9_+-]{1,32}(?:\.[A-Za-z0-9_+-]{1,31})?"
    r"@(?:[A-Za-z0-9]{1,20}(?:-[A-Za-z0-9]{1,20}){0,2}\.){1,4}[A-Za-z]{2,24}$"
)
_EMAIL = re.compile(EMAIL_PATTERN)


def _email(value: str) -> str:
    """The address as given, refused with email-validator's reason, or when it is outside
    the plain form the document states."""
    _, reason = contact_rules.check_email(value)
    if reason:
        raise ValueError(f"is not a valid e-mail address: {reason}")
    if not _EMAIL.match(value):
        raise ValueError(
            "is not an address this API takes: plain ASCII local@domain.tld"
            " (letters, digits, _ + - and one dot before the @-sign)"
        )
    return value


Email = Annotated[
    str,
    StringConstraints(min_length=6, max_length=contact_rules.MAX_EMAIL),
    AfterValidator(_email),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 6,
            "maxLength": contact_rules.MAX_EMAIL,
            "pattern": EMAIL_PATTERN,
        }
    ),
]
LOCALE_PATTERN = f"^(?:{contact_rules.LOCALE.pattern[1:-1]})?$"  # or empty
PATTERN_MESSAGES.update(
    {
        LOCALE_PATTERN: "not a BCP 47 tag",
        BIRTHDAY_PATTERN: "must be a calendar date, YYYY-MM-DD or --MM-DD",
        NO_NUL: "must not contain NUL characters",
        contact_rules.TAG.pattern: "lower-case [a-z0-9_:-], 1-64",
    }
)

TIME_ZONES = sorted(zoneinfo.available_timezones())


def _time_zone(value: str) -> str:
    if value and value not in _TIME_ZONE_SET:
        raise ValueError("not an IANA time zone, e.g. Europe/Rome")
    return value


_TIME_ZONE_SET = frozenset(TIME_ZONES)

Id = Annotated[str, _text(200, 1)]
Text = Annotated[str, _text(200)]
LongText = Annotated[str, _text(2000)]
# contacts refuses longer strings in shop events (domain/model.py MAX_EVENT_STRING).
Url = Annotated[str, _text(contact_rules.MAX_EVENT_STRING)]

ConsentPurpose = Literal["marketing", "targeted_messages", "automations"]
ConsentStatus = Literal["granted", "withdrawn"]
ConsentSource = Literal["form", "import", "api", "unsubscribe_link", "preference_page"]


# --- contacts ---------------------------------------------------------------------------


ATTRIBUTE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
AttributeName = Annotated[str, StringConstraints(pattern=ATTRIBUTE_NAME_PATTERN)]
AttributeValue = Annotated[str, _text(contact_rules.MAX_ATTRIBUTE_VALUE)]
Tag = Annotated[str, StringConstraints(pattern=contact_rules.TAG.pattern)]
PATTERN_MESSAGES[ATTRIBUTE_NAME_PATTERN] = "not an attribute name: [a-z][a-z0-9_]{0,63}"


class ContactIn(StrictModel):
    """A new contact of the caller's workspace."""

    email: Email = Field(
        description="An e-mail address (`local@domain.tld`), unique in the workspace (in any"
        " case); a refusal says why (`An email address must have an @-sign.`)."
    )
    external_id: Text | None = Field(
        None, description="The platform's own id for this customer, unique in the workspace."
    )
    first_name: Text = ""
    last_name: Text = ""
    locale: Annotated[str, StringConstraints(max_length=35, pattern=LOCALE_PATTERN)] = Field(
        "", description="BCP 47, e.g. `it-IT`."
    )
    time_zone: Annotated[str, AfterValidator(_time_zone)] = Field(
        "",
        description="IANA time zone, e.g. `Europe/Rome`.",
        json_schema_extra={"enum": ["", *TIME_ZONES]},
    )
    birthday: Annotated[str, StringConstraints(pattern=BIRTHDAY_PATTERN)] | None = Field(
        None, description="A calendar date: `YYYY-MM-DD`, or `--MM-DD` when the year is unknown."
    )
    signed_up_at: Rfc3339 | None = Field(
        None,
        description="When they signed up (RFC 3339); not more than "
        f"{int(contact_rules.MAX_FUTURE_SKEW.total_seconds() // 60)} minutes in the future.",
    )
    attributes: dict[AttributeName, AttributeValue] = Field(
        default_factory=dict,
        max_length=contact_rules.MAX_ATTRIBUTES,
        description="Custom attributes: each declared first (`PUT /v1/attributes/{name}`), its"
        " value a string of the declared type (number `12.5`, boolean `true`, date"
        " `2026-05-01`).",
    )
    vip: bool = Field(False, description="The manager's star.")
    tags: list[Annotated[str, StringConstraints(pattern=contact_rules.TAG.pattern)]] = Field(
        default_factory=list, max_length=contact_rules.MAX_TAGS
    )
    consents: list[ConsentPurpose] = Field(
        default_factory=list, max_length=3, description="Consents granted at creation."
    )
    consent_wording: LongText = Field("", description="The text the contact agreed to.")


class ContactOut(ResponseModel):
    id: str
    workspace_id: str
    email: str
    external_id: str | None
    first_name: str
    last_name: str
    locale: str
    time_zone: str
    birthday: str | None = Field(description="`YYYY-MM-DD` or `--MM-DD`.")
    signed_up_at: datetime | None
    attributes: dict[str, str]
    vip: bool
    tags: list[str]
    score: int
    created_at: datetime | None
    updated_at: datetime | None
    version: int = Field(description="Incremented by every change of the contact.")


class ContactList(ResponseModel):
    contacts: list[ContactOut]
    next_page_token: str = Field(description="Pass as `page_token` for more; empty at the end.")


class ContactUpsertIn(StrictModel):
    """The contact the shop knows by this customer id: created when new, else the fields
    given here are set (fields left out stay as they are)."""

    email: Email = Field(description="Required: the contact is created with it when new.")
    first_name: Text = ""
    last_name: Text = ""
    locale: Annotated[str, StringConstraints(max_length=35, pattern=LOCALE_PATTERN)] = ""
    time_zone: Annotated[str, AfterValidator(_time_zone)] = Field(
        "", json_schema_extra={"enum": ["", *TIME_ZONES]}
    )
    birthday: Annotated[str, StringConstraints(pattern=BIRTHDAY_PATTERN)] | None = None
    signed_up_at: Rfc3339 | None = None
    attributes: dict[AttributeName, AttributeValue] = Field(
        default_factory=dict, max_length=contact_rules.MAX_ATTRIBUTES
    )
    vip: bool = False
    tags: list[Tag] = Field(default_factory=list, max_length=contact_rules.MAX_TAGS)
    consents: list[ConsentPurpose] = Field(
        default_factory=list, max_length=3, description="Granted when the contact is created."
    )
    consent_wording: LongText = ""


def _not_null(schema: dict[str, Any]) -> None:
    """Document a member that may be absent but never null (the service refuses null with
    its own message, naming the member, which pydantic's union errors would not)."""
    branches = [b for b in schema.pop("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1:
        schema.update(branches[0])
    elif branches:
        schema["anyOf"] = branches


class ContactPatchIn(StrictModel):
    """A JSON merge patch (RFC 7396) of a contact: the members given are set, `null` removes
    (`external_id`, `birthday`, `signed_up_at`, an attribute, all `attributes`); names, locale
    and time zone become empty, `vip` false, `tags` empty. At least one member."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    # Not nullable in the document: an address cannot be removed (null is refused, 422).
    email: Email | None = Field(
        None, description="Cannot be removed: `null` is refused.", json_schema_extra=_not_null
    )
    external_id: Text | None = None
    first_name: Text | None = None
    last_name: Text | None = None
    locale: Annotated[str, StringConstraints(max_length=35, pattern=LOCALE_PATTERN)] | None = None
    time_zone: Annotated[str, AfterValidator(_time_zone)] | None = Field(
        None, json_schema_extra={"enum": ["", *TIME_ZONES, None]}
    )
    birthday: Annotated[str, StringConstraints(pattern=BIRTHDAY_PATTERN)] | None = None
    signed_up_at: Rfc3339 | None = None
    attributes: dict[AttributeName, AttributeValue | None] | None = Field(
        None,
        max_length=contact_rules.MAX_ATTRIBUTES,
        description="Merged: a member sets that attribute, `null` removes it.",
    )
    vip: bool | None = None
    tags: list[Tag] | None = Field(None, max_length=contact_rules.MAX_TAGS)

    @field_validator("email", mode="before")
    @classmethod
    def _email_stays(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be removed (null): give another address")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> ContactPatchIn:
        if not self.model_fields_set:
            raise ValueError("name at least one field to change")
        return self


class TagsIn(StrictModel):
    """Tags to add and to remove (a tag in both is added); at least one of them."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": "array", "minItems": 1}}}
                for name in ("add", "remove")
            ]
        }
    )

    add: list[Tag] = Field(default_factory=list, max_length=contact_rules.MAX_TAGS)
    remove: list[Tag] = Field(default_factory=list, max_length=contact_rules.MAX_TAGS)
    idempotency_key: Id | None = Field(
        None,
        description="The same key again (same contact, same change) answers the first call's"
        " version and applies nothing, even after later changes of the contact; the key used"
        " for another change is 409 (the `Idempotency-Key` header does the same; this member"
        " wins over it).",
    )

    @model_validator(mode="after")
    def _something(self) -> TagsIn:
        if not (self.add or self.remove):
            raise ValueError("give tags to add or to remove")
        return self


class TagsChangedOut(ResponseModel):
    contact: ContactOut
    changed: bool = Field(description="False when the tags were already so (or a duplicate).")
    duplicate: bool = Field(description="True when this idempotency key was used before.")
    version: int = Field(
        description="The contact's version right after this change (the first call's, for a"
        " duplicate)."
    )


ConsentState = Literal["granted", "withdrawn", "pending", "never_asked"]
# Every id the services keep as a UUID, in the path, the query or a body. A mismatch is said
# with the id's name, from its field (uuid_message): one pattern, whatever the id.
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def uuid_message(loc: Sequence[object]) -> str:
    """``contact_id`` (or an item of ``contact_ids``) → "not a contact id (a UUID)"; a field
    not named for an id → "not a UUID"."""
    name = next((part for part in reversed(loc) if isinstance(part, str)), "")
    name = name.removesuffix("s") if name.endswith("_ids") else name
    if name.endswith("_id"):
        noun = name.removesuffix("_id").replace("_", " ")
        return f"not {'an' if noun[:1] in 'aeiou' else 'a'} {noun} id (a UUID)"
    return "not a UUID"


ContactUuid = Annotated[str, StringConstraints(pattern=UUID_PATTERN)]


class ConsentFilterIn(StrictModel):
    purpose: ConsentPurpose
    state: ConsentState


class ContactFilterIn(StrictModel):
    """Which contacts: every condition given must hold. Empty: every contact."""

    tags_all: list[Tag] = Field(default_factory=list, max_length=contact_rules.MAX_TAGS)
    tags_any: list[Tag] = Field(default_factory=list, max_length=contact_rules.MAX_TAGS)
    tags_none: list[Tag] = Field(default_factory=list, max_length=contact_rules.MAX_TAGS)
    vip: bool | None = None
    attributes: dict[AttributeName, AttributeValue] = Field(
        default_factory=dict,
        max_length=50,
        description="Declared attribute -> the value it equals (numbers compare as numbers).",
    )
    consent: ConsentFilterIn | None = None
    created_since: Rfc3339 | None = None
    updated_since: Rfc3339 | None = None
    query: Annotated[str, _text(254)] = Field(
        "", description="Case-insensitive prefix of the e-mail, first, last or `first last`."
    )
    contact_ids: list[ContactUuid] = Field(default_factory=list, max_length=10_000)


class BulkTagsIn(TagsIn):
    filter: ContactFilterIn = Field(default_factory=ContactFilterIn)

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": "array", "minItems": 1}}}
                for name in ("add", "remove")
            ]
        }
    )


class BulkTagsOut(ResponseModel):
    matched: int = Field(description="Contacts the filter matched.")
    changed: int = Field(description="Of those, how many changed (the others had it so).")


# A delta is at most the largest integer every JSON parser holds exactly (2^53 - 1): near
# 2^63, a double-based client would send a neighbour of the number it means. The score
# itself is int64, and a sum beyond it is refused by the service.
MAX_DELTA = 2**53 - 1


def _integral_float(value: Any) -> Any:
    """JSON Schema counts ``339.0`` as an integer; so does this API (and nothing else:
    strings and true/false stay refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _not_zero(value: int) -> int:
    if value == 0:
        raise ValueError("must not be 0")
    return value


class ScoreIn(StrictModel):
    delta: Annotated[
        int,
        Field(ge=-MAX_DELTA, le=MAX_DELTA, json_schema_extra={"not": {"const": 0}}),
        AfterValidator(_not_zero),
        BeforeValidator(_integral_float),
    ] = Field(description="Added to the score (negative: taken away); not 0.")
    idempotency_key: Id | None = Field(
        None,
        description="The same key again answers the first result and applies nothing"
        " (the `Idempotency-Key` header does the same; this member wins over it).",
    )


class ScoreOut(ResponseModel):
    score: int
    version: int
    duplicate: bool = Field(description="True when this idempotency key was used before.")


AttributeType = Literal["string", "number", "boolean", "date"]


class AttributeIn(StrictModel):
    type: AttributeType
    description: Annotated[str, _text(500)] = ""


class AttributeOut(ResponseModel):
    name: str
    type: AttributeType | Literal["unspecified"]
    description: str
    created_at: datetime | None


class AttributeList(ResponseModel):
    attributes: list[AttributeOut]


def _ip_address(value: str) -> str:
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("not an IPv4 or IPv6 address") from None
    return value


class ConsentIn(StrictModel):
    """A consent given or withdrawn, with how and in which words."""

    purpose: ConsentPurpose
    status: ConsentStatus
    source: ConsentSource = "api"
    wording: LongText = Field("", description="The text the contact saw.")
    actor: Text = Field("", description="Who recorded it (a user, a system); `api` if empty.")
    ip: Annotated[
        str,
        AfterValidator(_ip_address),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "format": "ipv4"},
                    {"type": "string", "format": "ipv6"},
                    {"type": "string", "maxLength": 0},
                ]
            }
        ),
    ] = Field("", description="The contact's IP address when they gave it (IPv4 or IPv6).")
    user_agent: Annotated[str, _text(512)] = Field("", description="Their browser, when known.")
    recorded_at: Rfc3339 | None = Field(
        None, description="When it was given (RFC 3339, not in the future); now if absent."
    )


class ConsentOut(ResponseModel):
    consent_event_id: str
    pending_confirmation: bool = Field(
        False,
        description="A grant in a double opt-in workspace: it counts once the contact clicks"
        " the link of the confirmation mail sent to them.",
    )


# --- shop events --------------------------------------------------------------------------


class ContactRefIn(StrictModel):
    """Names the customer by exactly one of its identities."""

    id: Id | None = None
    external_id: Id | None = None
    email: Annotated[str, _text(254, 1)] | None = None

    # What the validator below checks, said in the document: exactly one is a string.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in ("id", "external_id", "email")
            ]
        }
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ContactRefIn:
        given = [name for name in ("id", "external_id", "email") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of id, external_id, email")
        return self


MAX_AMOUNT_MINOR = 2**53 - 1


class Money(StrictModel):
    # Bounded by what the services hold (protobuf int64): a larger amount was a 500.
    # Bounded where doubles are exact (2**53 - 1, as score deltas): JSON tools that compare in
    # doubles (schemathesis did) let 9223372036854775999 through an int64 bound. And 339.0 is
    # an integer to JSON Schema, so it is here.
    amount_minor: Annotated[int, BeforeValidator(_integral_float)] = Field(
        ge=-MAX_AMOUNT_MINOR, le=MAX_AMOUNT_MINOR, description="In the currency's minor unit."
    )
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = Field(
        description="ISO 4217."
    )


class LineItem(StrictModel):
    product_id: Text = ""
    name: Annotated[str, _text(500)] = ""
    category: Text = ""
    quantity: Annotated[int, Field(ge=0, le=1_000_000), BeforeValidator(_integral_float)] = 1
    unit_price: Money | None = None


Items = Annotated[list[LineItem], Field(max_length=500)]


class SignedUpData(StrictModel):
    pass


class CartUpdatedData(StrictModel):
    cart_id: Text = ""
    items: Items = Field(default_factory=list)
    total: Money | None = None
    cart_url: Url = ""


class OrderPlacedData(StrictModel):
    order_id: Text = ""
    cart_id: Text = ""
    items: Items = Field(default_factory=list)
    total: Money | None = None


class OrderChangedData(StrictModel):
    order_id: Text = ""


class PageViewedData(StrictModel):
    url: Url = ""
    product_id: Text = ""
    category: Text = ""


class SearchedData(StrictModel):
    query: Annotated[str, _text(500)] = ""


class LoginFailedData(StrictModel):
    reset_url: Url = Field(
        "",
        description="A link to choose a new password, made by the shop for this customer"
        " (short-lived, single-use): the password reminder mails it, never through click"
        " tracking.",
    )


class _EventIn(StrictModel):
    idempotency_key: Id = Field(
        description="The platform's own id for this event: sending it again is a no-op."
    )
    contact: ContactRefIn
    occurred_at: Rfc3339 | None = Field(None, description="RFC 3339; now when missing.")


class SignedUpEvent(_EventIn):
    type: Literal["signed_up"]
    data: SignedUpData | None = None


class CartUpdatedEvent(_EventIn):
    type: Literal["cart_updated"]
    data: CartUpdatedData | None = None


class OrderPlacedEvent(_EventIn):
    type: Literal["order_placed"]
    data: OrderPlacedData | None = None


class OrderCancelledEvent(_EventIn):
    type: Literal["order_cancelled"]
    data: OrderChangedData | None = None


class OrderRefundedEvent(_EventIn):
    type: Literal["order_refunded"]
    data: OrderChangedData | None = None


class PageViewedEvent(_EventIn):
    type: Literal["page_viewed"]
    data: PageViewedData | None = None


class SearchedEvent(_EventIn):
    type: Literal["searched"]
    data: SearchedData | None = None


class LoginFailedEvent(_EventIn):
    type: Literal["login_failed"]
    data: LoginFailedData | None = None


EventIn = Annotated[
    SignedUpEvent
    | CartUpdatedEvent
    | OrderPlacedEvent
    | OrderCancelledEvent
    | OrderRefundedEvent
    | PageViewedEvent
    | SearchedEvent
    | LoginFailedEvent,
    Field(discriminator="type"),
]
EVENT_TYPES = (
    "signed_up",
    "cart_updated",
    "order_placed",
    "order_cancelled",
    "order_refunded",
    "page_viewed",
    "searched",
    "login_failed",
)


class EventAccepted(ResponseModel):
    event_id: str
    duplicate: bool = Field(description="True when this idempotency key was seen before.")
    contact_id: str


# --- segments -----------------------------------------------------------------------------


RULE_DESCRIPTION = (
    "A segment rule: a JSON object in the rule language of docs/segment-rules.md, e.g."
    ' `{"all": [{"events": "order", "within": {"days": 60}, "count": {"op": "gte", "value": 2}},'
    ' {"tag": "newsletter"}]}`. Nodes: `all`/`any` (1-50 children), `not`, `field` + `op` +'
    " `value`, `attribute` + `op` + `value`, `tag`, `consent`, `events` (+ `within`, `count`,"
    " `where`), `segment`. Depth at most 10, at most 200 nodes, the request body at most"
    " 64 KiB. An invalid rule is refused with 422, one error per violation, each naming the"
    " node by its path (`rule.all[1].value`)."
)
Rule = Annotated[
    dict[str, Any],
    Field(description=RULE_DESCRIPTION, json_schema_extra={"minProperties": 1}),
]
# What POST /v1/segments:validate takes: any object (an empty one too), since that route
# answers a rule's violations as data (200 with valid=false), not as a 422.
AnyRule = Annotated[dict[str, Any], Field(description=RULE_DESCRIPTION)]
AS_OF_DESCRIPTION = (
    "Evaluation time (RFC 3339) between 1900-01-01 and 9000-01-01; now if missing. Orders,"
    " activity and signups after it are not seen; other profile fields are current."
)


class SegmentOut(ResponseModel):
    id: str = Field(description="Built-in segments use their name (`vip`); custom ones a UUID.")
    name: str
    kind: Literal["built_in", "custom", "unspecified"]
    description: str
    rule: dict[str, Any] = Field(description="The rule (normalized); built-ins have theirs too.")
    version: int = Field(description="1 on creation, +1 per change; the ETag.")
    created_at: datetime | None = Field(description="Unset (null) for built-ins.")
    updated_at: datetime | None
    depends_on: list[str] = Field(description="The segments the rule references.")


class SegmentList(ResponseModel):
    segments: list[SegmentOut] = Field(description="Built-ins first, then custom ones by name.")


class SegmentIn(StrictModel):
    """A custom segment. Its name is unique in the workspace, case-insensitively, built-in
    names included (409 otherwise)."""

    name: Annotated[str, _filled_text(200)]
    description: LongText = ""
    rule: Rule


class SegmentPatchIn(StrictModel):
    """A JSON merge patch (RFC 7396) of a custom segment: the members given change. At least
    one member; none may be `null` (a name and a rule cannot be removed; give `""` to clear the
    description)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    name: Annotated[str, _filled_text(200)] | None = Field(None, json_schema_extra=_not_null)
    description: LongText | None = Field(None, json_schema_extra=_not_null)
    rule: Rule | None = Field(None, json_schema_extra=_not_null)

    @field_validator("name", "description", "rule", mode="before")
    @classmethod
    def _not_removed(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be removed (null)")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> SegmentPatchIn:
        if not self.model_fields_set:
            raise ValueError("name at least one field to change")
        return self


class RuleIn(StrictModel):
    rule: AnyRule


class RuleViolationOut(ResponseModel):
    path: str = Field(description="The offending node, e.g. `rule.all[1].value`.")
    message: str


class RuleValidation(ResponseModel):
    valid: bool
    violations: list[RuleViolationOut]
    normalized_rule: dict[str, Any] | None = Field(
        description="The rule as it would be stored; null when invalid."
    )


class AdHocCountIn(StrictModel):
    """Counts the contacts a rule picks without saving it (a manager building a segment)."""

    rule: Rule
    as_of: Rfc3339 | None = Field(None, description=AS_OF_DESCRIPTION)


class RuleCount(ResponseModel):
    """An ad-hoc rule's count. No segment id: there is none, and an empty one would be read as
    a link to `/v1/segments/{segment_id}`."""

    count: int
    as_of: datetime | None = Field(description="The evaluation time.")


class SegmentCount(ResponseModel):
    segment_id: str
    count: int
    as_of: datetime | None = Field(description="The evaluation time.")
    count_30_days_ago: int | None = Field(
        None,
        description="Counted at now: the segment's count kept about 30 days ago (on"
        " `count_30_days_ago_day`, the latest day 30 to 37 days back on which it was counted;"
        " Nudge keeps each day's last count). Null when none was kept then, or with `as_of`.",
    )
    count_30_days_ago_day: date | None = Field(
        None, description="The day (UTC) `count_30_days_ago` was kept."
    )


class MoneyOut(ResponseModel):
    amount_minor: int
    currency: str


class MemberPreviewOut(ResponseModel):
    contact_id: str
    email: str
    first_name: str
    last_name: str
    last_order_at: datetime | None
    total_spent: list[MoneyOut] = Field(description="Completed orders at `as_of`, per currency.")
    orders: int = Field(description="Completed orders at `as_of`.")
    tags: list[str]
    vip: bool


class SegmentPreview(ResponseModel):
    members: list[MemberPreviewOut] = Field(description="The first members by contact id.")
    count: int = Field(description="Every member.")
    as_of: datetime


class MemberOut(ResponseModel):
    contact_id: str
    email: str


class MemberPage(ResponseModel):
    members: list[MemberOut] = Field(description="Ascending contact id.")
    next_after: str | None = Field(
        description="Pass as `after` (with the same `as_of`) for the next page; null at the end."
    )
    as_of: datetime = Field(description="The evaluation time: pass it back for the next page.")


class RuleNodeOut(ResponseModel):
    path: str
    kind: str
    held: bool
    summary: str = Field(description="The clause in words, e.g. `orders >= 2`.")
    observed: dict[str, str] = Field(description="The values the clause looked at.")
    children: list[RuleNodeOut]


class MembershipExplanation(ResponseModel):
    member: bool
    root: RuleNodeOut
    as_of: datetime


class ContactSegments(ResponseModel):
    contact_id: str
    segments: list[SegmentOut]
    as_of: datetime


class OverlapIn(StrictModel):
    segment_ids: list[Id] = Field(
        min_length=2,
        max_length=20,
        description="2-20 distinct ids of segments the workspace has.",
        json_schema_extra={"uniqueItems": True},
    )
    as_of: Rfc3339 | None = Field(None, description=AS_OF_DESCRIPTION)


class OverlapOut(ResponseModel):
    segment_ids: list[str]
    sizes: list[int]
    counts: list[list[int]] = Field(
        description="counts[i][j]: contacts in both segment i and segment j (the diagonal"
        " repeats sizes)."
    )
    union_count: int = Field(description="Contacts in at least one of them.")
    as_of: datetime


# --- campaigns ----------------------------------------------------------------------------

CampaignStatus = Literal[
    "draft", "scheduled", "sending", "sent", "cancelled", "paused", "unspecified"
]
Purpose = Literal["targeted_messages", "marketing"]
CapAction = Literal["skip", "defer"]
WinnerMetric = Literal["unique_human_clicks", "revenue"]
# JSON Schema counts 3600.0 as an integer: so do the campaign routes.
Integral = Annotated[int, BeforeValidator(_integral_float)]


class AdHocPreviewIn(AdHocCountIn):
    """The first members a rule picks without saving it (the rule builder's preview)."""

    limit: Integral = Field(20, ge=1, le=100, description="Members shown (1-100).")


# The IANA zones this machine's zoneinfo knows: the campaigns service's check, stated as an
# enum so that the document is exactly as strict as the server.
TIME_ZONES = sorted(z for z in zoneinfo.available_timezones() if "/" in z or z == "UTC")


def _known_zone(value: str) -> str:
    if value and value not in TIME_ZONES_SET:
        raise ValueError("is not an IANA time zone (e.g. Europe/Berlin)")
    return value


TIME_ZONES_SET = frozenset(TIME_ZONES)
TimeZone = Annotated[
    str,
    AfterValidator(_known_zone),
    WithJsonSchema({"type": "string", "enum": TIME_ZONES}),
]
OptionalTimeZone = Annotated[
    str,
    AfterValidator(_known_zone),
    WithJsonSchema({"type": "string", "enum": ["", *TIME_ZONES]}),
]


def _optional_email(value: str) -> str:
    return value if value == "" else _email(value)


# An address as contacts takes it, or "" for none; one type (not a union) so that an error
# names the member alone.
ReplyTo = Annotated[
    str,
    StringConstraints(max_length=contact_rules.MAX_EMAIL),
    AfterValidator(_optional_email),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": contact_rules.MAX_EMAIL,
            "anyOf": [{"maxLength": 0}, {"minLength": 6, "pattern": EMAIL_PATTERN}],
        }
    ),
]


class AbTestIn(StrictModel):
    """An A/B test of subjects: each variant goes to `sample_percent / len(subjects)` % of
    the audience; after `decide_after_s` the best (by `metric`) goes to the rest."""

    # Distinct subjects: the service names the repeated one (`ab_test.subjects[1]`).
    subjects: list[Annotated[str, _filled_text(campaign_rules.MAX_SUBJECT, one_line=True)]] = Field(
        min_length=campaign_rules.MIN_AB_SUBJECTS,
        max_length=campaign_rules.MAX_AB_SUBJECTS,
        json_schema_extra={"uniqueItems": True},
    )
    sample_percent: Integral = Field(
        ge=campaign_rules.MIN_AB_SAMPLE_PERCENT, le=campaign_rules.MAX_AB_SAMPLE_PERCENT
    )
    metric: WinnerMetric = "unique_human_clicks"
    decide_after_s: Integral = Field(
        ge=campaign_rules.MIN_AB_DECIDE_AFTER_S,
        le=campaign_rules.MAX_AB_DECIDE_AFTER_S,
        description="Seconds after the sample is sent: 10 minutes to 7 days.",
    )


class AbTestOut(ResponseModel):
    subjects: list[str]
    sample_percent: int
    metric: WinnerMetric | Literal["unspecified"]
    decide_after_s: int
    winner: int = Field(description="The winning variant (from 0); -1 until decided.")
    decided_at: datetime | None


class CampaignFieldsIn(StrictModel):
    """What a manager may set on a campaign besides its name, segments, subject and text."""

    exclude_segment_ids: list[Id] = Field(
        [],
        max_length=campaign_rules.MAX_EXCLUDE_SEGMENTS,
        description="Members of these segments receive nothing.",
        json_schema_extra={"uniqueItems": True},
    )
    tags_any: list[Tag] = Field(
        [],
        max_length=campaign_rules.MAX_TAGS_ANY,
        description="Also every contact with any of these tags.",
        json_schema_extra={"uniqueItems": True},
    )
    body_html: Annotated[str, _text(campaign_rules.MAX_BODY_HTML)] = Field(
        "", description="Optional HTML body (a template)."
    )
    body_markdown: Annotated[str, _text(campaign_rules.MAX_BODY_MARKDOWN)] = Field(
        "",
        description="Instead of `body_text` and `body_html` (both must then be empty): "
        "rendered to both.",
    )
    reply_to: ReplyTo = Field(
        "", description="The manager's address for replies; the sender is always no-reply."
    )
    purpose: Purpose = "targeted_messages"
    cap_action: CapAction = Field(
        "skip", description="Contacts the frequency cap holds back: left out, or sent later."
    )
    local_time: bool = Field(
        False, description="Scheduled at the same wall-clock time in each contact's zone."
    )
    time_zone: OptionalTimeZone = Field(
        "", description="IANA zone (`Europe/Berlin`); empty: the workspace's setting."
    )
    ab_test: AbTestIn | None = None
    holdout_percent: Integral = Field(0, ge=0, le=campaign_rules.MAX_HOLDOUT_PERCENT)


_FILLED = {"minLength": 1, "pattern": f"[^{WHITE_SPACE}]"}
_EMPTY = {"maxLength": 0}
# What JSON Schema can say of the rules across members: segments or tags (at least one), and
# body_text (with an optional body_html) or body_markdown alone.
_CAMPAIGN_RULES: dict[str, Any] = {
    "allOf": [
        {
            "anyOf": [
                {"required": ["segment_ids"], "properties": {"segment_ids": {"minItems": 1}}},
                {"required": ["tags_any"], "properties": {"tags_any": {"minItems": 1}}},
            ]
        },
        {
            "oneOf": [
                {
                    "required": ["body_text"],
                    "properties": {"body_text": _FILLED, "body_markdown": _EMPTY},
                },
                {
                    "required": ["body_markdown"],
                    "properties": {
                        "body_markdown": _FILLED,
                        "body_text": _EMPTY,
                        "body_html": _EMPTY,
                    },
                },
            ]
        },
    ]
}


class CampaignIn(CampaignFieldsIn):
    """A targeted message: segments (or tags), a subject and a short text (or Markdown). The
    limits are the campaigns service's own (services/common/campaign_limits.py)."""

    model_config = ConfigDict(json_schema_extra=_CAMPAIGN_RULES)

    name: Annotated[str, _filled_text(campaign_rules.MAX_NAME)]
    # uniqueItems is the service's check (it names the repeated item, `segment_ids[1]`).
    segment_ids: list[Id] = Field(
        [],
        max_length=campaign_rules.MAX_SEGMENTS,
        description="Who receives it (a union): ids of segments the workspace has "
        "(`GET /v1/segments`), each once. At least one, or `tags_any`.",
        json_schema_extra={"uniqueItems": True},
        validate_default=True,
    )
    subject: Annotated[str, _filled_text(campaign_rules.MAX_SUBJECT, one_line=True)] = Field(
        description="One line; a template (`{{ first_name }}`) that must parse."
    )
    body_text: Annotated[str, _text(campaign_rules.MAX_BODY_TEXT)] = Field(
        "",
        description="A template that must parse; required (not blank) unless "
        "`body_markdown` is given, and then empty.",
        validate_default=True,
    )

    # The rules across members (stated in the document by _CAMPAIGN_RULES), checked here so
    # that the caller hears of them with the other field errors, before any call. tags_any
    # and body_markdown (CampaignFieldsIn) are validated before these.
    @field_validator("segment_ids")
    @classmethod
    def _segments_or_tags(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value and not info.data.get("tags_any"):
            raise ValueError("at least one segment id is required (or tags_any)")
        return value

    @field_validator("body_text")
    @classmethod
    def _text_or_markdown(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("body_markdown"):
            if value:
                raise ValueError("must be empty when body_markdown is given")
        elif not value.strip():
            raise ValueError("is required and must not be blank (or give body_markdown)")
        return value


class CampaignOut(ResponseModel):
    id: str
    workspace_id: str
    name: str
    segment_ids: list[str]
    subject: str
    body_text: str
    status: CampaignStatus
    created_at: datetime | None
    scheduled_at: datetime | None
    exclude_segment_ids: list[str] = []
    tags_any: list[str] = []
    body_html: str = ""
    body_markdown: str = ""
    reply_to: str = ""
    purpose: Purpose | Literal["unspecified"] = "targeted_messages"
    cap_action: CapAction | Literal["unspecified"] = "skip"
    local_time: bool = False
    time_zone: str = ""
    ab_test: AbTestOut | None = None
    holdout_percent: int = 0
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    status_reason: str = Field("", description="Why it is paused or was cancelled.")


class CampaignList(ResponseModel):
    campaigns: list[CampaignOut]
    next_page_token: str = Field(description="Pass as `page_token` for more; empty at the end.")


# --- messages -----------------------------------------------------------------------------

MessageStatus = Literal[
    "queued",
    "claimed",
    "sent",
    "skipped",
    "bounced",
    "deferred",
    "failed",
    "unknown",
    "unspecified",
]


class MessageStatusOut(ResponseModel):
    message_id: str
    status: MessageStatus
    detail: str
    updated_at: datetime | None


# The story of a mail (issue 17): GET /v1/messages/{id}?explain=true.


class MessageOriginOut(ResponseModel):
    kind: Literal["transactional", "campaign", "automation", "test", "unspecified"]
    campaign_id: str = Field(description="The campaign that asked for it; empty if none.")
    workflow_id: str = Field(description="The workflow that asked for it; empty if none.")
    run_id: str = Field(description="The workflow run; empty if none.")
    step_id: str = Field(description="The workflow step (`step#iteration` when repeated).")


class EligibilityOut(ResponseModel):
    checked: bool = Field(description="False: a test send, or the request never got that far.")
    eligible: bool
    purpose: str = Field(description="The consent purpose contacts was asked about.")
    reason: str = Field(description="Why not (unsubscribed, suppressed...); empty if eligible.")
    at: datetime | None


class MessageStageOut(ResponseModel):
    at: datetime | None
    status: MessageStatus
    detail: str = Field(description="The SMTP server's answer, or why (skipped, failed).")
    attempt: int
    next_attempt_at: datetime | None = Field(description="Deferred: when it is tried again.")


class TrackingEventOut(ResponseModel):
    at: datetime | None
    kind: Literal["open", "click", "unsubscribe", "preferences", "unspecified"]
    machine: bool = Field(description="A scanner or a privacy proxy, not a person.")
    machine_reason: str
    url: str = Field(description="A click's target; empty otherwise.")


class MessageTraceOut(ResponseModel):
    trace_id: str = Field(description="The trace the message was claimed in; empty if none.")
    url: str = Field(description="The trace in Jaeger's UI; empty without a trace id.")
    command: str = Field(description="The terminal command printing the trace.")


class MessageStoryOut(MessageStatusOut):
    """Where a mail is, in one answer: the status fields of the plain GET, and its story."""

    contact_id: str
    origin: MessageOriginOut
    requested_at: datetime | None = Field(description="When the request was made.")
    eligibility: EligibilityOut
    attempts: int
    claimed_at: datetime | None
    next_attempt_at: datetime | None = Field(description="A kept request's next attempt.")
    stages: list[MessageStageOut] = Field(description="Every status it took, oldest first.")
    tracking: list[TrackingEventOut] = Field(description="Opens, clicks..., oldest first.")
    trace: MessageTraceOut


# A contact's messages (issue 18): GET /v1/contacts/{id}/messages, the console's contact page.


class ContactMessageOut(ResponseModel):
    message_id: str
    kind: Literal["transactional", "campaign", "automation", "test", "unspecified"]
    campaign_id: str = Field(description="The campaign that sent it; empty if none.")
    workflow_id: str = Field(description="The workflow (automation) that sent it; empty if none.")
    status: MessageStatus
    detail: str = Field(description="The SMTP server's answer, or why (skipped, failed).")
    attempts: int
    claimed_at: datetime | None = Field(description="When delivery took it (the list's order).")
    updated_at: datetime | None
    human_opens: int = Field(description="Opens tracking saw by people.")
    machine_opens: int = Field(description="Opens by scanners and privacy proxies.")
    human_clicks: int
    machine_clicks: int


class ContactMessageList(ResponseModel):
    messages: list[ContactMessageOut] = Field(description="Newest first.")
    next_page_token: str = Field(description="Pass as `page_token` for more; empty at the end.")


# --- health -------------------------------------------------------------------------------


class DependencyOut(BaseModel):
    model_config = ConfigDict(extra="allow")  # what the check learnt (Kafka: kind, brokers)

    ok: bool
    detail: str | None = None


class CheckOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    ok: bool
    latency_ms: float
    detail: str | None = None
    # The service's own dependencies, as it reports them (absent when it did not answer).
    dependencies: dict[str, DependencyOut] | None = None


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    checks: dict[str, CheckOut]
