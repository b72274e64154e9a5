"""After the relay took a mail, its outcome is written in place until PostgreSQL takes it
(services/delivery/handlers.py ``_write_outcome``). Pure logic: a fake pool that is away for
a while; the real database is in tests/integration/delivery."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.delivery import handlers


class FlakyPool:
    """Refuses connections ``outage`` times (an outage), then hands out a connection."""

    def __init__(self, outage: int) -> None:
        self.outage = outage
        self.acquired = 0

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        self.acquired += 1
        if self.acquired <= self.outage:
            raise ConnectionRefusedError("PostgreSQL is restarting")
        yield Conn()


class Conn:
    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield


def deps(pool: FlakyPool) -> handlers.Deps:
    return handlers.Deps(
        pool=pool,  # type: ignore[arg-type]
        eligibility=None,  # type: ignore[arg-type]
        smtp=None,  # type: ignore[arg-type]
        from_address="no-reply@example.com",
        tracking_url="http://t",
        link_secret="s",
    )


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = asyncio.sleep

    async def sleep(_: float) -> None:
        await real_sleep(0)  # no waiting, but a retry loop stays cancellable

    monkeypatch.setattr(handlers.asyncio, "sleep", sleep)


async def test_an_outcome_is_written_once_postgres_is_back() -> None:
    pool = FlakyPool(outage=7)
    written: list[object] = []

    async def write(conn: object) -> None:
        written.append(conn)

    await handlers._write_outcome(deps(pool), "m-1", write)
    assert len(written) == 1 and pool.acquired == 8


async def test_a_write_that_fails_by_itself_is_not_retried_forever() -> None:
    pool = FlakyPool(outage=0)
    calls = 0

    async def write(conn: object) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        await asyncio.wait_for(handlers._write_outcome(deps(pool), "m-1", write), timeout=5)
    assert calls == 1
