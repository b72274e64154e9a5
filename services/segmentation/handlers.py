"""Segmentation use cases: apply what other services announced to the read model, and
answer questions about segments and about one contact (export).

Changes are applied in batches (:class:`ReadModelWriter`): each consumer record waits for the
batch that carries it, and a batch commits in one transaction. Contact events are applied by
version and shop events once per event id (claimed in ``processed_events`` in the same
transaction), so a redelivered or replayed event (at-least-once Kafka, a replaying outbox
relay, a rebuild) changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg

from services.common import clock
from services.common.errors import FieldViolation, InvalidArgument
from services.common.ids import is_uuid
from services.segmentation.adapters import postgres as db
from services.segmentation.adapters.postgres import CONSUMER, Applied, Pending
from services.segmentation.adapters.rule_sql import load_facts
from services.segmentation.domain.builtins import BUILT_IN
from services.segmentation.domain.readmodel import ReadModelChange

log = logging.getLogger(__name__)

__all__ = [
    "CONSUMER",
    "AfterApply",
    "Applied",
    "ReadModelWriter",
    "apply_changes",
    "export_contact",
]

# Called in the batch's transaction once its changes are applied, with what changed (e.g. to
# re-evaluate the memberships of the changed contacts atomically with the change).
AfterApply = Callable[[asyncpg.Connection, Applied, datetime], Awaitable[None]]


async def apply_changes(
    pool: asyncpg.Pool, items: list[Pending], after_apply: AfterApply | None = None
) -> Applied:
    """Apply ``items`` in order in one transaction, then ``after_apply`` in the same one (if
    it fails, nothing of the batch is kept); for each item, whether it changed anything."""
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        applied = await db.apply(conn, items, now)
        if after_apply is not None and (applied.changed or applied.removed):
            await after_apply(conn, applied, now)
        return applied


class ReadModelWriter:
    """Gathers the changes of concurrently handled records into batches.

    No timer: a change that arrives while no batch is being written goes at once (alone, on
    a quiet topic); changes that arrive meanwhile wait for it and go together, up to
    ``max_batch``. A second batch (up to ``max_flushes``) starts while one is being written
    only once it is full, so that under load batches stay large instead of a full one
    running beside a trickle of single changes (measured: with two free slots, 111 of 131
    batches held one change). So batches grow with the load and a lone event is not
    delayed. The consumer loop hands one record per key at a time, so a batch holds at most
    one record per contact; :func:`db.rounds` keeps the order should it hold more.

    A batch that fails is applied again one change per transaction, so that a record the
    database refuses fails alone (and is retried or dead-lettered by the consumer loop)
    while the others of its batch are applied.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 1000,
        max_flushes: int = 2,
        after_apply: AfterApply | None = None,
    ) -> None:
        self._pool = pool
        self._after_apply = after_apply
        self._max_batch = max_batch
        self._max_flushes = max_flushes
        self._queue: deque[tuple[Pending, asyncio.Future[bool]]] = deque()
        self._flushing = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # batches committed (for tests and the benchmark)

    async def apply(self, workspace_id: str, event_id: str, change: ReadModelChange) -> bool:
        """Apply one change; True when it changed the read model (False: seen before)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((Pending(workspace_id, event_id, change), future))
        self._start_flushes()
        return await future

    def _start_flushes(self) -> None:
        while self._queue and (
            self._flushing == 0
            or (self._flushing < self._max_flushes and len(self._queue) >= self._max_batch)
        ):
            batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
            self._flushing += 1
            task = asyncio.create_task(self._flush(batch), name="segmentation-batch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[Pending, asyncio.Future[bool]]]) -> None:
        try:
            try:
                results = await apply_changes(
                    self._pool, [item for item, _ in batch], self._after_apply
                )
                self.batches += 1
                for (_, future), result in zip(batch, results, strict=True):
                    _settle(future, result)
            except Exception as err:
                if len(batch) == 1:
                    _settle(batch[0][1], err)
                    return
                log.warning(
                    "a batch of %d changes failed (%r); applying them one by one", len(batch), err
                )
                for item, future in batch:
                    try:
                        _settle(
                            future, (await apply_changes(self._pool, [item], self._after_apply))[0]
                        )
                        self.batches += 1
                    except Exception as one:
                        _settle(future, one)
        finally:
            self._flushing -= 1
            self._start_flushes()


def _settle(future: asyncio.Future[bool], outcome: bool | Exception) -> None:
    if future.done():  # its record was abandoned (the consumer stopped or was revoked)
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


async def export_contact(pool: asyncpg.Pool, workspace_id: str, contact_id: str) -> dict[str, Any]:
    """Everything the read model holds about one contact, as JSON values: the profile, the
    orders, the activity (page views, searches, opens, clicks), the built-in segments it is
    in now. Empty when it holds nothing."""
    if not is_uuid(contact_id):
        raise InvalidArgument(FieldViolation("contact_id", "must be a contact id (a UUID)"))
    async with pool.acquire() as conn:
        profile = await db.profile_of(conn, workspace_id, contact_id)
        orders = await db.orders_of(conn, workspace_id, contact_id)
        activity = await db.activity_of(conn, workspace_id, contact_id)
        facts = await load_facts(conn, workspace_id, contact_id)
    if profile is None and not orders and not activity:
        return {}
    now = clock.now()
    return {
        "profile": _profile_json(profile) if profile else None,
        "orders": [
            {
                "order_id": o["order_id"],
                "placed_at": _iso(o["placed_at"]),
                "total_minor": o["total_minor"],
                "currency": o["currency"],
                "status": o["status"],
                "categories": list(o["categories"]),
                "cart_id": o["cart_id"],
            }
            for o in orders
        ],
        "activity": [
            {"kind": a["kind"], "subject": a["subject"], "at": _iso(a["at"])} for a in activity
        ],
        # Memberships are evaluated, not stored (the package docstring): these are now's.
        "memberships": [s.id for s in BUILT_IN if facts is not None and s.contains(facts, now)],
        "evaluated_at": now.isoformat(),
    }


def _profile_json(p: asyncpg.Record) -> dict[str, Any]:
    return {
        "contact_id": str(p["contact_id"]),
        "email": p["email"],
        "first_name": p["first_name"],
        "last_name": p["last_name"],
        "vip": p["vip"],
        "tags": list(p["tags"]),
        "attributes": json.loads(p["attributes"]),
        "signed_up_at": _iso(p["signed_up_at"]),
        "score": p["score"],
        "consents": json.loads(p["consents"]),
        "suppressed": p["suppressed"],
        "suppression_reason": p["suppression_reason"],
        "orders_count": p["orders_count"],
        "first_order_at": _iso(p["first_order_at"]),
        "last_order_at": _iso(p["last_order_at"]),
        "spent": json.loads(p["spent"]),
        "last_visit_at": _iso(p["last_visit_at"]),
        "last_open_at": _iso(p["last_open_at"]),
        "last_click_at": _iso(p["last_click_at"]),
        "cart": json.loads(p["cart"]) if p["cart"] is not None else None,
        "version": p["version"],
        "created_at": _iso(p["created_at"]),
        "updated_at": _iso(p["updated_at"]),
    }


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None
