"""The console's session store and sign-in throttle on the session's real Redis
(services/gateway/sessions.py): what is kept, for how long, and when a session ends. No
waiting: the tests read the keys' TTLs and write sessions whose end has passed."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.common.auth import (
    MARK_SESSIONS_ENDED_SCRIPT,
    manager_removed_key,
    sessions_ended_key,
)
from services.gateway.sessions import LoginThrottle, Session, SessionStore, session_key
from tests.support import unique


@pytest.fixture
async def redis(infra: dict[str, str]) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(os.environ["REDIS_URL"])
    try:
        yield client
    finally:
        await client.aclose()


async def new_session(store: SessionStore) -> tuple[str, Session]:
    return await store.create(
        manager_id=unique("manager"),
        email="ada@example.com",
        role="owner",
        workspace_id=unique("ws"),
        workspace_name="Shop",
        signed_in_us=await store.now_us(),
    )


async def test_redis_keeps_the_hash_of_the_id_for_the_idle_time_renewed_by_each_use(
    redis: aioredis.Redis,
) -> None:
    store = SessionStore(redis, idle_s=600, max_s=3600)
    session_id, session = await new_session(store)
    assert await redis.exists(f"nudge:session:{session_id}") == 0  # never the id itself
    key = session_key(session_id)
    assert 590 <= await redis.ttl(key) <= 600
    await redis.expire(key, 100)  # as if idle for a while
    assert await store.get(session_id) == session
    assert 590 <= await redis.ttl(key) <= 600


async def test_a_session_ends_at_its_maximum_age_whatever_its_use(
    redis: aioredis.Redis,
) -> None:
    store = SessionStore(redis, idle_s=600, max_s=3600)
    session_id, session = await new_session(store)
    ended = Session(**{**session.__dict__, "expires_at": time.time() - 1})
    await redis.set(session_key(session_id), ended.encode(), ex=600)
    assert await store.get(session_id) is None
    assert await redis.exists(session_key(session_id)) == 0
    # Near its end, its key lives only until the end, not a whole idle period.
    near = Session(**{**session.__dict__, "expires_at": time.time() + 30})
    await redis.set(session_key(session_id), near.encode(), ex=600)
    assert await store.get(session_id) is not None
    assert 0 < await redis.ttl(session_key(session_id)) <= 30


async def test_a_removed_managers_session_is_refused_and_deleted(redis: aioredis.Redis) -> None:
    store = SessionStore(redis, idle_s=600, max_s=3600)
    session_id, session = await new_session(store)
    await redis.set(manager_removed_key(session.manager_id), b"1", ex=60)
    assert await store.get(session_id) is None
    assert await redis.exists(session_key(session_id)) == 0


async def test_a_role_change_ends_the_sessions_signed_in_before_it_and_no_later_one(
    redis: aioredis.Redis,
) -> None:
    store = SessionStore(redis, idle_s=600, max_s=3600)
    before_id, before = await new_session(store)
    # As contacts marks a role change (services/contacts/managers.py), on Redis's clock.
    await redis.eval(  # type: ignore[misc]
        MARK_SESSIONS_ENDED_SCRIPT, 1, sessions_ended_key(before.manager_id), 60
    )
    after_id, after = await store.create(
        manager_id=before.manager_id,
        email=before.email,
        role="viewer",
        workspace_id=before.workspace_id,
        workspace_name=before.workspace_name,
        signed_in_us=await store.now_us(),
    )
    assert await store.get(before_id) is None
    assert await redis.exists(session_key(before_id)) == 0
    assert await store.get(after_id) == after


async def test_the_throttle_window_starts_at_the_first_failure_and_a_success_clears_the_email(
    redis: aioredis.Redis,
) -> None:
    throttle = LoginThrottle(redis, max_failures=2, max_failures_per_address=3, window_s=900)
    email, address = f"{unique('ada')}@example.com", unique("addr")
    await throttle.failed(email, address)
    assert await throttle.retry_after(email, address) == 0
    await throttle.failed(email.upper(), address)  # the same e-mail, however written
    assert 890 <= await throttle.retry_after(email, address) <= 900
    await throttle.succeeded(email)
    assert await throttle.retry_after(email, address) == 0  # the address is at 2 of 3
    await throttle.failed(f"{unique('bo')}@example.com", address)
    assert await throttle.retry_after(email, address) > 0
