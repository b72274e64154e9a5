"""The outbox relay across a PostgreSQL restart under load, on a PostgreSQL of this test's
own (stopped and started again by its pid), with the session's Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from nudge.events.v1.envelope_pb2 import Envelope

from deploy.local.postgres import remove_home, start_postgres
from deploy.local.procs import ProcessRegistry, pick_free_ports
from services.common.db import create_pool, migrate
from services.common.kafka import KafkaPublisher, supports_idempotence
from services.common.outbox import OutboxRelay, add_to_outbox
from tests.integration.common.outbox_helpers import event, new_topic, read_until
from tests.support import eventually

SCHEMA = "outbox_restart"


class OwnPostgres:
    def __init__(self, tmp: Path) -> None:
        self.registry = ProcessRegistry()
        self.port = pick_free_ports(["postgres"])["postgres"]
        self.tmp = tmp
        self.url = ""

    async def start(self) -> None:
        env = await start_postgres(
            self.registry,
            data_dir=self.tmp / "postgres",
            port=self.port,
            log_dir=self.tmp / "logs",
            fast=True,
        )
        self.url = env["DATABASE_URL"]

    async def stop(self) -> None:
        for child in self.registry.children:
            await asyncio.to_thread(self.registry.stop, child)


@pytest.fixture
async def own_postgres() -> AsyncIterator[OwnPostgres]:
    # Not under pytest's tmp_path: PostgreSQL runs as another user when we are root, and
    # needs a short path for its socket (like the stack's own temporary data).
    tmp = Path(tempfile.mkdtemp(prefix="nudge-outbox-pg-"))
    pg = OwnPostgres(tmp)
    try:
        await pg.start()
        yield pg
    finally:
        await asyncio.to_thread(pg.registry.stop_all)
        remove_home(tmp / "postgres")  # as root, the cluster lives under /var/lib/nudge-pg
        shutil.rmtree(tmp, ignore_errors=True)


class Writer:
    """Commits small transactions of events as fast as it can, through restarts; knows which
    commits succeeded (must arrive) and which failed without knowing (may arrive)."""

    def __init__(self, pool: asyncpg.Pool, topic: str) -> None:
        self.pool, self.topic = pool, topic
        self.committed: list[tuple[str, Envelope]] = []
        self.uncertain: list[tuple[str, Envelope]] = []
        self.failures = 0
        self.stopping = False

    async def run(self) -> None:
        i = 0
        while not self.stopping:
            batch = [(f"k{n % 3}", event(n, contact=f"k{n % 3}")) for n in range(i, i + 5)]
            i += 5
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    for key, env in batch:
                        await add_to_outbox(conn, SCHEMA, self.topic, key, env)
            except Exception:
                self.failures += 1
                self.uncertain += batch
                await asyncio.sleep(0.05)  # the database is restarting: try again shortly
            else:
                self.committed += batch


async def test_a_postgres_restart_under_load_loses_nothing_and_wake_ups_come_back(
    own_postgres: OwnPostgres, infra: dict[str, str]
) -> None:
    """PostgreSQL restarts while a writer commits events and the relay (polling only every
    120 s) publishes them. Every committed event reaches Kafka, in each key's order; the
    relay listens again on a new connection, so a commit after the restart wakes it at once."""
    await migrate(own_postgres.url, SCHEMA, None)
    pool = await create_pool(own_postgres.url, SCHEMA)
    bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
    topic = await new_topic(bootstrap, 2)
    publisher = KafkaPublisher(
        bootstrap, "restart", idempotent=supports_idempotence(infra["NUDGE_KAFKA_KIND"])
    )
    await publisher.start()
    relay = OutboxRelay(pool, SCHEMA, publisher, poll_s=120)
    writer = Writer(pool, topic)
    tasks = [asyncio.create_task(relay.run()), asyncio.create_task(writer.run())]
    try:
        await eventually(lambda: relay.published >= 200, timeout=60)
        await own_postgres.stop()
        await eventually(lambda: writer.failures > 0)  # the writer saw the database gone
        await own_postgres.start()
        restarted_at = len(writer.committed)
        await eventually(lambda: len(writer.committed) >= restarted_at + 200, timeout=60)
        writer.stopping = True
        await tasks[1]

        found = await read_until(bootstrap, topic, {e.event_id for _, e in writer.committed})
        first: dict[str, list[str]] = {}
        seen: set[str] = set()
        for key, event_id in found:
            if event_id not in seen:
                seen.add(event_id)
                first.setdefault(key, []).append(event_id)
        everything = [*writer.committed, *writer.uncertain]
        everything.sort(key=lambda pair: int(pair[1].shop_event.searched.query.split(":")[0]))
        expected: dict[str, list[str]] = {}
        for key, env in everything:
            if env.event_id in seen:
                expected.setdefault(key, []).append(env.event_id)
        assert first == expected  # each key in commit order, nothing committed lost
        assert relay.connects >= 2  # it listened again after the restart

        await eventually(lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"), timeout=30)
        await eventually(lambda: relay.waiting)
        published = relay.published
        started = time.monotonic()
        async with pool.acquire() as conn, conn.transaction():
            await add_to_outbox(conn, SCHEMA, topic, "k0", event(-1))
        await eventually(lambda: relay.published > published, timeout=30)
        assert time.monotonic() - started < 60  # woken by NOTIFY, not the 120 s poll

        # Restarted again while the relay idles: it notices the lost connection by itself
        # (nothing to publish would tell it) and listens again.
        connects = relay.connects
        await own_postgres.stop()
        await own_postgres.start()
        await eventually(lambda: relay.connects > connects and relay.waiting, timeout=60)
        published = relay.published
        async with pool.acquire() as conn, conn.transaction():
            await add_to_outbox(conn, SCHEMA, topic, "k0", event(-2))
        await eventually(lambda: relay.published > published, timeout=30)
    finally:
        writer.stopping = True
        for t in tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(publisher.stop(), 10)
        await pool.close()
