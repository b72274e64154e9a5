"""Fixtures of the trigger engine's tests: a movable clock shared by every process, the
engine running in-process on real PostgreSQL and Kafka, and a producer of the events it
reads (tests/integration/triggers/support.py says how to drive it)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, time, timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common import clock
from services.common.db import migrate
from services.common.topics import (
    CONTACTS_EVENTS,
    SEGMENT_MEMBERSHIP,
    SHOP_EVENTS,
    TOPICS,
    TRACKING_EVENTS,
)
from services.triggers import handlers
from services.triggers.bootstrap import MIGRATIONS
from tests.integration.conftest import RunningService, run_in_process
from tests.integration.triggers.support import EventProducer, MovableClock
from tests.support import free_port, unique


@pytest.fixture(scope="module")
def engine_clock(
    infra: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MovableClock]:
    """The clock of every component, in this process and in child processes started while
    the fixture lives (``NUDGE_CLOCK_FILE``)."""
    path = tmp_path_factory.mktemp("clock") / "offset"
    movable = MovableClock(path)
    saved_env = os.environ.get("NUDGE_CLOCK_FILE")
    os.environ["NUDGE_CLOCK_FILE"] = str(path)
    clock.set_clock(clock.FileOffsetClock(path))
    try:
        yield movable
    finally:
        clock.set_clock(clock.SystemClock())
        if saved_env is None:
            os.environ.pop("NUDGE_CLOCK_FILE", None)
        else:
            os.environ["NUDGE_CLOCK_FILE"] = saved_env


async def start_group_at_end(bootstrap_servers: str, group: str) -> None:
    """Commit, for the new consumer group ``group``, the current end of every topic the
    engine reads: it starts with this module's events, not with the whole session's history
    (thousands of records other tests published, which it would otherwise work through
    before the first event of this module, at its own rate, past a test's deadline)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in (SHOP_EVENTS, CONTACTS_EVENTS, SEGMENT_MEMBERSHIP, TRACKING_EVENTS)
            for p in range(TOPICS[topic])
        ]
        consumer.assign(partitions)
        await consumer.commit(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


@pytest.fixture(scope="module")
async def triggers_engine(
    engine_clock: MovableClock, tmp_path_factory: pytest.TempPathFactory, infra: dict[str, str]
) -> AsyncIterator[RunningService]:
    """``services.triggers`` in-process, with a consumer group of its own that starts at
    the topics' current end."""
    from services.triggers.bootstrap import serve
    from services.triggers.config import Settings

    port = free_port()
    app_id = unique("triggers-test")
    await start_group_at_end(infra["KAFKA_BOOTSTRAP_SERVERS"], app_id)
    settings = Settings(
        grpc_port=port,
        app_id=app_id,
        data_dir=str(tmp_path_factory.mktemp("faust")),
        live_workflows_ttl_s=0.5,
    )
    async with run_in_process(serve, settings, port) as running:
        yield running


@pytest.fixture
async def producer(infra: dict[str, str]) -> AsyncIterator[EventProducer]:
    events = EventProducer(infra["KAFKA_BOOTSTRAP_SERVERS"])
    await events.start()
    try:
        yield events
    finally:
        await events.stop()


class Logged:
    """The statements of the pool's one connection, in order."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, record: Any) -> None:
        self.queries.append(record.query)

    def since(self, mark: int) -> list[str]:
        return self.queries[mark:]


@pytest.fixture
def noon() -> Iterator[None]:
    """Today's noon UTC, tomorrow's once it has passed, as every component's clock (the
    engine in-process: marketing mail waits for its send window at night)."""
    now = datetime.now(UTC)
    today = datetime.combine(now.date(), time(12), tzinfo=UTC)
    clock.set_clock(clock.FrozenClock(today if today > now else today + timedelta(days=1)))
    try:
        yield
    finally:
        clock.set_clock(clock.SystemClock())


@pytest.fixture
async def logged_pool(infra: dict[str, str]) -> AsyncIterator[tuple[asyncpg.Pool, Logged]]:
    await migrate(infra["DATABASE_URL"], handlers.SCHEMA, MIGRATIONS)
    logged = Logged()

    async def log_queries(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(logged)

    pool = await asyncpg.create_pool(
        infra["DATABASE_URL"],
        min_size=1,
        max_size=1,
        init=log_queries,
        server_settings={"search_path": handlers.SCHEMA},
    )
    assert pool is not None
    try:
        yield pool, logged
    finally:
        await pool.close()


@pytest.fixture
async def triggers_db(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    """The engine's schema, migrated, and a pool on it (for tests that play the runtime's
    part with its own functions, no worker running)."""
    await migrate(infra["DATABASE_URL"], handlers.SCHEMA, MIGRATIONS)
    pool = await asyncpg.create_pool(
        infra["DATABASE_URL"], server_settings={"search_path": handlers.SCHEMA}
    )
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()
