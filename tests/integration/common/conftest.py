"""Fixtures of the outbox tests: a schema of their own, and a publisher to real Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.common.db import create_pool, migrate
from services.common.kafka import KafkaPublisher, supports_idempotence
from tests.support import unique


@pytest.fixture
async def schema(infra: dict[str, str]) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    name = unique("outbox_test").replace("-", "_")
    await migrate(infra["DATABASE_URL"], name, None)
    pool = await create_pool(infra["DATABASE_URL"], name)
    yield pool, name
    await pool.close()


@pytest.fixture
async def publisher(infra: dict[str, str]) -> AsyncIterator[KafkaPublisher]:
    p = KafkaPublisher(
        infra["KAFKA_BOOTSTRAP_SERVERS"],
        "test",
        idempotent=supports_idempotence(infra["NUDGE_KAFKA_KIND"]),
    )
    await p.start()
    yield p
    await p.stop()
