"""A campaign's report and its call list (seed 003), read from `recipients` and
`attributions` (written by services/campaigns/report.py).

The report is two aggregate queries over the campaign's rows (grouped by variant and
exclusion reason, then folded here), so it is live while the campaign sends and exact once
every outcome is in. Definitions (docs/campaigns.md "## Report"):

- audience: every contact the fan-out reached (mailed or excluded); sent: handed to
  delivery; delivered: accepted by the SMTP server and not bounced by a later DSN;
  deferred: waiting for another attempt now (a deferral and no outcome yet).
- a person's click counts as their open too (unique human opens): a reader whose mail
  client blocks images opens without the pixel, and a click is proof that they did. So the
  open rate is not understated by blocked images, and click-to-open never passes 100 %.
  Totals count pixels only; a machine's click (a link scanner) implies no open.
- rates are 0 when their denominator is 0: delivery and bounce rates per sent, complaint,
  unsubscribe and unique-open/click rates per delivered, click-to-open = unique human
  clicks / unique human opens.
- final: the campaign is SENT and no mailed row is still waiting for an outcome.

The call list names contacts as contacts knows them now (CheckEligibilityBatch, a call per
1,000 contacts of a page) rather than from a copy kept here: campaigns keeps no names or
addresses, so an erased contact leaves no trace in it and a corrected name shows at once.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import grpc
from nudge.campaigns.v1 import campaigns_pb2
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.campaigns.report import ATTRIBUTION_WINDOW
from services.common.auth import internal_metadata
from services.common.errors import NotFound, Unavailable, Validator

SENDING = campaigns_pb2.CAMPAIGN_STATUS_SENDING
SENT = campaigns_pb2.CAMPAIGN_STATUS_SENT
DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 5000
MAX_PAGE_TOKEN = 100
ELIGIBILITY_BATCH = 1000  # contacts' CheckEligibilityBatch limit

_TERMINAL = (
    "(delivered_at IS NOT NULL OR bounced_at IS NOT NULL OR failed_at IS NOT NULL"
    " OR unknown_at IS NOT NULL OR skipped_at IS NOT NULL)"
)

_GROUPS = f"""
SELECT variant, excluded,
    count(*) AS contacts,
    count(*) FILTER (WHERE excluded IS NULL AND requested_at IS NOT NULL) AS sent,
    count(*) FILTER (WHERE delivered_at IS NOT NULL AND bounced_at IS NULL) AS delivered,
    count(*) FILTER (WHERE deferred_at IS NOT NULL AND NOT {_TERMINAL}) AS deferred,
    count(bounced_at) AS bounced,
    count(complained_at) AS complained,
    count(unknown_at) AS unknown,
    count(failed_at) AS failed,
    count(skipped_at) AS skipped,
    count(*) FILTER (
        WHERE first_human_open_at IS NOT NULL OR first_human_click_at IS NOT NULL
    ) AS opened_unique_human,
    count(first_machine_open_at) AS opened_unique_machine,
    coalesce(sum(human_opens), 0) + count(*) FILTER (
        WHERE first_human_click_at IS NOT NULL AND first_human_open_at IS NULL
    ) AS opened_total_human,
    coalesce(sum(machine_opens), 0) AS opened_total_machine,
    count(first_human_click_at) AS clicked_unique_human,
    count(first_machine_click_at) AS clicked_unique_machine,
    coalesce(sum(human_clicks), 0) AS clicked_total_human,
    coalesce(sum(machine_clicks), 0) AS clicked_total_machine,
    count(unsubscribed_at) AS unsubscribed,
    count(*) FILTER (WHERE excluded IS NULL AND NOT {_TERMINAL}) AS waiting
