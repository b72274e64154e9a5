"""How fast the audience stream reads a large segment on the real services: segmentation
streams the members, contacts answers eligibility, campaigns' PostgreSQL the frequency cap.

Prints the rate (run with ``-s``); asserts only what the stream yields, never a time, so a
loaded machine cannot fail it. Full size: NUDGE_AUDIENCE_CONTACTS=100000 (make test-slow
style); the default keeps the ordinary suite quick."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from nudge.contacts.v1 import contacts_pb2

from deploy.local.supervisor import free_service_ports, service_env
from services.campaigns import audience
from services.campaigns.adapters.segmentation import SegmentCatalogue
from services.campaigns.ports import Ports
from services.common.grpc_client import channel as open_channel
from tests.integration.campaigns.test_audience_preview import (
    audience_service,
    db,
    delivery_for_campaigns,
    ports,
)
from tests.integration.conftest import Workspace, wait_grpc_serving

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
    # Statistics as autovacuum would have them after such a load: without them PostgreSQL
    # plans contacts' batch lookup as a scan of the whole workspace per batch.
    await db.execute("ANALYZE contacts.contacts")
    await db.execute("ANALYZE segmentation.profiles")


def large_spec(workspace_id: str) -> audience.AudienceSpec:
    return audience.AudienceSpec(
        workspace_id=workspace_id,
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


async def measure(ports: Ports, spec: audience.AudienceSpec, batch_size: int, label: str) -> None:
    """Reads the whole stream, checks it, prints the rate."""
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
        f"audience stream ({label}): {count} contacts in {elapsed:.2f}s"
        f" = {count / elapsed:,.0f}/s (batch_size {batch_size})"
    )
    assert count == CONTACTS
    # Everyone may be mailed (no consent required) but the hold-out, about 10 %.
    assert 0.8 * CONTACTS < eligible < 0.98 * CONTACTS


@pytest.mark.slow
async def test_the_stream_reads_a_large_segment_once_in_order(
    ports: Ports, workspace: Workspace, db: asyncpg.Connection
) -> None:
    """Every service in this one process (and event loop): contacts' and segmentation's work
    is counted in the same CPU as the stream's."""
    await seed(db, workspace.id, CONTACTS)
    spec = large_spec(workspace.id)
    for batch_size in (1000, 5000):
        await measure(ports, spec, batch_size, "one process")


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("NUDGE_AUDIENCE_PROCESSES"),
    reason="a measurement: NUDGE_AUDIENCE_PROCESSES=1 starts contacts and segmentation apart",
)
async def test_the_stream_rate_with_contacts_and_segmentation_in_their_own_processes(
    ports: Ports, workspace: Workspace, db: asyncpg.Connection, infra: dict[str, str]
) -> None:
    """As deployed: contacts and segmentation each in its own process (python -m
    services.<name>), the stream in this one, as the campaigns service runs it."""
    await seed(db, workspace.id, CONTACTS)
    env = service_env(
        infra,
        free_service_ports(),
        base={**os.environ, "NUDGE_INTERNAL_TOKEN": ports.settings.internal_token},
    )
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"services.{name}",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for name in ("contacts", "segmentation")
    ]
    try:
        for address in (env["NUDGE_CONTACTS_ADDR"], env["NUDGE_SEGMENTATION_ADDR"]):
            await wait_grpc_serving(address, timeout=120)
        contacts = open_channel(env["NUDGE_CONTACTS_ADDR"])
        segmentation = open_channel(env["NUDGE_SEGMENTATION_ADDR"])
        apart = Ports(
            settings=ports.settings,
            pool=ports.pool,
            contacts=contacts,
            segmentation=segmentation,
            delivery=ports.delivery,
            segments=SegmentCatalogue(segmentation, ports.settings.internal_token),
        )
        spec = large_spec(workspace.id)
        for batch_size in (1000, 5000):
            await measure(apart, spec, batch_size, "services apart")
        await contacts.close()
        await segmentation.close()
    finally:
        for child in children:
            child.terminate()
        for child in children:
            await asyncio.wait_for(child.wait(), timeout=30)
