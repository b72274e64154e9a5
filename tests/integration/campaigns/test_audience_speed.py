"""How fast the audience stream reads a large segment on the real services: segmentation
streams the members, contacts answers eligibility, campaigns' PostgreSQL the frequency cap.

Prints the rate (run with ``-s``); asserts only what the stream yields, never a time, so a
loaded machine cannot fail it. Full size: NUDGE_AUDIENCE_CONTACTS=100000 (make test-slow
style); the default keeps the ordinary suite quick."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from nudge.contacts.v1 import contacts_pb2

from services.campaigns import audience
from services.campaigns.ports import Ports
from tests.integration.campaigns.test_audience_preview import (
    audience_service,
    db,
    delivery_for_campaigns,
    ports,
)
from tests.integration.conftest import Workspace

__all__ = ["audience_service", "db", "delivery_for_campaigns", "ports"]

CONTACTS = int(os.environ.get("NUDGE_AUDIENCE_CONTACTS", "20000"))


async def seed(db: asyncpg.Connection, workspace_id: str, n: int) -> None:
    """``n`` contacts in contacts and, as VIPs, in segmentation's read model (written straight
    into both tables: the stream is measured, not the Kafka path that fills the read model)."""
    ws = uuid.UUID(workspace_id)
    async with db.transaction():
        await db.execute(
            "INSERT INTO contacts.contacts (workspace_id, id, email, time_zone, created_at,"
            " updated_at) SELECT $1, gen_random_uuid(), 'speed' || i || '@example.com',"
            " CASE WHEN i % 3 = 0 THEN 'Europe/Rome' ELSE '' END, now(), now()"
            " FROM generate_series(1, $2) AS i",
            ws,
            n,
        )
        await db.execute(
            "INSERT INTO segmentation.profiles (workspace_id, contact_id, email, vip,"
            " created_at, updated_at) SELECT workspace_id, id, email, true, now(), now()"
            " FROM contacts.contacts WHERE workspace_id = $1",
            ws,
        )


@pytest.mark.slow
async def test_the_stream_reads_a_large_segment_once_in_order(
    ports: Ports, workspace: Workspace, db: asyncpg.Connection
) -> None:
    await seed(db, workspace.id, CONTACTS)
    spec = audience.AudienceSpec(
        workspace_id=workspace.id,
        campaign_id=uuid.uuid4(),
        segment_ids=("vip",),
        exclude_segment_ids=(),
        tags_any=(),
        purpose=contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES,
        cap_action=1,
        local_time=False,
        time_zone="UTC",
        scheduled_at=None,
        holdout_percent=10,
        ab=None,
    )
    for batch_size in (1000, 5000):
        started = time.perf_counter()
        count = eligible = 0
        last = ""
        async for batch in audience.stream_recipients(
            ports, spec, phase="all", as_of=datetime.now(UTC), batch_size=batch_size
        ):
            first = str(batch[0].contact_id)
            assert first > last
            last = str(batch[-1].contact_id)
            count += len(batch)
            eligible += sum(r.excluded is None for r in batch)
        elapsed = time.perf_counter() - started
        print(
            f"audience stream: {count} contacts in {elapsed:.2f}s = {count / elapsed:,.0f}/s"
            f" (batch_size {batch_size})"
        )
        assert count == CONTACTS
        # Everyone may be mailed (no consent required) but the hold-out, about 10 %.
        assert 0.8 * CONTACTS < eligible < 0.98 * CONTACTS
