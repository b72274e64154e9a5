"""The outbox relay through a broker outage, on an Apache Kafka of this test's own (stopped
and started again by its pid), with the session's PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from deploy.local import paths
from deploy.local.kafka import detect_java_major, start_apache_kafka
from deploy.local.procs import ProcessRegistry, pick_free_ports
from services.common.db import create_pool, migrate
from services.common.kafka import KafkaPublisher
from services.common.outbox import OutboxRelay
from tests.integration.common.outbox_helpers import (
    event,
    expected_by_key,
    first_copies_by_key,
    new_topic,
    queue,
    read_until,
)
from tests.support import eventually, unique


class OwnKafka:
    def __init__(self, tmp: Path) -> None:
        self.registry = ProcessRegistry()
        self.ports = pick_free_ports(["kafka", "kafka_controller"])
        self.tmp = tmp
        self.bootstrap = ""

    async def start(self) -> None:
        env = await start_apache_kafka(
            self.registry,
            cache_dir=paths.cache_dir(),
            data_dir=self.tmp / "kafka",
            port=self.ports["kafka"],
            controller_port=self.ports["kafka_controller"],
            log_dir=self.tmp / "logs",
        )
        self.bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]

    async def stop(self) -> None:
        for child in self.registry.children:
            await asyncio.to_thread(self.registry.stop, child)


@pytest.fixture
async def own_kafka() -> AsyncIterator[OwnKafka]:
    if (detect_java_major() or 0) < 17:
        pytest.skip("needs Java 17+ for an Apache Kafka of the test's own")
    tmp = Path(tempfile.mkdtemp(prefix="nudge-outbox-kafka-"))
    kafka = OwnKafka(tmp)
    try:
        await kafka.start()
        yield kafka
    finally:
        await asyncio.to_thread(kafka.registry.stop_all)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def schema(infra: dict[str, str]) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    name = unique("outbox_test").replace("-", "_")
    await migrate(infra["DATABASE_URL"], name, None)
    pool = await create_pool(infra["DATABASE_URL"], name)
    yield pool, name
    await pool.close()


async def test_rows_wait_out_a_broker_outage_without_an_open_transaction(
    own_kafka: OwnKafka, schema: tuple[asyncpg.Pool, str], infra: dict[str, str]
) -> None:
    """Kafka stops with rows on their way; the relay keeps them, gives up each round after
    its publish timeout without holding a database transaction open (which would hold back
    VACUUM), and publishes everything, in each key's order, once Kafka is back."""
    pool, name = schema
    topic = await new_topic(own_kafka.bootstrap, 2)
    publisher = KafkaPublisher(own_kafka.bootstrap, "outage", idempotent=True)
    await publisher.start()
    relay = OutboxRelay(pool, name, publisher, poll_s=0.5, publish_timeout_s=2)
    task = asyncio.create_task(relay.run())
    probe = await asyncpg.connect(infra["DATABASE_URL"])
    try:
        before = [(f"k{i % 3}", event(i, contact=f"k{i % 3}")) for i in range(30)]
        await queue(pool, name, topic, before)
        await read_until(own_kafka.bootstrap, topic, {e.event_id for _, e in before})

        await own_kafka.stop()
        during = [(f"k{i % 3}", event(i, contact=f"k{i % 3}")) for i in range(30, 130)]
        for start in range(0, len(during), 20):
            await queue(pool, name, topic, during[start : start + 20])

        async def stalled_without_a_transaction() -> bool:
            open_transactions = await probe.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
                f"nudge-{name}",
            )
            assert open_transactions == 0, "the relay holds a transaction open while publishing"
            return relay.failed_rounds >= 2

        await eventually(stalled_without_a_transaction, timeout=60)
        assert await pool.fetchval("SELECT count(*) FROM outbox") == len(during)  # all kept

        await own_kafka.start()
        found = await read_until(own_kafka.bootstrap, topic, {e.event_id for _, e in during})
        assert first_copies_by_key(found) == expected_by_key(before + during)
        await eventually(lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"), timeout=30)
    finally:
        task.cancel()
        await probe.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(publisher.stop(), 10)
