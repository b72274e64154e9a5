"""Group commit of delivery's claims and final outcomes: concurrent lanes share transactions.

Each mail used to take two transactions of its own: the claim (an INSERT, the MessageQueued
outbox row, a commit that waits for the disk) before the SMTP hand-off, and the outcome (an
UPDATE, the MessageSent outbox row, another commit) after it: four to six round trips and
two WAL flushes per mail, and 64 lanes queueing for 20 pooled connections. Here a lane
queues its claim (or outcome) and waits; the group is written by one statement per table
(``unnest`` arrays) in ONE transaction, and every lane gets its own answer.

Nothing waits on a timer (the pattern of services/contacts/ingestion.py): a write starts at
once while fewer than ``max_in_flight`` groups are being written; meanwhile newer items
gather for the next group. A lone mail is written as before; a busy service writes large
groups.

Guarantees, unchanged from the one-by-one writes:

- A claim is answered per message: new, reclaimed (a QUEUED row given back by a pause) or
  already claimed (``None``: never sent twice). Two requests for one message in one group:
  the first is written, the second answered "already claimed", as if they had come one
  after the other. A claim group that fails on a dependency outage fails every caller with
  that error (nothing was sent yet: the consumer retries each record, as before).
- An outcome, after the hand-off, is retried in place until PostgreSQL takes it: a group
  that fails on an outage is retried as a group with backoff; its event ids are
  deterministic, so a retry never publishes twice.
- A bug in one row (a value PostgreSQL refuses) must not lose the others: on any other
  error the group falls back to one transaction per item, and only the faulty item's caller
  gets the error (for an outcome: the row stays CLAIMED and the sweeper reports it UNKNOWN).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import asyncpg
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import clock
from services.common.consumer import is_dependency_outage
from services.common.errors import Unavailable
from services.common.topics import DELIVERY_EVENTS
from services.delivery.adapters import postgres as db
from services.delivery.domain.ledger import Status

log = logging.getLogger(__name__)

OUTCOME_MAX_BACKOFF_S = 5.0


def is_outage(err: BaseException) -> bool:
    """Delivery's name for :func:`services.common.consumer.is_dependency_outage` (which
    counts a transaction ended on a connection the outage broke)."""
    return is_dependency_outage(err)


Item = TypeVar("Item")
Result = TypeVar("Result")


def _unavailable(err: BaseException) -> Unavailable:
    outage = Unavailable(f"PostgreSQL did not take the claim: {err!r}")
    outage.__cause__ = err
    return outage


@dataclass(frozen=True)
class ClaimItem:
    """A first attempt's claim (the Kafka path: only a QUEUED row may be claimed again)."""

    message_id: str
    workspace_id: str
    contact_id: str
    kind: int
    campaign_id: str
    workflow_id: str
    queued: Envelope  # MessageQueued, published on the first claim only
    pending: bytes | None  # the request, kept in pending_sends on the first claim (resent kinds)
    trace: dict[str, str]  # the caller's trace context, for the outbox row
    origin: db.Origin = field(
        default_factory=db.Origin
    )  # kept on the ledger row, for the story of the mail


@dataclass(frozen=True)
class OutcomeItem:
    """A final outcome (SENT, BOUNCED...) and its event."""

    message_id: str
    status: Status
    detail: str
    drop_pending: bool
    contact_id: str  # the event's key
    event: Envelope
    trace: dict[str, str]


