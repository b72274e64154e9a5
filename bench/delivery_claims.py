"""What delivery's group claim costs, with and without the index on the ledger by contact.

    .venv/bin/python bench/delivery_claims.py [--groups N] [--size N] [--rounds N]

Starts PostgreSQL (the local stack on free ports, or ``DATABASE_URL`` when set), applies
delivery's migrations to a scratch schema and times ``claim_many`` (services/delivery/
adapters/postgres.py, the statement the group commit runs for a group of claims) on
``--groups`` groups of ``--size`` new messages, in ``--rounds`` rounds that alternate the
two variants: with ``messages_by_contact`` (migration 0072) and with the index dropped. The
ledger is emptied before each round, so both variants write into tables of the same size.
Reports the median milliseconds per group of each variant over all its groups; the last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _system import postgres_url  # noqa: E402

from services.common.db import create_pool, migrate  # noqa: E402
from services.delivery.adapters.postgres import ClaimRow, claim_many  # noqa: E402

MIGRATIONS = ROOT / "services" / "delivery" / "migrations"
INDEX = (
    "CREATE INDEX messages_by_contact"
    " ON messages (workspace_id, contact_id, claimed_at DESC, message_id DESC)"
)
CONTACTS = 5_000  # a contact has a few messages, as after some campaigns


def group(workspace_id: str, contacts: list[str], size: int, start: int) -> list[ClaimRow]:
    return [
        ClaimRow(
            message_id=str(uuid.uuid4()),
            workspace_id=workspace_id,
            contact_id=contacts[(start + i) % len(contacts)],
            kind=1,
            campaign_id="camp-bench",
            workflow_id="",
            queued=b"x" * 200,
            trace="{}",
            pending=None,
        )
        for i in range(size)
    ]


async def timed_groups(
    pool: asyncpg.Pool, workspace_id: str, contacts: list[str], groups: int, size: int
) -> list[float]:
    took = []
    for g in range(groups):
        rows = group(workspace_id, contacts, size, g * size)
        started = time.perf_counter()
        await claim_many(pool, rows, "bench.queued", datetime.now(UTC))
        took.append((time.perf_counter() - started) * 1000)
    return took


async def measure(database_url: str, groups: int, size: int, rounds: int) -> dict[str, object]:
    schema = f"bench_claims_{uuid.uuid4().hex[:8]}"
    await migrate(database_url, schema, MIGRATIONS)
    pool = await create_pool(database_url, schema)
    workspace_id = str(uuid.uuid4())
    contacts = [str(uuid.uuid4()) for _ in range(CONTACTS)]
    times: dict[str, list[float]] = {"with_index": [], "without_index": []}
    try:
        for r in range(rounds):
            # Alternate which variant goes first: a drift of the machine's load is shared.
            order = (
                ["with_index", "without_index"] if r % 2 == 0 else ["without_index", "with_index"]
            )
            for variant in order:
                await pool.execute("TRUNCATE messages, message_history, outbox, pending_sends")
                await pool.execute("DROP INDEX IF EXISTS messages_by_contact")
                if variant == "with_index":
                    await pool.execute(INDEX)
                await timed_groups(pool, workspace_id, contacts, 2, size)  # warm-up
                times[variant] += await timed_groups(pool, workspace_id, contacts, groups, size)
    finally:
        await pool.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()
    return {
        "group_size": size,
        "groups_per_variant": len(times["with_index"]),
        "with_index_ms": round(statistics.median(times["with_index"]), 2),
        "without_index_ms": round(statistics.median(times["without_index"]), 2),
        "load_average_1m": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    with postgres_url() as url:
        result = asyncio.run(measure(url, args.groups, args.size, args.rounds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
