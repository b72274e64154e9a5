"""What the outbox tests share: events, topics, reading back from Kafka, the order check,
and a producer that fails chosen sends (a broker fault at a chosen point of a batch)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.shop.v1 import shop_pb2

from services.common.events import new_envelope
from services.common.outbox import add_to_outbox
from tests.support import unique


def event(i: int, *, pad: int = 0, contact: str | None = None) -> Envelope:
    """A shop event; ``pad`` characters of query make it as large as wanted."""
    return new_envelope(
        "ws",
        shop_pb2.ShopEvent(
            contact_id=contact or f"c{i}",
            searched=shop_pb2.Searched(query=f"{i}:" + "x" * pad),
        ),
    )


async def new_topic(bootstrap: str, partitions: int = 1, **config: str) -> str:
    name = unique("test.outbox")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config)])
    finally:
        await admin.close()
    return name


async def queue(
    pool: asyncpg.Pool, schema: str, topic: str, events: Iterable[tuple[str, Envelope]]
) -> None:
    """Commit ``(key, envelope)`` pairs to the outbox in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        for key, env in events:
            await add_to_outbox(conn, schema, topic, key, env)


async def read_until(
    bootstrap: str, topic: str, wanted: set[str], *, timeout: float = 60
) -> list[tuple[str, str]]:
    """Read ``topic`` from the start until every event id of ``wanted`` was seen; returns
    every (key, event id) read, duplicates included, in partition order."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=unique("reader"), auto_offset_reset="earliest"
    )
    await consumer.start()
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    try:
        async with asyncio.timeout(timeout):
            while not wanted <= seen:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for r in records:
                        event_id = Envelope.FromString(r.value).event_id
                        found.append((r.key.decode(), event_id))
                        seen.add(event_id)
    finally:
        await consumer.stop()
    return found


def first_copies_by_key(found: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Per key, the event ids in the order of their first copy: what a consumer that drops
    duplicates by event id applies."""
    seen: set[str] = set()
    order: dict[str, list[str]] = defaultdict(list)
    for key, event_id in found:
        if event_id not in seen:
            seen.add(event_id)
            order[key].append(event_id)
    return dict(order)


def expected_by_key(sent: list[tuple[str, Envelope]]) -> dict[str, list[str]]:
    order: dict[str, list[str]] = defaultdict(list)
    for key, env in sent:
        order[key].append(env.event_id)
    return dict(order)


class FaultyProducer:
    """Wraps the real AIOKafkaProducer; the first send of a record whose value is in
    ``fail_once`` fails with a broker timeout and is not sent (whole batch, as a broker
    refusing a produce request would), every other send goes to the real broker. Covers
    both ``send`` and the record-batch API."""

    def __init__(self, inner: Any, fail_once: set[bytes]) -> None:
        self._inner = inner
        self._fail_once = set(fail_once)
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _fault(self) -> asyncio.Future[object]:
        self.failed += 1
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_exception(KafkaTimeoutError("injected broker fault"))
        return future

    async def send(self, topic: str, value: bytes, key: bytes | None = None, **kw: Any) -> Any:
        if value in self._fail_once:
            self._fail_once.discard(value)
            return self._fault()
        return await self._inner.send(topic, value, key=key, **kw)

    def create_batch(self) -> _RecordingBatch:
        return _RecordingBatch(self._inner.create_batch())

    async def send_batch(self, batch: _RecordingBatch, topic: str, *, partition: int) -> Any:
        hit = self._fail_once & set(batch.values)
        if hit:
            self._fail_once -= hit
            return self._fault()
        return await self._inner.send_batch(batch.inner, topic, partition=partition)


class _RecordingBatch:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.values: list[bytes] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def append(self, **kw: Any) -> Any:
        metadata = self.inner.append(**kw)
        if metadata is not None:
            self.values.append(kw["value"])
        return metadata
