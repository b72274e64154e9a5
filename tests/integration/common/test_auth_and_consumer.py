"""Remote API-key checks when their helpers fail, and the consumer loop's poison handling:
dead-lettered at once, not retried, and the partition moves on."""

from __future__ import annotations

import grpc
import pytest
import redis.asyncio as aioredis
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.auth import RemoteApiKeyVerifier
from services.common.config import InternalAuthSettings
from services.common.consumer import DLQ_ATTEMPTS, DLQ_REASON
from services.common.errors import PermanentError, Unavailable
from services.common.kafka import KafkaConsumerLoop
from services.common.topics import DEAD_LETTER
from tests.integration.common.test_consumer_loop import (
    dead_letters_of,
    new_topic,
    payload,
    produce,
    read_all,
    running,
    text_of,
)
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


async def test_a_record_no_retry_can_handle_is_dead_lettered_at_once_and_the_rest_flow(
    infra: dict[str, str],
) -> None:
    bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
    topic = await new_topic(bootstrap, 1, "test.poison")
    group = unique("g")
    poison = payload("poison")
    garbage = b"\xff\xff not an envelope"
    handled: list[str] = []
    calls = 0

    async def handler(envelope: Envelope, record: object) -> None:
        nonlocal calls
        calls += 1
        if text_of(envelope) == "poison":
            raise PermanentError("cannot ever handle this")
        handled.append(text_of(envelope))

    await produce(
        bootstrap,
        topic,
        [(b"c", payload("before")), (b"c", poison), (b"c", garbage), (b"c", payload("after"))],
    )
    # The default dead-letter topic, which ensure_topics created for the session.
    loop = KafkaConsumerLoop(bootstrap, group, [topic], handler)
    async with running(loop):
        await eventually(lambda: handled == ["before", "after"], timeout=30)
    assert calls == 3, "the poison record was retried"
    assert loop.dead_lettered == 2
    letters = dead_letters_of(await read_all(bootstrap, DEAD_LETTER), group)
    assert [(r.value, dict(r.headers)[DLQ_ATTEMPTS]) for r in letters] == [
        (poison, b"1"),
        (garbage, b"1"),
    ]
    reasons = [dict(r.headers)[DLQ_REASON].decode() for r in letters]
    assert reasons[0] == "PermanentError: cannot ever handle this"
    assert reasons[1].startswith("UndecodableRecord: not an envelope")
