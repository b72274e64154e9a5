"""Pruning delivery's idempotency records, which would otherwise grow without end.

- ``processed_events``: the claims of delivery's idempotent consumers (the anti-spam guard's
  counts, erasures). Kept :data:`services.common.idempotency.HORIZON` (30 days) like every
  service's: longer than any topic's retention, so a record Kafka can still redeliver finds
  its claim.
- ``transactional_keys``: the idempotency keys of ``SendTransactional``. A caller retries a
  call that failed or timed out within minutes or hours (an HTTP client's retries, a job
  queue's redelivery; payment APIs keep such keys for 24 hours). :data:`KEY_HORIZON` keeps
  them 30 days, far beyond any retry, so a retried call answers ``replayed`` with its first
  message id. Past the horizon a very late retry is answered ``replayed = false``, still with
  the same message id (a uuid5 of the workspace and the key), and it is not sent twice: the
  ledger (``messages``, not pruned here) holds that id's claim, so delivery drops the request.

Both are deleted in short batches (:func:`services.common.idempotency.prune_claims`), now and
every hour, by the task delivery's bootstrap spawns
(:func:`services.common.idempotency.prune_forever` with :data:`HORIZONS`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from services.common import idempotency
from services.common.idempotency import HORIZON

# How long SendTransactional's idempotency keys are kept (see the module's docstring).
KEY_HORIZON = timedelta(days=30)
# Each table with how long its rows are kept.
HORIZONS = {"processed_events": HORIZON, "transactional_keys": KEY_HORIZON}


async def prune_once(pool: asyncpg.Pool, now: datetime) -> dict[str, int]:
    """One round over delivery's tables (what the hourly task does): rows deleted, by table."""
    return await idempotency.prune_once(pool, HORIZONS, now)