FROM recipients
WHERE workspace_id = $1 AND campaign_id = $2
GROUP BY variant, excluded
"""

_ORDERS = """
SELECT variant, holdout, currency, count(*) AS orders, sum(amount_minor) AS revenue
FROM attributions
WHERE workspace_id = $1 AND campaign_id = $2 AND voided_at IS NULL
GROUP BY variant, holdout, currency
"""

_COUNTERS = (
    "contacts",
    "sent",
    "delivered",
    "deferred",
    "bounced",
    "complained",
    "unknown",
    "failed",
    "skipped",
    "opened_unique_human",
    "opened_unique_machine",
    "opened_total_human",
    "opened_total_machine",
    "clicked_unique_human",
    "clicked_unique_machine",
    "clicked_total_human",
    "clicked_total_machine",
    "unsubscribed",
    "waiting",
)


def rate(numerator: int, denominator: int) -> float:
    """A share, 0 when nothing to divide by (a report before any delivery)."""
    return numerator / denominator if denominator else 0.0


@dataclass
class Counts:
    """The counters of a set of rows (a variant, the mailed, the whole campaign)."""

    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))

    def add(self, row: Mapping[str, Any]) -> None:
        for name in _COUNTERS:
            self.values[name] += int(row[name])

    def __getitem__(self, name: str) -> int:
        return self.values[name]


@dataclass
class Orders:
    orders: int = 0
    revenue: dict[str, int] = field(default_factory=dict)

    def add(self, currency: str, orders: int, revenue: int) -> None:
        self.orders += orders
        self.revenue[currency] = self.revenue.get(currency, 0) + revenue

    def to_proto(self) -> campaigns_pb2.Attribution:
        return campaigns_pb2.Attribution(
            orders=self.orders,
            revenue=[
                campaigns_pb2.Money(amount_minor=amount, currency=currency)
                for currency, amount in sorted(self.revenue.items())
            ],
        )


def _engagement(c: Counts, what: str) -> campaigns_pb2.Engagement:
    return campaigns_pb2.Engagement(
        unique_human=c[f"{what}_unique_human"],
        unique_machine=c[f"{what}_unique_machine"],
        total_human=c[f"{what}_total_human"],
        total_machine=c[f"{what}_total_machine"],
        unique_human_rate=rate(c[f"{what}_unique_human"], c["delivered"]),
    )


def variant_subjects(ab_test: Mapping[str, Any] | None) -> list[str]:
    if not ab_test:
        return []
    return [str(s) for s in ab_test.get("subjects", [])]


def build_report(
    campaign_id: str,
    status: int,
    ab_test: Mapping[str, Any] | None,
    holdout_percent: int,
    groups: Iterable[Mapping[str, Any]],
    orders: Iterable[Mapping[str, Any]],
    as_of: datetime,
) -> campaigns_pb2.CampaignReport:
    """The report from the aggregate rows of ``_GROUPS`` and ``_ORDERS`` (pure: unit-tested)."""
    total = Counts()
    mailed = Counts()
    by_variant: dict[int, Counts] = defaultdict(Counts)
    excluded: dict[str, int] = defaultdict(int)
    for row in groups:
        total.add(row)
        if row["excluded"] is None:
            mailed.add(row)
            by_variant[int(row["variant"])].add(row)
        else:
            excluded[row["excluded"]] += int(row["contacts"])
    campaign_orders = Orders()
    holdout_orders = Orders()
    orders_by_variant: dict[int, Orders] = defaultdict(Orders)
    for row in orders:
        if row["holdout"]:
            holdout_orders.add(row["currency"], int(row["orders"]), int(row["revenue"]))
        else:
            campaign_orders.add(row["currency"], int(row["orders"]), int(row["revenue"]))
            orders_by_variant[int(row["variant"])].add(
                row["currency"], int(row["orders"]), int(row["revenue"])
            )
    sent, delivered = mailed["sent"], mailed["delivered"]
    report = campaigns_pb2.CampaignReport(
        campaign_id=campaign_id,
        status=status,  # type: ignore[arg-type]
        audience=total["contacts"],
        excluded=[
            campaigns_pb2.ExcludedCount(reason=reason, count=count)
            for reason, count in sorted(excluded.items())
        ],
        sent=sent,
        delivered=delivered,
        deferred=mailed["deferred"],
        bounced=mailed["bounced"],
        complained=mailed["complained"],
        unknown=mailed["unknown"],
        failed=mailed["failed"],
        skipped=mailed["skipped"],
        opened=_engagement(mailed, "opened"),
        clicked=_engagement(mailed, "clicked"),
        unsubscribed=mailed["unsubscribed"],
        delivery_rate=rate(delivered, sent),
        bounce_rate=rate(mailed["bounced"], sent),
        complaint_rate=rate(mailed["complained"], delivered),
        unsubscribe_rate=rate(mailed["unsubscribed"], delivered),
        click_to_open_rate=rate(mailed["clicked_unique_human"], mailed["opened_unique_human"]),
        orders=campaign_orders.to_proto(),
        final=status == SENT and mailed["waiting"] == 0,
    )
    report.as_of.FromDatetime(as_of)
    subjects = variant_subjects(ab_test)
    if subjects:
        winner = int(ab_test.get("winner", -1)) if ab_test else -1
        for variant in sorted(set(by_variant) | set(range(len(subjects)))):
            c = by_variant[variant]
            subject_index = winner if variant == -1 else variant
            report.variants.append(
                campaigns_pb2.VariantReport(
                    variant=variant,
                    subject=subjects[subject_index] if 0 <= subject_index < len(subjects) else "",
                    sent=c["sent"],
                    delivered=c["delivered"],
                    opened=_engagement(c, "opened"),
                    clicked=_engagement(c, "clicked"),
                    orders=orders_by_variant[variant].to_proto(),
                )
            )
    holdout_contacts = excluded.get("holdout", 0)
    if holdout_percent or holdout_contacts:
        holdout_rate = rate(holdout_orders.orders, holdout_contacts)
        mailed_rate = rate(campaign_orders.orders, sent)
        report.holdout.CopyFrom(
            campaigns_pb2.HoldoutReport(
                contacts=holdout_contacts,
                orders=holdout_orders.to_proto(),
                order_rate=holdout_rate,
                lift=mailed_rate / holdout_rate - 1 if holdout_rate else 0.0,
            )
        )
    return report


def campaign_key(campaign_id: str) -> uuid.UUID:
    """The campaign's uuid; anything else names no campaign (NOT_FOUND, as another
    workspace's id would)."""
    try:
        return uuid.UUID(campaign_id)
    except ValueError as err:
        raise NotFound("campaign not found") from err


