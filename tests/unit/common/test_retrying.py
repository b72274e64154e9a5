"""services/common/retrying.py: what a background loop's round waits out, and what ends it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
from asyncpg.exceptions import DeadlockDetectedError

from services.common.retrying import retrying

log = logging.getLogger("test.retrying")


def failing(*errors: BaseException) -> tuple[list[int], Callable[[], Awaitable[int]]]:
    """An attempt that raises ``errors`` one per call, then answers how many calls it took."""
    calls: list[int] = []

    async def attempt() -> int:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return len(calls)

    return calls, attempt


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The sleeps asked for (none is taken)."""
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return asked


async def test_outages_and_rolled_back_transactions_are_tried_again_with_growing_waits(
    caplog: pytest.LogCaptureFixture, waits: list[float]
) -> None:
    caplog.set_level(logging.WARNING, logger="test.retrying")
    _, attempt = failing(
        ConnectionRefusedError("postgres is down"),
        DeadlockDetectedError("deadlock detected"),
        ConnectionResetError("again"),
        ConnectionResetError("and again"),
    )
    assert await retrying(attempt, "test round", log, first_s=0.1, cap_s=0.3) == 5
    assert waits == [0.1, 0.2, 0.3, 0.3]
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 4
    assert logged[1].startswith("test round failed (DeadlockDetectedError(")


async def test_any_other_error_is_raised_at_once(waits: list[float]) -> None:
    calls, attempt = failing(ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        await retrying(attempt, "test round", log)
    assert (len(calls), waits) == (1, [])
