"""How fast the membership sweeper works through a day's worth of time-based transitions.

    .venv/bin/python bench/segments_sweep.py [--contacts N] [--sweepers K] [--batch B]

Issue 13: "the time-based sweep keeps up with a day's worth of transitions in under a
minute". Seeds N profiles (default 100,000) in one workspace whose last order falls between
90 and 89 days before a simulated day D (order counts 1-6, first orders up to a year
earlier, 10 % VIP), so that every one of them changes segments by time alone during D
(lost / passive, or loyal / passive_loyal, at 90 days). The profile columns are written
directly (the fast path of the rule SQL reads no orders for them).

A baseline first: every profile due at D, swept at D (the memberships as of D, and each
profile's real next transition time). Then the clock moves to D + 1 day and K sweepers
(default 1, each its own connection, ``FOR UPDATE SKIP LOCKED`` sharing the work) sweep
until nothing is due: the time of that is the figure, with the transitions published (the
outbox rows written; no Kafka here, the relay's cost is the outbox benchmark's).

Starts PostgreSQL alone (the local stack on free ports, or ``DATABASE_URL``). The last line
is one JSON object with the figures. :func:`sweep_day` is the measurement, for
``bench/segments.py`` to call with its own database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _system import postgres_url  # noqa: E402

DAY_START = datetime(2026, 6, 1, tzinfo=UTC)

_SEED = """
INSERT INTO profiles (workspace_id, contact_id, email, vip, orders_count, first_order_at,
                      last_order_at, spent, signed_up_at, created_at, updated_at,
                      next_transition_at)
SELECT $1, gen_random_uuid(), 'c' || n || '@example.com', random() < 0.1, s.orders,
       s.last_at - (CASE WHEN s.orders > 1 THEN random() * interval '270 days'
                         ELSE interval '0' END),
       s.last_at,
       jsonb_build_object('EUR', jsonb_build_object('total_minor', s.orders * 4990,
                                                    'orders', s.orders)),
       s.last_at - interval '400 days', $2::timestamptz, $2::timestamptz, $2::timestamptz
FROM generate_series(1, $3) AS n,
     LATERAL (SELECT 1 + floor(random() * 6)::int AS orders,
                     $2::timestamptz - interval '90 days' + random() * interval '1 day'
                     + n * interval '0' AS last_at) s  -- n: drawn again for each row
"""


async def sweep_day(
    database_url: str, contacts: int, *, sweepers: int = 1, batch: int = 1000
) -> dict[str, Any]:
    """Seed, baseline, then time the sweep of one simulated day (see the module docstring)."""
    from services.common import clock
    from services.common.db import create_pool, migrate
    from services.segmentation.bootstrap import MIGRATIONS
    from services.segmentation.sweeper import Sweeper

    schema = f"sweep_bench_{uuid.uuid4().hex[:8]}"
    await migrate(database_url, schema, MIGRATIONS)
    pool = await create_pool(database_url, schema, max_size=sweepers + 2)
    frozen = clock.FrozenClock(DAY_START)
    clock.set_clock(frozen)
    try:
        ws = uuid.uuid4()
        started = time.perf_counter()
        await pool.execute(_SEED, ws, DAY_START, contacts)
        await pool.execute("ANALYZE profiles")
        seeded_s = time.perf_counter() - started

        async def drain() -> tuple[float, int, int]:
            workers = [Sweeper(pool, batch=batch) for _ in range(sweepers)]

            async def work(sweeper: Sweeper) -> None:
                while await sweeper.sweep_once():
                    pass

            began = time.perf_counter()
            await asyncio.gather(*(work(s) for s in workers))
            return (
                time.perf_counter() - began,
                sum(s.swept for s in workers),
                sum(s.published for s in workers),
            )

        baseline_s, _, baseline_events = await drain()
        await pool.execute("TRUNCATE outbox")
        due_in_day = await pool.fetchval(
            "SELECT count(*) FROM profiles WHERE next_transition_at < $1",
            DAY_START + timedelta(days=1),
        )
        frozen.advance(timedelta(days=1))
        sweep_s, swept, published = await drain()
        outbox = await pool.fetchval("SELECT count(*) FROM outbox")
        return {
            "contacts": contacts,
            "sweepers": sweepers,
            "batch": batch,
            "seed_s": round(seeded_s, 2),
            "baseline_s": round(baseline_s, 2),
            "baseline_entered": baseline_events,
            "due_within_the_day": due_in_day,
            "profiles_swept": swept,
            "transitions": published,
            "outbox_rows": outbox,
            "sweep_s": round(sweep_s, 2),
            "profiles_per_s": round(swept / sweep_s) if sweep_s else None,
            "transitions_per_s": round(published / sweep_s) if sweep_s else None,
        }
    finally:
        clock.set_clock(clock.SystemClock())
        await pool.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--sweepers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()

    def run(url: str) -> dict[str, Any]:
        return asyncio.run(sweep_day(url, args.contacts, sweepers=args.sweepers, batch=args.batch))

    with postgres_url() as url:
        figures = run(url)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
