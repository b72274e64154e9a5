"""The agents' batching (services/triggers/app.py ``_consume``): one contact's events in
order, different contacts at once, and nothing acknowledged before its batch is handled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from services.triggers import app
from services.triggers.config import Settings


@dataclass
class Message:
    key: bytes | None
    partition: int = 0


@dataclass
class Event:
    message: Message
    n: int


class FakeStream:
    def __init__(self, batches: list[list[Event]]) -> None:
        self.batches = batches
        self.acked: list[int] = []

    async def noack_take(self, max_: int, within: float) -> AsyncIterator[list[Event]]:
        for batch in self.batches:
            yield batch

    async def ack(self, event: Event) -> bool:
        self.acked.append(event.n)
        return True


async def test_one_contacts_events_stay_in_order_while_contacts_run_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handled: list[tuple[bytes | None, int]] = []
    running = 0
    most = 0
    acked_when_handled: list[int] = []
    stream = FakeStream(
        [
            [Event(Message(key), n) for n, key in enumerate([b"a", b"b", b"a", b"c", b"b", b"a"])],
            [Event(Message(b"a"), 6), Event(Message(None, partition=2), 7)],
        ]
    )

    b_started = asyncio.Event()

    async def handle(pool: Any, engine: Any, topic: str, event: Event) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        acked_when_handled.append(len(stream.acked))
        if event.message.key == b"b":
            b_started.set()
        if event.n == 0:
            # Contact a's first event holds until contact b's lane runs: only lanes side by
            # side let it go on, and a's later events must still wait behind it.
            await asyncio.wait_for(b_started.wait(), timeout=5)
        handled.append((event.message.key, event.n))
        running -= 1

    monkeypatch.setattr(app, "_handle", handle)
    settings = Settings(concurrency=4)
    await app._consume(stream, None, None, "shop.events.v1", settings)  # type: ignore[arg-type]

    order_of_a = [n for key, n in handled if key == b"a"]
    assert order_of_a == [0, 2, 5, 6]
    assert [n for key, n in handled if key == b"b"] == [1, 4]
    assert most > 1  # contacts at once
    assert sorted(stream.acked) == list(range(8))
    # The first batch's events were handled before any ack; the second's after the first's.
    assert acked_when_handled[:6] == [0] * 6
    assert set(acked_when_handled[6:]) == {6}


async def test_concurrency_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    running = 0
    most = 0

    full = asyncio.Event()

    async def handle(pool: Any, engine: Any, topic: str, event: Event) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running == 3:
            full.set()
        # Every handler holds until three run at once: without the bound all fifty would
        # have started by then.
        await asyncio.wait_for(full.wait(), timeout=5)
        running -= 1

    monkeypatch.setattr(app, "_handle", handle)
    stream = FakeStream([[Event(Message(str(n).encode()), n) for n in range(50)]])
    await app._consume(stream, None, None, "t", Settings(concurrency=3))  # type: ignore[arg-type]
    assert most == 3
    assert len(stream.acked) == 50
