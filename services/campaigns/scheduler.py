"""The scheduler: moves scheduled campaigns to sending when their time comes.

One query a tick for the due campaigns of every workspace (``starts_at <= now``, indexed),
then each moves in its own workspace through ``transition()`` with the actor
``system:scheduler``: compare and set, so a campaign cancelled meanwhile, or moved by a
second replica of the service, is left alone. It reads the injectable clock, so tests move
time instead of waiting; a tick that fails (PostgreSQL restarting) is logged and retried at
the next one rather than ending the service.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import asyncpg

from services.campaigns.adapters import postgres as db
from services.campaigns.domain.model import Status
from services.common import clock

log = logging.getLogger(__name__)

ACTOR = "system:scheduler"
BATCH = 100
# How often due campaigns are looked for: a scheduled send starts at most this late.
INTERVAL_S = 1.0


async def start_due(pool: asyncpg.Pool, now: datetime) -> int:
    """Moves every campaign due at ``now`` to sending; how many it moved."""
    moved = 0
    while True:
        async with pool.acquire() as conn:
            due = await db.due_campaigns(conn, now, BATCH)
            for workspace_id, campaign_id in due:
                before = await db.transition(
                    conn,
                    workspace_id,
                    campaign_id,
                    (Status.SCHEDULED,),
                    Status.SENDING,
                    ACTOR,
                    "its time came",
                    now,
                )
                if before is not None:
                    moved += 1
                    log.info("campaign %s of %s started by its schedule", campaign_id, workspace_id)
        if len(due) < BATCH:
            return moved


async def run_forever(pool: asyncpg.Pool, interval_s: float) -> None:
    """Ticks every ``interval_s`` until cancelled."""
    while True:
        try:
            await start_due(pool, clock.now())
        except (asyncpg.PostgresError, OSError):
            log.exception("the scheduler's tick failed; trying again at the next one")
        await asyncio.sleep(interval_s)
