"""Remote API-key checks when their helpers fail, and the consumer loop's poison handling."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.shop.v1 import shop_pb2

from services.common.auth import RemoteApiKeyVerifier
from services.common.config import InternalAuthSettings
from services.common.errors import PermanentError, Unavailable
from services.common.events import new_envelope
from services.common.kafka import KafkaConsumerLoop
from tests.integration.conftest import RunningService, Workspace
from tests.support import eventually, free_port, unique


async def test_keys_are_checked_without_redis(
    contacts_service: RunningService, workspace: Workspace
) -> None:
    token = InternalAuthSettings().internal_token
    dead_redis = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        principal = await RemoteApiKeyVerifier(channel, dead_redis, token).verify(workspace.api_key)
    assert principal.workspace_id == workspace.id


async def test_contacts_away_is_unavailable_not_unknown(infra: dict[str, str]) -> None:
    token = InternalAuthSettings().internal_token
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as channel:
        verifier = RemoteApiKeyVerifier(channel, aioredis.from_url(infra["REDIS_URL"]), token)
        with pytest.raises(Unavailable):
            await verifier.verify("nk_0123456789abcdef_" + "k" * 43)


async def test_a_record_no_retry_can_handle_is_skipped_and_the_rest_flow(
    infra: dict[str, str],
) -> None:
    topic = unique("test.poison")
    admin = AIOKafkaAdminClient(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"])
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    handled: list[str] = []

    async def handler(envelope: Envelope, record: object) -> None:
        if envelope.shop_event.searched.query == "poison":
            raise PermanentError("cannot ever handle this")
        handled.append(envelope.shop_event.searched.query)

    loop = KafkaConsumerLoop(infra["KAFKA_BOOTSTRAP_SERVERS"], unique("g"), [topic], handler)
    await loop.start()
    task = asyncio.create_task(loop.run())
    producer = AIOKafkaProducer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"])
    await producer.start()
    try:
        for query in ("before", "poison", "after"):
            event = shop_pb2.ShopEvent(contact_id="c", searched=shop_pb2.Searched(query=query))
            await producer.send_and_wait(topic, new_envelope("ws", event).SerializeToString())
        await eventually(lambda: handled == ["before", "after"], timeout=30)
        assert loop.skipped == 1
    finally:
        await producer.stop()
        task.cancel()
        await loop.stop()
