"""The report's consumers: delivery.events.v1, tracking.events.v1 and shop.events.v1 into the
campaign's `recipients` rows and the `attributions` table.

How an event counts, and why it never counts twice:

- A delivery or tracking event names a message id and its contact. Campaign messages have a
  mailed `recipients` row with that id in the event's workspace, found through the contact's
  rows (``recipients_by_contact``, the message id checked in the index); every other message
  (automation, transactional, tests, another workspace's) matches no row and is dropped
  inside the same statement, without a claim.
- Each outcome is a first-time timestamp on the row (``LEAST``: replays and reordering change
  nothing), and each total (opens, clicks, deferrals) is raised only for events whose
  ``processed_events`` claim is new, in the same statement: a redelivered event is a no-op.
- Writes are batched: the records the consumer loop hands out concurrently are gathered (as
  segmentation's ReadModelWriter does) and applied in one transaction a batch: two
  statements for the message marks (claim, then fold), one for orders, one for voids.

Orders (OrderPlaced) are attributed to the campaign whose mail the same contact opened or
clicked (a human open or click) at most 5 days before the order: measured from the first or
from the latest such engagement; when several campaigns qualify, the one engaged with most
recently wins. A contact of a campaign's hold-out whose order comes within 5 days after the
campaign started counts for that hold-out (the lift), unless a mailed campaign qualifies.
``attributions`` is keyed by (workspace, order id): a replayed order inserts nothing and an
order counts for one campaign only. OrderCancelled and OrderRefunded void the attribution
(``voided_at``): the report counts orders that stand.

Run by the campaigns service (bootstrap.py ``start_report``), consumer group
``campaigns-report``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from aiokafka import ConsumerRecord
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.ids import is_uuid

log = logging.getLogger(__name__)

CONSUMER = "campaigns-report"
ATTRIBUTION_WINDOW = timedelta(days=5)
MAX_ORDER_ID = 200
MAX_CURRENCY = 8

# Envelope payload -> the kind of mark it leaves on the message's row.
_DELIVERY_KINDS = {
    "message_queued": "queued",
    "message_sent": "delivered",
    "message_deferred": "deferred",
    "message_bounced": "bounced",
    "message_failed": "failed",
    "message_unknown": "unknown",
    "message_skipped": "skipped",
    "message_complained": "complained",
}


@dataclass(frozen=True)
class MessageMark:
    """A delivery or tracking event about one message."""

    event_id: str
    workspace_id: uuid.UUID
    contact_id: uuid.UUID
    message_id: uuid.UUID
    kind: str  # queued, delivered, ..., open_human, open_machine, click_human, ...
    at: datetime


@dataclass(frozen=True)
class OrderPlaced:
    workspace_id: uuid.UUID
    order_id: str
    contact_id: uuid.UUID
    placed_at: datetime
    amount_minor: int
    currency: str


@dataclass(frozen=True)
class OrderVoided:
    workspace_id: uuid.UUID
    order_id: str
    at: datetime


Observation = MessageMark | OrderPlaced | OrderVoided


def _time(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def observation_of(envelope: Envelope) -> Observation | None:
    """What the report keeps of an envelope, or None when it keeps nothing (another kind of
    event, an id that cannot be a campaign's, a resent unknown outcome)."""
    if not is_uuid(envelope.workspace_id):
        return None
    workspace_id = uuid.UUID(envelope.workspace_id)
    at = _time(envelope.occurred_at)
    payload = envelope.WhichOneof("payload")
    if payload is None:
        return None
    kind = _DELIVERY_KINDS.get(payload)
    if payload == "message_unknown" and envelope.message_unknown.resent:
        return None  # sent again: its real outcome follows
    if payload == "message_opened":
        kind = "open_machine" if envelope.message_opened.machine_open else "open_human"
    elif payload == "link_clicked":
        kind = "click_machine" if envelope.link_clicked.machine_click else "click_human"
    elif payload == "unsubscribe_requested":
        kind = "unsubscribed"
    if kind is not None:
        event = getattr(envelope, payload)
        if not (is_uuid(event.message_id) and is_uuid(event.contact_id)):
            return None  # campaign messages name a contact, and their ids are uuids
        return MessageMark(
            envelope.event_id,
            workspace_id,
            uuid.UUID(event.contact_id),
            uuid.UUID(event.message_id),
            kind,
            at,
        )
    if payload != "shop_event":
        return None
    event = envelope.shop_event
    if event.HasField("occurred_at"):
        at = _time(event.occurred_at)
    order_kind = event.WhichOneof("kind")
    if order_kind == "order_placed":
        placed = event.order_placed
        if not is_uuid(event.contact_id):
            return None
        return OrderPlaced(
            workspace_id=workspace_id,
            order_id=_order_key(placed.order_id, envelope.event_id),
            contact_id=uuid.UUID(event.contact_id),
            placed_at=at,
            amount_minor=placed.total.amount_minor,
            # PostgreSQL refuses a NUL in text: that one character would fail the batch.
            currency=placed.total.currency.replace("\x00", "").upper()[:MAX_CURRENCY],
        )
    if order_kind in ("order_cancelled", "order_refunded"):
        order_id = getattr(event, order_kind).order_id
        if not order_id or len(order_id) > MAX_ORDER_ID or "\x00" in order_id:
            return None
        return OrderVoided(workspace_id, order_id, at)
    return None


def _order_key(order_id: str, event_id: str) -> str:
    """The platform's order id; an order without one (or with one we cannot store) is known
    by its event id, so that its replay is still recognised."""
    if order_id and len(order_id) <= MAX_ORDER_ID and "\x00" not in order_id:
        return order_id
    return f"event:{event_id}"


# A batch of message marks takes two statements: claim the event ids of those that name a
# campaign's message in the same workspace (the others leave no claim), then fold the newly
# claimed ones into their rows. Two rather than one data-modifying CTE: joining the claim's
# RETURNING back to the marks misleads the planner (it expects one row) into a nested loop
# over both, which took a second per 1,000 events.
_CLAIM_MARKS = """
INSERT INTO processed_events (consumer, event_id)
SELECT $4, e.event_id
FROM unnest($1::text[], $2::uuid[], $3::uuid[], $5::uuid[])
     AS e(event_id, workspace_id, message_id, contact_id)
WHERE EXISTS (
    SELECT 1 FROM recipients r
    WHERE r.workspace_id = e.workspace_id AND r.contact_id = e.contact_id
      AND r.message_id = e.message_id AND r.excluded IS NULL
)
ON CONFLICT DO NOTHING
RETURNING event_id
"""

_APPLY_MARKS = """
WITH fresh AS (
    SELECT m.workspace_id, m.contact_id, m.message_id,
        min(m.at) FILTER (WHERE m.kind = 'queued') AS queued_at,
        min(m.at) FILTER (WHERE m.kind = 'delivered') AS delivered_at,
        max(m.at) FILTER (WHERE m.kind = 'deferred') AS deferred_at,
        count(*) FILTER (WHERE m.kind = 'deferred') AS deferrals,
        min(m.at) FILTER (WHERE m.kind = 'bounced') AS bounced_at,
        min(m.at) FILTER (WHERE m.kind = 'failed') AS failed_at,
        min(m.at) FILTER (WHERE m.kind = 'unknown') AS unknown_at,
        min(m.at) FILTER (WHERE m.kind = 'skipped') AS skipped_at,
        min(m.at) FILTER (WHERE m.kind = 'complained') AS complained_at,
        min(m.at) FILTER (WHERE m.kind = 'unsubscribed') AS unsubscribed_at,
        min(m.at) FILTER (WHERE m.kind = 'open_human') AS first_human_open_at,
        min(m.at) FILTER (WHERE m.kind = 'open_machine') AS first_machine_open_at,
        count(*) FILTER (WHERE m.kind = 'open_human') AS human_opens,
        count(*) FILTER (WHERE m.kind = 'open_machine') AS machine_opens,
        min(m.at) FILTER (WHERE m.kind = 'click_human') AS first_human_click_at,
        min(m.at) FILTER (WHERE m.kind = 'click_machine') AS first_machine_click_at,
        count(*) FILTER (WHERE m.kind = 'click_human') AS human_clicks,
        count(*) FILTER (WHERE m.kind = 'click_machine') AS machine_clicks,
        max(m.at) FILTER (WHERE m.kind IN ('open_human', 'click_human')) AS last_engaged
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::uuid[])
         AS m(workspace_id, message_id, kind, at, contact_id)
    GROUP BY m.workspace_id, m.contact_id, m.message_id
)
UPDATE recipients r SET
    queued_at = LEAST(r.queued_at, f.queued_at),
    delivered_at = LEAST(r.delivered_at, f.delivered_at),
    deferred_at = GREATEST(r.deferred_at, f.deferred_at),
    deferrals = r.deferrals + f.deferrals,
    bounced_at = LEAST(r.bounced_at, f.bounced_at),
    failed_at = LEAST(r.failed_at, f.failed_at),
    unknown_at = LEAST(r.unknown_at, f.unknown_at),
    skipped_at = LEAST(r.skipped_at, f.skipped_at),
    complained_at = LEAST(r.complained_at, f.complained_at),
    unsubscribed_at = LEAST(r.unsubscribed_at, f.unsubscribed_at),
    first_human_open_at = LEAST(r.first_human_open_at, f.first_human_open_at),
    first_machine_open_at = LEAST(r.first_machine_open_at, f.first_machine_open_at),
    human_opens = r.human_opens + f.human_opens,
    machine_opens = r.machine_opens + f.machine_opens,
    first_human_click_at = LEAST(r.first_human_click_at, f.first_human_click_at),
    first_machine_click_at = LEAST(r.first_machine_click_at, f.first_machine_click_at),
    human_clicks = r.human_clicks + f.human_clicks,
    machine_clicks = r.machine_clicks + f.machine_clicks,
    last_human_engaged_at = GREATEST(r.last_human_engaged_at, f.last_engaged)
FROM fresh f
WHERE r.workspace_id = f.workspace_id AND r.contact_id = f.contact_id
  AND r.message_id = f.message_id AND r.excluded IS NULL
"""

# One statement for a batch of orders: the campaign each is attributed to (a mailed row
# engaged with at most 5 days before the order, the latest engagement first; else a
# hold-out row of a campaign started at most 5 days before), inserted once per order.
_ATTRIBUTE_ORDERS = """
WITH o AS (
    SELECT DISTINCT ON (workspace_id, order_id) *
    FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::timestamptz[], $5::bigint[], $6::text[])
         AS o(workspace_id, order_id, contact_id, placed_at, amount_minor, currency)
)
INSERT INTO attributions (workspace_id, order_id, campaign_id, contact_id, variant, holdout,
                          amount_minor, currency, placed_at)
SELECT o.workspace_id, o.order_id, pick.campaign_id, o.contact_id, pick.variant, pick.holdout,
       o.amount_minor, o.currency, o.placed_at
FROM o
CROSS JOIN LATERAL (
    SELECT * FROM (
        SELECT r.campaign_id, r.variant, false AS holdout, 1 AS rank,
               r.last_human_engaged_at AS at
        FROM recipients r
        WHERE r.workspace_id = o.workspace_id AND r.contact_id = o.contact_id
          AND r.excluded IS NULL AND r.requested_at IS NOT NULL
          AND r.last_human_engaged_at IS NOT NULL
          AND (
              (LEAST(r.first_human_open_at, r.first_human_click_at) <= o.placed_at
               AND o.placed_at
                   <= LEAST(r.first_human_open_at, r.first_human_click_at) + $7::interval)
              OR (r.last_human_engaged_at <= o.placed_at
                  AND o.placed_at <= r.last_human_engaged_at + $7::interval)
          )
        UNION ALL
        SELECT r.campaign_id, r.variant, true, 2, c.started_at
        FROM recipients r
        JOIN campaigns c ON c.workspace_id = r.workspace_id AND c.id = r.campaign_id
        WHERE r.workspace_id = o.workspace_id AND r.contact_id = o.contact_id
          AND r.excluded = 'holdout'
          AND c.started_at <= o.placed_at AND o.placed_at <= c.started_at + $7::interval
    ) candidates
    ORDER BY rank, at DESC, campaign_id
    LIMIT 1
) pick
ON CONFLICT (workspace_id, order_id) DO NOTHING
"""

_VOID_ORDERS = """
UPDATE attributions a SET voided_at = LEAST(a.voided_at, v.at)
FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS v(workspace_id, order_id, at)
WHERE a.workspace_id = v.workspace_id AND a.order_id = v.order_id
"""


async def apply_observations(conn: asyncpg.Connection, batch: list[Observation]) -> None:
    """Apply a batch in one transaction: claim and fold the message marks, attribute the
    orders, void the cancelled ones."""
    marks = [o for o in batch if isinstance(o, MessageMark)]
    orders = [o for o in batch if isinstance(o, OrderPlaced)]
    voids = [o for o in batch if isinstance(o, OrderVoided)]
    async with conn.transaction():
        if marks:
            claimed = {
                row["event_id"]
                for row in await conn.fetch(
                    _CLAIM_MARKS,
                    [m.event_id for m in marks],
                    [m.workspace_id for m in marks],
                    [m.message_id for m in marks],
                    CONSUMER,
                    [m.contact_id for m in marks],
                )
            }
            # A batch holding one event twice: its claim is new, but it counts once.
            fresh = list({m.event_id: m for m in marks if m.event_id in claimed}.values())
            if fresh:
                await conn.execute(
                    _APPLY_MARKS,
                    [m.workspace_id for m in fresh],
                    [m.message_id for m in fresh],
                    [m.kind for m in fresh],
                    [m.at for m in fresh],
                    [m.contact_id for m in fresh],
                )
        if orders:
            await conn.execute(
                _ATTRIBUTE_ORDERS,
                [o.workspace_id for o in orders],
                [o.order_id for o in orders],
                [o.contact_id for o in orders],
                [o.placed_at for o in orders],
                [o.amount_minor for o in orders],
                [o.currency for o in orders],
                ATTRIBUTION_WINDOW,
            )
        if voids:
            await conn.execute(
                _VOID_ORDERS,
                [v.workspace_id for v in voids],
                [v.order_id for v in voids],
                [v.at for v in voids],
            )


class ReportWriter:
    """Gathers the observations of concurrently handled records into batches.

    No timer: an observation that arrives while no batch is being written goes at once;
    those that arrive meanwhile wait for it and go together, up to ``max_batch`` (the
    pattern of segmentation's ReadModelWriter). A batch that fails is applied again one
    observation per transaction, so that a record the database refuses fails alone (and is
    retried or dead-lettered by the consumer loop) while the others are applied.
    """

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 1000, max_flushes: int = 2):
        self._pool = pool
        self._max_batch = max_batch
        self._max_flushes = max_flushes
        self._queue: deque[tuple[Observation, asyncio.Future[None]]] = deque()
        self._flushing = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches committed (for tests)

    async def apply(self, observation: Observation) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((observation, future))
        self._start_flushes()
        await future

    def _start_flushes(self) -> None:
        while self._queue and (
            self._flushing == 0
            or (self._flushing < self._max_flushes and len(self._queue) >= self._max_batch)
        ):
            batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
            self._flushing += 1
            task = asyncio.create_task(self._flush(batch), name="campaigns-report-batch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[Observation, asyncio.Future[None]]]) -> None:
        try:
            try:
                async with self._pool.acquire() as conn:
                    await apply_observations(conn, [item for item, _ in batch])
                self.batches += 1
                for _, future in batch:
                    _settle(future, None)
            except Exception as err:
                if len(batch) == 1:
                    _settle(batch[0][1], err)
                    return
                log.warning(
                    "a report batch of %d failed (%r); applying one by one", len(batch), err
                )
                for item, future in batch:
                    try:
                        async with self._pool.acquire() as conn:
                            await apply_observations(conn, [item])
                        _settle(future, None)
                    except Exception as one:
                        _settle(future, one)
        finally:
            self._flushing -= 1
            self._start_flushes()


def _settle(future: asyncio.Future[None], outcome: Exception | None) -> None:
    if future.done():
        return
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)


async def on_event(writer: ReportWriter, envelope: Envelope, record: ConsumerRecord) -> None:
    """The consumer loop's handler: decode, then let the writer batch it."""
    observation = observation_of(envelope)
    if observation is not None:
        await writer.apply(observation)
