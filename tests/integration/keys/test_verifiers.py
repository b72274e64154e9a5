"""The verifiers themselves, on the real PostgreSQL, Redis and contacts service: two contacts
processes see a revocation at once, a flood of bad keys reaches PostgreSQL (or contacts) a
handful of times, Redis being down costs speed and nothing else, and ``last_used_at``."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from nudge.contacts.v1 import contacts_pb2

from services.common import auth
from services.common.auth import RemoteApiKeyVerifier
from services.common.config import InternalAuthSettings
from services.common.db import create_pool
from services.common.errors import Unauthenticated
from services.contacts.adapters.postgres import SCHEMA
from services.contacts.keys import KeyCheck, LastUsedRecorder, LocalApiKeyVerifier, authenticate
from tests.integration.conftest import RunningService, Workspace
from tests.integration.keys.conftest import Stubs, create_key, shifted_clock
from tests.support import eventually, free_port

FLOOD = 1000


def bad_key() -> str:
    return f"nk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


@pytest.fixture
async def pool(infra: dict[str, str], contacts_service: RunningService) -> AsyncIterator[Any]:
    pool = await create_pool(infra["DATABASE_URL"], SCHEMA, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def redis(infra: dict[str, str]) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(infra["REDIS_URL"])
    yield client
    await client.aclose()


class CountingLookup:
    """:func:`authenticate`, counting the queries it makes."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, pool: asyncpg.Pool, api_key: str) -> KeyCheck:
        self.calls += 1
        return await authenticate(pool, api_key)


class CountingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the calls a channel makes to contacts."""

    def __init__(self) -> None:
        self.calls = 0

    async def intercept_unary_unary(
        self, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        self.calls += 1
        return await continuation(details, request)


async def refused(verify: Callable[[str], Awaitable[object]], api_key: str) -> bool:
    try:
        await verify(api_key)
    except Unauthenticated:
        return True
    return False


async def test_two_contacts_processes_refuse_a_revoked_key_at_once(
    pool: asyncpg.Pool, redis: aioredis.Redis, stubs: Stubs, workspace: Workspace
) -> None:
    one, two = LocalApiKeyVerifier(pool, redis), LocalApiKeyVerifier(pool, redis)
    key = await create_key(stubs, workspace)
    for verifier in (one, two, one, two):  # each now holds the key in its 30 s cache
        assert (await verifier.verify(key.api_key)).workspace_id == workspace.id
    # Revoked by a third process: the contacts service.
    await stubs.workspaces.RevokeApiKey(
        contacts_pb2.RevokeApiKeyRequest(key_id=key.key.key_id), metadata=workspace.metadata
    )
    assert await refused(one.verify, key.api_key)
    assert await refused(two.verify, key.api_key)


async def test_without_redis_contacts_checks_keys_in_postgresql_and_sees_revocations(
    pool: asyncpg.Pool, stubs: Stubs, workspace: Workspace
) -> None:
    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    lookup = CountingLookup()
    verifier = LocalApiKeyVerifier(pool, dead, lookup=lookup)
    key = await create_key(stubs, workspace)
    for _ in range(3):
        assert (await verifier.verify(key.api_key)).workspace_id == workspace.id
    assert lookup.calls == 3  # no Redis: its in-process cache cannot be trusted, so unused
    await stubs.workspaces.RevokeApiKey(
        contacts_pb2.RevokeApiKeyRequest(key_id=key.key.key_id), metadata=workspace.metadata
    )
    assert await refused(verifier.verify, key.api_key)
    await dead.aclose()


async def test_a_flood_of_bad_keys_reaches_postgresql_a_handful_of_times(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    lookup = CountingLookup()
    # A long negative TTL, so a slow machine cannot see the entries expire mid-test.
    verifier = LocalApiKeyVerifier(pool, redis, negative_ttl_s=300, lookup=lookup)
    bad = bad_key()
    results = await asyncio.gather(
        *(refused(verifier.verify, bad) for _ in range(FLOOD))
    )  # all at once: they share one query
    assert all(results)
    for _ in range(FLOOD):  # one after the other: the refusal is remembered
        assert await refused(verifier.verify, bad)
    assert lookup.calls == 1
    several = [bad_key() for _ in range(5)]
    for _ in range(FLOOD // 5):
        for key in several:
            assert await refused(verifier.verify, key)
    assert lookup.calls == 1 + 5


async def test_a_flood_of_bad_keys_asks_contacts_a_handful_of_times_from_any_service(
    contacts_service: RunningService, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "NEGATIVE_TTL_S", 300)  # cannot expire mid-test when slow
    token = InternalAuthSettings().internal_token
    counters = [CountingInterceptor(), CountingInterceptor()]
    bad = bad_key()
    async with (
        grpc.aio.insecure_channel(contacts_service.address, interceptors=[counters[0]]) as first,
        grpc.aio.insecure_channel(contacts_service.address, interceptors=[counters[1]]) as second,
    ):
        one = RemoteApiKeyVerifier(first, redis, token)
        assert all(await asyncio.gather(*(refused(one.verify, bad) for _ in range(FLOOD))))
        for _ in range(FLOOD):
            assert await refused(one.verify, bad)
        # Another service (its own process, the same Redis) knows the refusal already.
        two = RemoteApiKeyVerifier(second, redis, token)
        for _ in range(FLOOD):
            assert await refused(two.verify, bad)
    assert [c.calls for c in counters] == [1, 0]
    ttl = await redis.ttl(f"{auth.REFUSED_PREFIX}{auth.hash_api_key(bad)}")
    assert 0 < ttl <= 300


async def test_a_cached_key_id_with_another_secret_is_refused(
    contacts_service: RunningService, redis: aioredis.Redis, stubs: Stubs, workspace: Workspace
) -> None:
    key = await create_key(stubs, workspace)
    forged = f"nk_{key.key.key_id}_{secrets.token_urlsafe(32)}"
    token = InternalAuthSettings().internal_token
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        verifier = RemoteApiKeyVerifier(channel, redis, token)
        assert (await verifier.verify(key.api_key)).workspace_id == workspace.id
        assert await redis.get(auth.cache_key(key.key.key_id)) is not None  # cached by id
        assert await refused(verifier.verify, forged)
        assert (await verifier.verify(key.api_key)).workspace_id == workspace.id


async def test_last_used_at_is_recorded_off_the_request_path(
    stubs: Stubs, workspace: Workspace
) -> None:
    key = await create_key(stubs, workspace)
    created_listing = await stubs.workspaces.ListApiKeys(
        contacts_pb2.ListApiKeysRequest(), metadata=workspace.metadata
    )
    (fresh,) = [k for k in created_listing.keys if k.key_id == key.key.key_id]
    assert not fresh.HasField("last_used_at")
    md = (("authorization", f"Bearer {key.api_key}"),)

    async def used() -> bool:
        answer = await stubs.workspaces.ListApiKeys(contacts_pb2.ListApiKeysRequest(), metadata=md)
        (mine,) = [k for k in answer.keys if k.key_id == key.key.key_id]
        return mine.HasField("last_used_at")

    await eventually(used, timeout=60, interval=0.5)  # the service flushes every 10 s


async def test_last_used_at_is_written_at_most_once_a_minute(
    pool: asyncpg.Pool, stubs: Stubs, workspace: Workspace
) -> None:
    key = await create_key(stubs, workspace)
    recorder = LastUsedRecorder(pool)

    async def last_used() -> object:
        return await pool.fetchval(
            "SELECT last_used_at FROM api_keys WHERE key_id = $1", key.key.key_id
        )

    with shifted_clock() as now:
        recorder.saw(key.key.key_id)
        await recorder.flush()
        first = await last_used()
        assert first is not None
        now.offset = timedelta(seconds=30)
        recorder.saw(key.key.key_id)
        await recorder.flush()
        assert await last_used() == first
        now.offset = timedelta(seconds=61)
        recorder.saw(key.key.key_id)
        await recorder.flush()
        later = await last_used()
        assert later is not None and later > first  # type: ignore[operator]
