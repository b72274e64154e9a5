"""A workflow as data: its trigger, entry rules, exit rules and steps (docs/triggers.md).

The JSON a manager writes, exports, diffs and imports maps one to one onto these models:
``Definition.model_validate(doc)`` parses it (pydantic reports every shape error with its
path, e.g. ``steps.2.then.0.duration``), ``Definition.model_dump(mode="json")`` writes it
back. Rules that span fields (unique step ids, which filter fits which event, limits) are
checked by :mod:`services.triggers.domain.definition`, which is what the API calls.

Pure data, no I/O: the interpreter (:mod:`services.triggers.domain.engine`) and the runtime
read these, nothing here reads the database or the clock.
"""

from __future__ import annotations

from datetime import time, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT: Literal["nudge.workflow/v1"] = "nudge.workflow/v1"

# What a workflow can be started by (Trigger.event), and what exit rules and "happened since
# the run began" conditions can name. Shop events keep their ShopEvent oneof names.
SHOP_EVENTS = (
    "signed_up",
    "cart_updated",
    "order_placed",
    "order_cancelled",
    "order_refunded",
    "page_viewed",
    "searched",
    "login_failed",
)
TRACKING_EVENTS = ("message_opened", "link_clicked")
SEGMENT_EVENTS = ("segment_entered", "segment_exited")
# Started by the engine's own timers, not by one event:
DERIVED_EVENTS = (
    "date_reached",  # a date field (birthday, signed_up_at, a date attribute) comes round
    "value_crossed",  # the contact's total spent passes a threshold
    "inactive",  # no order, visit or open for `inactive_for`
)
EventName = Literal[
    "signed_up",
    "cart_updated",
    "order_placed",
    "order_cancelled",
    "order_refunded",
    "page_viewed",
    "searched",
    "login_failed",
    "message_opened",
    "link_clicked",
    "segment_entered",
    "segment_exited",
    "date_reached",
    "value_crossed",
    "inactive",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EventFilter(_Model):
    """What an event must carry to count (every given field must hold)."""

    min_items: int | None = None  # cart_updated / order_placed: at least this many items
    max_items: int | None = None  # cart_updated with max_items 0: the cart was emptied
    category: str | None = None  # one of the event's items (or the viewed page) is in it
    product_id: str | None = None
    min_total_minor: int | None = None  # order/cart total, in minor units
    query_contains: str | None = None  # searched
    # page_viewed (and cart/order): the event names a product (a product page, not the home
    # page); browse abandonment starts only on those.
    has_product: bool = False


class Trigger(_Model):
    event: EventName
    filter: EventFilter = EventFilter()
    segment_id: str | None = None  # segment_entered / segment_exited
    # date_reached: "birthday", "signed_up_at" or "attributes.<name>" (an ISO date);
    # fires yearly (anniversaries count the years) at `at` in the contact's time zone.
    date_field: str | None = None
    at: time = time(9, 0)
    threshold_minor: int | None = None  # value_crossed: total spent, in minor units
    currency: str | None = None  # value_crossed: ISO 4217
    inactive_for: timedelta | None = None  # inactive: no activity for this long
    # inactive: which events count as activity
    activities: tuple[EventName, ...] = ("order_placed", "page_viewed", "message_opened")


class Entry(_Model):
    """Who may start a run, and how many at once."""

    # single: one active run per contact; per_key: one per value of `key` (one per cart);
    # unlimited: every trigger starts a run.
    concurrency: Literal["single", "per_key", "unlimited"] = "single"
    key: Literal["cart_id", "order_id"] | None = None  # per_key: the event field
    # What a trigger does while a run for the same contact (and key) is active: nothing, or
    # end that run and start again (the abandoned cart counts 3 hours from the LAST change).
    on_retrigger: Literal["ignore", "restart"] = "ignore"
    # always: any trigger may start a run; once: once per contact ever; `reentry_after`:
    # not again until that long after the previous run started.
    reentry: Literal["always", "once"] = "always"
    reentry_after: timedelta | None = None


class ExitRule(_Model):
    """An event that ends an active run early (an order ends the abandoned-cart run)."""

    event: EventName
    filter: EventFilter = EventFilter()
    same_key: bool = False  # only the run whose entry key (cart_id) the event carries


class SendWindow(_Model):
    """Marketing mail goes out only between start and end in the contact's local time; a
    step due outside waits for the next start (transactional mail ignores it)."""

    start: time = time(8, 0)
    end: time = time(21, 0)


class Message(_Model):
    kind: Literal["marketing", "transactional"] = "marketing"
    subject: str
    body_text: str
    body_html: str = ""
    respect_frequency_cap: bool = True  # marketing only
    # Marketing only. False for a mail in direct answer to what the contact just did (the
    # welcome letter after a signup): they are awake, and a welcome at 08:00 the next day
    # reads as a delay. A mail after a wait keeps the window.
    respect_send_window: bool = True


# Conditions (Branch.condition) --------------------------------------------------------


class InSegment(_Model):
    type: Literal["in_segment"] = "in_segment"
    segment_id: str


class HasTag(_Model):
    type: Literal["has_tag"] = "has_tag"
    tag: str


class AttributeIs(_Model):
    type: Literal["attribute"] = "attribute"
    attribute: str
    op: Literal["eq", "ne", "exists", "contains", "gt", "gte", "lt", "lte"] = "eq"
    value: str = ""


class HappenedSinceStart(_Model):
    """Event X happened for this contact since the run began."""

    type: Literal["happened"] = "happened"
    event: EventName
    filter: EventFilter = EventFilter()
    same_key: bool = False


class AllOf(_Model):
    type: Literal["all"] = "all"
    conditions: tuple[Condition, ...]


class AnyOf(_Model):
    type: Literal["any"] = "any"
    conditions: tuple[Condition, ...]


class Not(_Model):
    type: Literal["not"] = "not"
    condition: Condition


Condition = Annotated[
    InSegment | HasTag | AttributeIs | HappenedSinceStart | AllOf | AnyOf | Not,
    Field(discriminator="type"),
]


# Steps ---------------------------------------------------------------------------------


class _Step(_Model):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = ""
    # May this step run again for a contact who went through it in an earlier run (seed 002's
    # "run multiple times")? When false, a run reaching it a second time ends there
    # (end_reason "not_repeated").
    repeat: bool = True


class Wait(_Step):
    type: Literal["wait"] = "wait"
    duration: timedelta


class WaitUntil(_Step):
    """Until `at` local time: today if still ahead (day_offset 0), else the next day; with
    day_offset 1, the next day at `at` (seed: "the next day, at 10:00")."""

    type: Literal["wait_until"] = "wait_until"
    at: time
    day_offset: int = 0


class Branch(_Step):
    type: Literal["branch"] = "branch"
    condition: Condition
    then: tuple[Step, ...] = ()
    otherwise: tuple[Step, ...] = Field(default=(), alias="else")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Send(_Step):
    type: Literal["send"] = "send"
    message: Message


class ChangeTags(_Step):
    type: Literal["tag"] = "tag"
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


class ChangeScore(_Step):
    type: Literal["score"] = "score"
    delta: int


class ExitStep(_Step):
    type: Literal["exit"] = "exit"


Step = Annotated[
    Wait | WaitUntil | Branch | Send | ChangeTags | ChangeScore | ExitStep,
    Field(discriminator="type"),
]


class Definition(_Model):
    """One version of a workflow, as published (or as the draft being edited)."""

    format: Literal["nudge.workflow/v1"] = FORMAT
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    trigger: Trigger
    entry: Entry = Entry()
    exit_on: tuple[ExitRule, ...] = ()
    send_window: SendWindow = SendWindow()
    steps: tuple[Step, ...] = Field(min_length=1)


AllOf.model_rebuild()
AnyOf.model_rebuild()
Not.model_rebuild()
HappenedSinceStart.model_rebuild()
Branch.model_rebuild()
Definition.model_rebuild()
