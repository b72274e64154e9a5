"""CountEligible over a large workspace: how long the set-based count takes.

    DATABASE_URL=postgresql://... python bench/consent_count_eligible.py --contacts 100000

Builds a throw-away schema (``bench_consent``) with the contacts migrations, one workspace of
N contacts (a third granted marketing, a tenth withdrawn, a twentieth pending, 1% of the
addresses suppressed), then times the count of the whole workspace and of a tag filter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from pathlib import Path

from nudge.contacts.v1 import contacts_pb2

from services.common.db import create_pool, migrate
from services.contacts import consent

SCHEMA = "bench_consent"
MIGRATIONS = Path(__file__).resolve().parents[1] / "services" / "contacts" / "migrations"


async def main(contacts: int, runs: int) -> None:
    url = os.environ["DATABASE_URL"]
    pool = await create_pool(url, SCHEMA, max_size=2)
    async with pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    await migrate(url, SCHEMA, MIGRATIONS)
    ws = uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO workspaces (id, name, slug, consent_required_for_campaigns)"
            " VALUES ($1, 'Bench', $2, true)",
            ws,
            f"bench-{ws.hex[:8]}",
        )
        await conn.execute(
            "INSERT INTO contacts (workspace_id, id, email, tags, created_at, updated_at)"
            " SELECT $1, gen_random_uuid(), 'c' || n || '@example.com',"
            "  CASE WHEN n % 2 = 0 THEN ARRAY['even'] ELSE ARRAY[]::text[] END, now(), now()"
            " FROM generate_series(1, $2) AS n",
            ws,
            contacts,
        )
        await conn.execute(
            "INSERT INTO consents (workspace_id, contact_id, purpose, status, updated_at)"
            " SELECT workspace_id, id, 1,"
            "  CASE WHEN n % 10 = 0 THEN 2 WHEN n % 20 = 1 THEN 3 ELSE 1 END, now()"
            " FROM (SELECT workspace_id, id, row_number() OVER () AS n FROM contacts) c"
            " WHERE n % 3 = 0 OR n % 10 = 0 OR n % 20 = 1",
        )
        await conn.execute(
            "INSERT INTO suppressions (workspace_id, address_hash, address, reason, created_at)"
            " SELECT w.id, address_hash(w.suppression_key, c.email), lower(c.email), 5, now()"
            " FROM contacts c JOIN workspaces w ON w.id = c.workspace_id"
            " WHERE c.email LIKE 'c%00@example.com'",
        )
        await conn.execute("ANALYZE")
    for name, audience in (
        ("whole workspace", contacts_pb2.ContactFilter()),
        ("tag filter", contacts_pb2.ContactFilter(tags_all=["even"])),
    ):
        request = contacts_pb2.CountEligibleRequest(
            purpose=contacts_pb2.CONSENT_PURPOSE_MARKETING, filter=audience
        )
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            answer = await consent.count_eligible(pool, str(ws), request)
            timings.append(time.perf_counter() - started)
        reasons = {i.reason: i.count for i in answer.ineligible}
        print(
            f"{name}: total={answer.total} eligible={answer.eligible} {reasons}"
            f" best={min(timings) * 1000:.0f} ms median={sorted(timings)[runs // 2] * 1000:.0f} ms"
        )
    async with pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.contacts, args.runs))
