"""A campaign report at scale: how long GetCampaignReport's queries take over N recipients,
and how fast the report's consumer folds events into them.

    .venv/bin/python bench/campaign_report.py --recipients 1000000

Uses ``DATABASE_URL`` when set, else starts a throw-away PostgreSQL (deploy/local). Builds a
schema of its own (``bench_campaign_report``) with the campaigns migrations, one campaign of N
recipients rows with a realistic spread of outcomes (95% delivered, 2% bounced, 30% opened,
8% clicked, a tenth of them by machines, 1% buyers, a 5% hold-out), then times the report
(median of ``--runs``), a page of the call list, and ``--events`` delivery and tracking
events applied in batches of 1,000 (report.apply_observations, as the consumer does).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.campaigns import report, stats
from services.campaigns.audience import message_id
from services.common.db import create_pool, migrate

SCHEMA = "bench_campaign_report"
MIGRATIONS = Path(__file__).resolve().parents[1] / "services" / "campaigns" / "migrations"
T = datetime(2026, 11, 1, tzinfo=UTC)


async def main(url: str, recipients: int, runs: int, events: int) -> None:
    pool = await create_pool(url, SCHEMA, max_size=2)
    async with pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    await migrate(url, SCHEMA, MIGRATIONS)
    ws, campaign = uuid.uuid4(), uuid.uuid4()
    started = time.monotonic()
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO campaigns (workspace_id, id, name, segment_ids, subject, body_text,"
            " status, created_at, updated_at, started_at, holdout_percent)"
            " VALUES ($1, $2, 'Bench', '{vip}', 'Hi', 'Hello', 4, $3, $3, $3, 5)",
            ws,
            campaign,
            T,
        )
        await conn.execute(
            "INSERT INTO recipients (workspace_id, campaign_id, contact_id, message_id, variant,"
            " excluded, requested_at, queued_at, delivered_at, bounced_at,"
            " first_human_open_at, human_opens, first_machine_open_at, machine_opens,"
            " first_human_click_at, human_clicks, last_human_engaged_at)"
            " SELECT $1, $2, gen_random_uuid(), gen_random_uuid(), 0,"
            "  CASE WHEN n % 20 = 0 THEN 'holdout' END,"
            "  CASE WHEN n % 20 <> 0 THEN $3::timestamptz END,"
            "  CASE WHEN n % 20 <> 0 THEN $3 END,"
            "  CASE WHEN n % 20 <> 0 AND n % 50 NOT IN (1, 2) THEN $3 END,"
            "  CASE WHEN n % 20 <> 0 AND n % 50 IN (1, 2) THEN $3 END,"
            "  CASE WHEN n % 10 IN (3, 4, 5) THEN $3 END, (n % 10 IN (3, 4, 5))::int,"
            "  CASE WHEN n % 100 = 7 THEN $3 END, (n % 100 = 7)::int,"
            "  CASE WHEN n % 25 IN (3, 4) THEN $3 END, (n % 25 IN (3, 4))::int,"
            "  CASE WHEN n % 10 IN (3, 4, 5) OR n % 25 IN (3, 4) THEN $3 END"
            " FROM generate_series(1, $4) AS n",
            ws,
            campaign,
            T,
            recipients,
        )
        await conn.execute(
            "INSERT INTO attributions (workspace_id, order_id, campaign_id, contact_id, variant,"
            " holdout, amount_minor, currency, placed_at)"
            " SELECT workspace_id, 'o-' || contact_id, campaign_id, contact_id, 0,"
            "  excluded IS NOT NULL, 4200, 'EUR', $3"
            " FROM recipients WHERE workspace_id = $1 AND campaign_id = $2"
            "  AND (first_human_click_at IS NOT NULL OR excluded IS NOT NULL)"
            "  AND random() < 0.1",
            ws,
            campaign,
            T + timedelta(days=1),
        )
        await conn.execute("VACUUM ANALYZE recipients")
        await conn.execute("VACUUM ANALYZE attributions")
    print(f"seeded {recipients:,} recipients in {time.monotonic() - started:.1f}s")

    timings = []
    for _ in range(runs):
        t0 = time.perf_counter()
        answer = await stats.campaign_report(pool, str(ws), str(campaign), T)
        timings.append(time.perf_counter() - t0)
    print(
        f"GetCampaignReport over {answer.audience:,} rows: median"
        f" {statistics.median(timings) * 1000:.0f} ms (min {min(timings) * 1000:.0f},"
        f" max {max(timings) * 1000:.0f}; {runs} runs)"
    )
    print(
        f"  sent {answer.sent:,} delivered {answer.delivered:,} opened"
        f" {answer.opened.unique_human:,} clicked {answer.clicked.unique_human:,}"
        f" orders {answer.orders.orders:,} holdout {answer.holdout.contacts:,}"
    )
    async with pool.acquire() as conn:
        t0 = time.perf_counter()
        page = await conn.fetch(
            stats._ENGAGED_NON_BUYERS,
            ws,
            campaign,
            uuid.UUID(int=0),
            501,
            report.ATTRIBUTION_WINDOW,
        )
        print(
            f"call list, first page of {len(page) - 1}:"
            f" {(time.perf_counter() - t0) * 1000:.0f} ms (without the contacts call)"
        )
        ids = await conn.fetch(
            "SELECT contact_id FROM recipients WHERE workspace_id = $1 AND campaign_id = $2"
            " AND excluded IS NULL LIMIT $3",
            ws,
            campaign,
            events,
        )
    marks = [
        report.MessageMark(
            str(uuid.uuid4()),
            ws,
            row["contact_id"],
            uuid.UUID(message_id(campaign, row["contact_id"])),
            "open_human",
            T,
        )
        for row in ids
    ]
    # The rows' message ids are random: point them at the marks' deterministic ids.
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE recipients r SET message_id = m.mid FROM unnest($1::uuid[], $2::uuid[])"
            " AS m(contact_id, mid) WHERE r.workspace_id = $3 AND r.campaign_id = $4"
            " AND r.contact_id = m.contact_id",
            [row["contact_id"] for row in ids],
            [m.message_id for m in marks],
            ws,
            campaign,
        )
        await conn.execute("VACUUM ANALYZE recipients")
    t0 = time.perf_counter()
    async with pool.acquire() as conn:
        for start in range(0, len(marks), 1000):
            await report.apply_observations(conn, list(marks[start : start + 1000]))
    elapsed = time.perf_counter() - t0
    print(f"applied {len(marks):,} open events in batches of 1,000: {len(marks) / elapsed:,.0f}/s")
    async with pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    await pool.close()


def run(recipients: int, runs: int, events: int) -> None:
    url = os.environ.get("DATABASE_URL")
    if url:
        asyncio.run(main(url, recipients, runs, events))
        return
    from deploy.local.stack import LocalStack

    with tempfile.TemporaryDirectory() as state:
        stack = LocalStack(
            state_dir=Path(state),
            ports="free",
            fast=True,
            persistent=False,
            parts=("postgres",),
            environ={},
        )
        with stack as env:
            asyncio.run(main(env["DATABASE_URL"], recipients, runs, events))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    run(args.recipients, args.runs, args.events)
