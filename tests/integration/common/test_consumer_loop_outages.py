"""The consumer loop through outages of its dependencies, each a real process of its own that
the test stops mid-stream and starts again on the same port and data: PostgreSQL (the
handler's database) and the Kafka broker itself. An outage pauses consumption; nothing is
dead-lettered, skipped or lost, and consumption resumes by itself.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import TopicPartition
from nudge.events.v1.envelope_pb2 import Envelope

from deploy.local import paths
from deploy.local.kafka import detect_java_major, has_maven, start_apache_kafka
from deploy.local.postgres import remove_home, start_postgres
from deploy.local.procs import ProcessRegistry, pick_free_ports
from deploy.local.topics import ensure_topics
from services.common.kafka import KafkaConsumerLoop
from tests.integration.common.test_consumer_loop import (
    committed,
    new_topic,
    payload,
    produce,
    read_all,
    running,
    text_of,
)
from tests.support import eventually, unique


@pytest.fixture
def registry(short_tmp: Path) -> Iterator[ProcessRegistry]:
    """The test's own processes, stopped at the end whatever happened; then, as root, the
    home its PostgreSQL had under /var/lib/nudge-pg goes too (before ``short_tmp`` does)."""
    own = ProcessRegistry()
    try:
        yield own
    finally:
        own.stop_all()
        remove_home(short_tmp / "pg")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short path: PostgreSQL's unix socket path must fit in 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="nudge-outage-") as tmp:
        yield Path(tmp)


async def test_a_database_outage_pauses_consumption_and_nothing_is_dead_lettered(
    infra: dict[str, str], registry: ProcessRegistry, short_tmp: Path
) -> None:
    bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
    port = pick_free_ports(["postgres"])["postgres"]
    pg = {"data_dir": short_tmp / "pg", "port": port, "log_dir": short_tmp / "logs"}
    database_url = (await start_postgres(registry, fast=True, **pg))["DATABASE_URL"]  # type: ignore[arg-type]
    setup = await asyncpg.connect(database_url)
    await setup.execute("CREATE TABLE seen (n int PRIMARY KEY)")
    await setup.close()
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4)
    topic = await new_topic(bootstrap, 2)
    dead_letters = await new_topic(bootstrap, 1, "test.dlq")
    group = unique("g")
    total, before = 30, 10
    database_down = asyncio.Event()

    async def records_in_database(envelope: Envelope, record: Any) -> None:
        n = int(text_of(envelope))
        if n >= before:
            await database_down.wait()
        await pool.execute("INSERT INTO seen VALUES ($1) ON CONFLICT DO NOTHING", n)

    async def rows() -> set[int]:
        return {r["n"] for r in await pool.fetch("SELECT n FROM seen")}

    await produce(bootstrap, topic, ((f"k{n % 7}".encode(), payload(str(n))) for n in range(total)))
    loop = KafkaConsumerLoop(
        bootstrap,
        group,
        [topic],
        records_in_database,
        max_attempts=2,
        retry_backoff_s=0.05,
        max_backoff_s=0.5,
        dead_letter_topic=dead_letters,
    )
    try:
        async with running(loop) as task:

            async def first_records_stored() -> bool:
                return await rows() == set(range(before))

            await eventually(first_records_stored, timeout=60)
            await eventually(lambda: loop.in_flight == total - before, timeout=30)
            await asyncio.to_thread(registry.stop_all)  # 20 of 30 still to store
            database_down.set()
            await eventually(lambda: loop.outage_retries >= 6 and loop.paused, timeout=60)
            assert loop.handled == before, "a record was handled without its database"
            assert loop.dead_lettered == 0 and loop.retries == 0
            assert not task.done()

            await start_postgres(registry, fast=True, **pg)  # type: ignore[arg-type]

            async def all_stored() -> bool:
                try:
                    return await rows() == set(range(total))
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    return False

            await eventually(all_stored, timeout=90)

            async def all_committed() -> bool:
                return sum((await committed(bootstrap, group)).values()) == total

            await eventually(all_committed, timeout=30)
            assert not loop.paused
    finally:
        await pool.close()
    assert loop.dead_lettered == 0
    assert await read_all(bootstrap, dead_letters) == []


def apache_kafka_available() -> bool:
    major = detect_java_major()
    return major is not None and major >= 17 and has_maven()


@pytest.mark.skipif(not apache_kafka_available(), reason="needs Java 17+ and Maven")
async def test_a_broker_restart_loses_no_record(registry: ProcessRegistry, short_tmp: Path) -> None:
    ports = pick_free_ports(["kafka", "controller"])
    broker = {
        "cache_dir": paths.cache_dir(),
        "data_dir": short_tmp / "kafka",
        "port": ports["kafka"],
        "controller_port": ports["controller"],
        "log_dir": short_tmp / "logs",
    }
    bootstrap = (await start_apache_kafka(registry, **broker))["KAFKA_BOOTSTRAP_SERVERS"]  # type: ignore[arg-type]
    topic, dead_letters = unique("test.restart"), unique("test.dlq")
    await ensure_topics(bootstrap, {topic: 2, dead_letters: 1})
    group = unique("g")
    first, second, before = 40, 10, 20
    broker_down = asyncio.Event()
    handled: list[int] = []

    async def waits_for_the_outage(envelope: Envelope, record: Any) -> None:
        n = int(text_of(envelope))
        if before <= n < first:
            await broker_down.wait()
        handled.append(n)

    await produce(bootstrap, topic, ((f"k{n % 5}".encode(), payload(str(n))) for n in range(first)))
    loop = KafkaConsumerLoop(
        bootstrap,
        group,
        [topic],
        waits_for_the_outage,
        max_attempts=2,
        retry_backoff_s=0.05,
        max_backoff_s=0.5,
        dead_letter_topic=dead_letters,
    )
    async with running(loop) as task:
        await eventually(lambda: set(handled) == set(range(before)), timeout=60)
        await eventually(lambda: loop.in_flight == first - before, timeout=30)
        await asyncio.to_thread(registry.stop_all)  # 20 of 40 in flight
        assert set(handled) == set(range(before))
        broker_down.set()
        await eventually(lambda: set(handled) == set(range(first)), timeout=30)
        assert not task.done()

        await start_apache_kafka(registry, **broker)  # type: ignore[arg-type]
        await produce(
            bootstrap,
            topic,
            ((f"k{n % 5}".encode(), payload(str(n))) for n in range(first, first + second)),
        )
        await eventually(lambda: set(handled) == set(range(first + second)), timeout=120)

        async def all_committed() -> bool:
            offsets = await committed(bootstrap, group)
            return sum(offsets.get(TopicPartition(topic, p), 0) for p in (0, 1)) == (first + second)

        await eventually(all_committed, timeout=60)
        assert not task.done()
    assert loop.dead_lettered == 0
    assert await read_all(bootstrap, dead_letters) == []