class GroupCommit(Generic[Item, Result]):
    """Queues items and hands them to ``write`` in groups (at most ``max_batch``), with at
    most ``max_in_flight`` groups being written at once. ``write`` answers per item: a
    result, or the exception that item's caller gets."""

    def __init__(
        self,
        write: Callable[[list[Item]], Awaitable[list[Result | BaseException]]],
        *,
        max_batch: int,
        max_in_flight: int,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._starting = False  # a write started that has not taken its group yet
        self._tasks: set[asyncio.Task[None]] = set()
        self.groups = 0  # groups written (tests, metrics)

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._start_write()
        return await future

    def _start_write(self) -> None:
        # The new write takes its group when it starts (the loop's next turn), so that the
        # lanes that queued meanwhile (all of a gather) go in the same group.
        if self._queue and not self._starting and self._in_flight < self._max_in_flight:
            self._starting = True
            self._in_flight += 1
            task = asyncio.create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        group = self._queue[: self._max_batch]
        del self._queue[: self._max_batch]
        self._starting = False
        self._start_write()  # more than a group waiting, or room for another write
        try:
            if group:
                self.groups += 1
                await self._answer(group)
        finally:
            self._in_flight -= 1
            self._start_write()

    async def _answer(self, group: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            answers = await self._write([item for item, _ in group])
            for (_, future), answer in zip(group, answers, strict=True):
                if future.done():  # the caller went away (cancelled)
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
        except BaseException as err:  # a bug in the writer itself: nobody waits forever
            for _, future in group:
                if not future.done():
                    future.set_exception(err)
            if not isinstance(err, Exception):
                raise


class Writes:
    """Delivery's two group commits over one pool."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 500, max_in_flight: int = 4):
        self._pool = pool
        self.outcome_retries = 0  # outcome writes tried again after an outage (tests, metrics)
        self.claims: GroupCommit[ClaimItem, db.Claim | None] = GroupCommit(
            self._claim_group, max_batch=max_batch, max_in_flight=max_in_flight
        )
        self.outcomes: GroupCommit[OutcomeItem, None] = GroupCommit(
            self._outcome_group, max_batch=max_batch, max_in_flight=max_in_flight
        )

    # -- claims --------------------------------------------------------------------------

    async def _claim_group(self, items: list[ClaimItem]) -> list[db.Claim | BaseException | None]:
        try:
            return list(await self._claim_in_one(items))
        except Exception as err:
            if is_outage(err):
                # Nothing was sent: each caller's record is retried by the consumer loop,
                # which pauses on an outage (Unavailable says so whatever asyncpg raised).
                return [_unavailable(err) for _ in items]
            if len(items) == 1:
                return [err]
            log.warning("a group of %d claims failed (%r): claiming one by one", len(items), err)
        answers: list[db.Claim | BaseException | None] = []
        for item in items:
            try:
                answers.extend(await self._claim_in_one([item]))
            except Exception as err:
                answers.append(err)
        return answers

    async def _claim_in_one(self, items: list[ClaimItem]) -> list[db.Claim | None]:
        firsts: dict[str, ClaimItem] = {}
        for item in items:
            firsts.setdefault(item.message_id, item)
        # In message id order: two groups that share a message (a redelivered record) lock
        # its row in the same order, and wait for each other rather than deadlock.
        unique = sorted(firsts.values(), key=lambda i: i.message_id)
        taken = await db.claim_many(
            self._pool,
            [
                db.ClaimRow(
                    i.message_id,
                    i.workspace_id,
                    i.contact_id,
                    i.kind,
                    i.campaign_id,
                    i.workflow_id,
                    i.queued.SerializeToString(),
                    json.dumps(i.trace),
                    i.pending,
                    i.origin,
                )
                for i in unique
            ],
            DELIVERY_EVENTS,
            clock.now(),
        )
        answers: list[db.Claim | None] = []
        for item in items:
            # A second request for a message in the same group: already claimed by the first.
            first = firsts[item.message_id] is item
            answers.append(taken.get(item.message_id) if first else None)
        return answers

    # -- outcomes ------------------------------------------------------------------------

    async def _outcome_group(self, items: list[OutcomeItem]) -> list[BaseException | None]:
        try:
            await self._outcomes_until_taken(items)
            return [None] * len(items)
        except Exception as err:
            if len(items) == 1:
                return [err]
            log.warning("a group of %d outcomes failed (%r): writing one by one", len(items), err)
        answers: list[BaseException | None] = []
        for item in items:
            try:
                await self._outcomes_until_taken([item])
                answers.append(None)
            except Exception as err:
                log.error("message %s: outcome not recorded: %r", item.message_id, err)
                answers.append(err)
        return answers

    async def _outcomes_until_taken(self, items: Sequence[OutcomeItem]) -> None:
        """Write the group in one transaction, again and again while PostgreSQL is away;
        raises on any other error."""
        delay = 0.1
        while True:
            try:
                await db.record_many(
                    self._pool,
                    [
                        db.OutcomeRow(
                            i.message_id,
                            i.status,
                            i.detail,
                            i.drop_pending,
                            i.contact_id,
                            i.event.SerializeToString(),
                            json.dumps(i.trace),
                        )
                        for i in items
                    ],
                    DELIVERY_EVENTS,
                    clock.now(),
                )
                return
            except Exception as err:
                if not is_outage(err):
                    raise
                log.warning(
                    "%d outcome(s) not recorded (%r); retrying in %.1fs", len(items), err, delay
                )
                await asyncio.sleep(delay)
                self.outcome_retries += 1
                delay = min(delay * 2, OUTCOME_MAX_BACKOFF_S)
