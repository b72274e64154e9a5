"""Idempotent consumers: remember which events were handled, in the handler's transaction.

The claims are pruned past :data:`HORIZON` (:func:`prune_forever`), which is longer than the
topics' retention: a redelivery or replay inside it is still a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import asyncpg

from services.common import clock

log = logging.getLogger(__name__)


async def claim_event(conn: asyncpg.Connection, consumer: str, event_id: str) -> bool:
    """True the first time ``consumer`` sees ``event_id``; call inside the handler's transaction,
    so that the record and the change it guards commit or roll back together."""
    row = await conn.fetchval(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        consumer,
        event_id,
    )
    return row is not None


# How long idempotency claims are kept. It must exceed the retention of every topic a claim
# guards (Kafka's default, 7 days: deploy/local and docker-compose set no other), so that
# any record Kafka can still redeliver finds its claim; and the shop platform's retries of
# an ingested event (contacts' ``ingested_events``) come within hours, not weeks.
HORIZON = timedelta(days=30)
PRUNE_EVERY_S = 3600.0
_PRUNABLE = {
    "processed_events": "processed_at",
    "ingested_events": "created_at",
    "transactional_keys": "created_at",  # delivery's SendTransactional keys (delivery/pruning.py)
    "tag_changes": "created_at",  # contacts' ModifyTags keys (the trigger engine's relay)
}


async def prune_claims(
    pool: asyncpg.Pool, table: str, before: datetime, *, batch: int = 10_000
) -> int:
    """Delete the claims of ``table`` (``processed_events`` or ``ingested_events``) older
    than ``before``, in short transactions of ``batch`` rows; returns how many."""
    column = _PRUNABLE[table]
    total = 0
    while True:
        status = await pool.execute(
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
            f"SELECT ctid FROM {table} WHERE {column} < $1 LIMIT $2))",
            before,
            batch,
        )
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < batch:
            return total


async def prune_once(
    pool: asyncpg.Pool, horizons: Mapping[str, timedelta], now: datetime
) -> dict[str, int]:
    """Delete the rows of each table older than its horizon before ``now``; how many went,
    by table. A table that fails is logged and left for the next round."""
    deleted: dict[str, int] = {}
    for table, horizon in horizons.items():
        before = now - horizon
        try:
            deleted[table] = await prune_claims(pool, table, before)
        except Exception:
            log.exception("pruning %s failed; trying again later", table)
            continue
        if deleted[table]:
            log.info("pruned %s rows of %s older than %s", deleted[table], table, before)
    return deleted


async def prune_forever(
    pool: asyncpg.Pool,
    tables: Sequence[str] = ("processed_events",),
    *,
    horizon: timedelta = HORIZON,
    horizons: Mapping[str, timedelta] | None = None,
    every_s: float = PRUNE_EVERY_S,
) -> None:
    """Prune ``tables`` of the pool's schema past ``horizon`` (or each table of ``horizons``
    past its own) now and every ``every_s``. A replay inside the horizon still finds its
    claim and stays a no-op."""
    kept = dict(horizons) if horizons is not None else dict.fromkeys(tables, horizon)
    while True:
        await prune_once(pool, kept, clock.now())
        await asyncio.sleep(every_s)
