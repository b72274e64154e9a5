"""The JSON the gateway speaks: request and response models, strict and bounded.

Strict means a string is a string (``"vip": "yes"`` is refused, not read as true) and unknown
fields are refused. The limits here only keep oversized input away from the services; the
rules (what an e-mail address is, which tags are valid) live in the services, whose field
errors come back through the gateway as 422s.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
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
    model_validator,
)

from services.common import campaign_limits as campaign_rules


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


def _text(max_length: int, min_length: int = 0) -> Any:
    return StringConstraints(min_length=min_length, max_length=max_length)


Id = Annotated[str, _text(200, 1)]
Text = Annotated[str, _text(200)]
LongText = Annotated[str, _text(2000)]
Url = Annotated[str, _text(2048)]

ConsentPurpose = Literal["marketing", "targeted_messages", "automations"]
ConsentStatus = Literal["granted", "withdrawn"]
ConsentSource = Literal["form", "import", "api", "unsubscribe_link", "preference_page"]


# --- contacts ---------------------------------------------------------------------------


class ContactIn(StrictModel):
    """A new contact of the caller's workspace."""

    email: Annotated[str, _text(254)] = Field(description="Unique in the workspace.")
    external_id: Text | None = Field(
        None, description="The platform's own id for this customer, unique in the workspace."
    )
    first_name: Text = ""
    last_name: Text = ""
    locale: Annotated[str, _text(35)] = Field("", description="BCP 47, e.g. `it-IT`.")
    time_zone: Annotated[str, _text(64)] = Field(
        "", description="IANA time zone, e.g. `Europe/Rome`."
    )
    birthday: Annotated[str, StringConstraints(pattern=r"^(\d{4}|-)-\d{2}-\d{2}$")] | None = Field(
        None, description="`YYYY-MM-DD`, or `--MM-DD` when the year is unknown."
    )
    signed_up_at: Rfc3339 | None = Field(None, description="When they signed up (RFC 3339).")
    attributes: dict[Annotated[str, _text(64, 1)], Annotated[str, _text(1024)]] = Field(
        default_factory=dict, max_length=50, description="Custom attributes, strings only."
    )
    vip: bool = Field(False, description="The manager's star.")
    tags: list[Annotated[str, _text(64, 1)]] = Field(default_factory=list, max_length=100)
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


class ConsentIn(StrictModel):
    """A consent given or withdrawn, with how and in which words."""

    purpose: ConsentPurpose
    status: ConsentStatus
    source: ConsentSource = "api"
    wording: LongText = Field("", description="The text the contact saw.")


class ConsentOut(ResponseModel):
    consent_event_id: str


# --- shop events --------------------------------------------------------------------------


class ContactRefIn(StrictModel):
    """Names the customer by exactly one of its identities."""

    id: Id | None = None
    external_id: Id | None = None
    email: Annotated[str, _text(254, 1)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ContactRefIn:
        given = [name for name in ("id", "external_id", "email") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of id, external_id, email")
        return self


class Money(StrictModel):
    amount_minor: int = Field(description="In the currency's minor unit (cents).")
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = Field(
        description="ISO 4217."
    )


class LineItem(StrictModel):
    product_id: Text = ""
    name: Annotated[str, _text(500)] = ""
    category: Text = ""
    quantity: Annotated[int, Field(ge=0, le=1_000_000)] = 1
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
    pass


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


class SegmentOut(ResponseModel):
    id: str = Field(description="Built-in segments use their name: `vip`, `loyal`...")
    name: str
    kind: Literal["built_in", "custom", "unspecified"]
    description: str


class SegmentList(ResponseModel):
    segments: list[SegmentOut]


class SegmentCount(ResponseModel):
    segment_id: str
    count: int
    as_of: datetime | None = Field(description="The evaluation time.")


# --- campaigns ----------------------------------------------------------------------------

CampaignStatus = Literal["draft", "scheduled", "sending", "sent", "cancelled", "unspecified"]


class CampaignIn(StrictModel):
    """A targeted message: a segment, a subject and a short text. The limits are the
    campaigns service's own (services/common/campaign_limits.py)."""

    name: Annotated[str, _text(campaign_rules.MAX_NAME, 1)]
    segment_ids: list[Id] = Field(
        max_length=campaign_rules.MAX_SEGMENTS, description="Who receives it (a union)."
    )
    subject: Annotated[str, _text(campaign_rules.MAX_SUBJECT)]
    body_text: Annotated[str, _text(campaign_rules.MAX_BODY_TEXT)]


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


class CampaignList(ResponseModel):
    campaigns: list[CampaignOut]
    next_page_token: str = Field(description="Pass as `page_token` for more; empty at the end.")


# --- messages -----------------------------------------------------------------------------

MessageStatus = Literal["claimed", "sent", "skipped", "bounced", "failed", "unspecified"]


class MessageStatusOut(ResponseModel):
    message_id: str
    status: MessageStatus
    detail: str
    updated_at: datetime | None


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
