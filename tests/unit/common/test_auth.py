"""The pure parts of API-key checks: the cache entry's format and what it accepts, and
single-flight sharing of concurrent checks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from services.common.auth import (
    CachedKey,
    SingleFlight,
    generate_api_key,
    hash_api_key,
    parse_key_id,
)
from services.common.errors import Unauthenticated

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WS = "9b2f2a4e-3f0c-4c3e-9a51-0a5e1c1f4d10"


def test_a_cache_entry_reads_back_as_written() -> None:
    _, key = generate_api_key()
    for end in (None, NOW + timedelta(hours=24)):
        entry = CachedKey(hash_api_key(key), WS, end)
        assert CachedKey.decode(entry.encode().encode()) == entry


@pytest.mark.parametrize(
    "raw", [b"revoked", b"", b"a b", b"a b c d", b"h ws not-a-time", b"h w 1e999"]
)
def test_a_tombstone_or_garbage_is_no_cache_entry(raw: bytes) -> None:
    assert CachedKey.decode(raw) is None


def test_an_entry_accepts_only_its_own_key_and_only_before_its_end() -> None:
    _, key = generate_api_key()
    _, other = generate_api_key()
    entry = CachedKey(hash_api_key(key), WS, NOW + timedelta(seconds=10))
    assert entry.accepts(hash_api_key(key), NOW)
    assert not entry.accepts(hash_api_key(other), NOW)
    assert not entry.accepts(hash_api_key(key), NOW + timedelta(seconds=10))
    assert CachedKey(hash_api_key(key), WS, None).accepts(
        hash_api_key(key), NOW + timedelta(days=9999)
    )


@pytest.mark.parametrize(
    "key", ["", "nk_", "nk_0123456789abcdef_short", "nk_0123456789ABCDEF_" + "a" * 43, "x" * 10_000]
)
def test_a_malformed_key_is_refused_before_any_lookup(key: str) -> None:
    with pytest.raises(Unauthenticated):
        parse_key_id(key)


async def test_concurrent_calls_share_one_computation_and_its_answer() -> None:
    flights: SingleFlight[str] = SingleFlight()
    calls = 0
    gate = asyncio.Event()

    async def compute() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "answer"

    waiting = [asyncio.ensure_future(flights.run("k", compute)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiting) == ["answer"] * 50
    assert calls == 1
    assert await flights.run("k", compute) == "answer"  # a later call computes again
    assert calls == 2


async def test_a_shared_failure_reaches_every_caller_and_is_not_kept() -> None:
    flights: SingleFlight[str] = SingleFlight()
    gate = asyncio.Event()
    calls = 0

    async def refuse() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise Unauthenticated("unknown API key")

    waiting = [asyncio.ensure_future(flights.run("k", refuse)) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, Unauthenticated) for r in results)
    assert calls == 1
    with pytest.raises(Unauthenticated):
        await flights.run("k", refuse)
    assert calls == 2


async def test_one_caller_giving_up_does_not_cancel_the_others() -> None:
    flights: SingleFlight[str] = SingleFlight()
    gate = asyncio.Event()

    async def compute() -> str:
        await gate.wait()
        return "answer"

    impatient = asyncio.ensure_future(flights.run("k", compute))
    patient = asyncio.ensure_future(flights.run("k", compute))
    await asyncio.sleep(0)
    impatient.cancel()
    gate.set()
    assert await patient == "answer"
    with pytest.raises(asyncio.CancelledError):
        await impatient