async def _campaign(conn: asyncpg.Connection, workspace_id: str, key: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT status, ab_test, holdout_percent, purpose FROM campaigns"
        " WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace_id),
        key,
    )
    if row is None:
        raise NotFound("campaign not found")
    return row


async def campaign_report(
    pool: asyncpg.Pool, workspace_id: str, campaign_id: str, as_of: datetime
) -> campaigns_pb2.CampaignReport:
    """The report of one of the workspace's campaigns, from one snapshot of the database."""
    key = campaign_key(campaign_id)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        row = await _campaign(conn, workspace_id, key)
        groups = await conn.fetch(_GROUPS, uuid.UUID(workspace_id), key)
        orders = await conn.fetch(_ORDERS, uuid.UUID(workspace_id), key)
    return build_report(
        str(key),
        row["status"],
        _json(row["ab_test"]),
        row["holdout_percent"],
        groups,
        orders,
        as_of,
    )


def _json(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        loaded = json.loads(value)
        return loaded if isinstance(loaded, dict) else None
    return dict(value)


# ---------------------------------------------------------------- the call list

_ENGAGED_NON_BUYERS = """
SELECT r.contact_id, r.first_human_open_at, r.first_human_click_at, r.human_clicks
FROM recipients r
WHERE r.workspace_id = $1 AND r.campaign_id = $2 AND r.contact_id > $3
  AND r.excluded IS NULL
  AND (r.first_human_open_at IS NOT NULL OR r.first_human_click_at IS NOT NULL)
  AND NOT EXISTS (
      SELECT 1 FROM attributions a
      WHERE a.workspace_id = r.workspace_id AND a.contact_id = r.contact_id
        AND a.voided_at IS NULL
        AND (a.campaign_id = r.campaign_id
             OR (a.placed_at >= LEAST(r.first_human_open_at, r.first_human_click_at)
                 AND a.placed_at <= r.last_human_engaged_at + $5::interval))
  )
ORDER BY r.contact_id
LIMIT $4
"""

_NIL = uuid.UUID(int=0)


def encode_page_token(after: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"e1.{after.hex}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> uuid.UUID | None:
    """The contact id the page starts after, or None when ``token`` is not ours."""
    if len(token) > MAX_PAGE_TOKEN:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        version, hex_id = raw.split(".")
        return uuid.UUID(hex=hex_id) if version == "e1" else None
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


async def engaged_non_buyers(
    pool: asyncpg.Pool,
    contacts: grpc.aio.Channel,
    internal_token: str,
    workspace_id: str,
    request: campaigns_pb2.ListEngagedNonBuyersRequest,
) -> campaigns_pb2.ListEngagedNonBuyersResponse:
    """A page of seed 003's call list: contacts who opened or clicked (human) and placed no
    order in the attribution window, in contact id order. Contacts deleted since are left
    out (contacts no longer knows them)."""
    v = Validator()
    v.check(0 <= request.page_size <= MAX_PAGE_SIZE, "page_size", f"must be 1-{MAX_PAGE_SIZE}")
    after = decode_page_token(request.page_token) if request.page_token else _NIL
    v.check(after is not None, "page_token", "is not a token of this list")
    v.raise_if_any()
    assert after is not None
    size = request.page_size or DEFAULT_PAGE_SIZE
    key = campaign_key(request.campaign_id)
    async with pool.acquire() as conn:
        campaign = await _campaign(conn, workspace_id, key)
        rows = await conn.fetch(
            _ENGAGED_NON_BUYERS,
            uuid.UUID(workspace_id),
            key,
            after,
            size + 1,
            ATTRIBUTION_WINDOW,
        )
    page = rows[:size]
    people = await _contacts(
        contacts, internal_token, workspace_id, campaign["purpose"], [r["contact_id"] for r in page]
    )
    answer = campaigns_pb2.ListEngagedNonBuyersResponse()
    for row in page:
        person = people.get(str(row["contact_id"]))
        if person is None:
            continue
        entry = answer.contacts.add(
            contact_id=str(row["contact_id"]),
            email=person.email,
            first_name=person.first_name,
            last_name=person.last_name,
            clicks=row["human_clicks"],
        )
        # A click without a pixel load is the open, at the click's time (as in the report).
        opened = min(
            (t for t in (row["first_human_open_at"], row["first_human_click_at"]) if t),
            default=None,
        )
        if opened is not None:
            entry.first_opened_at.FromDatetime(opened)
        if row["first_human_click_at"] is not None:
            entry.first_clicked_at.FromDatetime(row["first_human_click_at"])
    if len(rows) > size:
        answer.next_page_token = encode_page_token(page[-1]["contact_id"])
    return answer


async def _contacts(
    channel: grpc.aio.Channel,
    internal_token: str,
    workspace_id: str,
    purpose: int,
    contact_ids: Sequence[uuid.UUID],
) -> dict[str, contacts_pb2.CheckEligibilityResponse]:
    """Contacts' current e-mail and names, by contact id (found ones only)."""
    stub = contacts_pb2_grpc.ConsentServiceStub(channel)
    metadata = internal_metadata(internal_token, workspace_id)
    found: dict[str, contacts_pb2.CheckEligibilityResponse] = {}
    for start in range(0, len(contact_ids), ELIGIBILITY_BATCH):
        chunk = contact_ids[start : start + ELIGIBILITY_BATCH]
        request = contacts_pb2.CheckEligibilityBatchRequest(
            checks=[
                contacts_pb2.CheckEligibilityRequest(contact_id=str(c), purpose=purpose)  # type: ignore[arg-type]
                for c in chunk
            ]
        )
        try:
            answer = await stub.CheckEligibilityBatch(request, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable("cannot read the contacts now; retry shortly") from err
            raise
        for contact_id, item in zip(chunk, answer.answers, strict=False):
            if item.found:
                found[str(contact_id)] = item.eligibility
    return found
