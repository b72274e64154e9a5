"""The agents' batching (services/triggers/app.py ``_consume``): rounds of different
contacts that keep one contact's events in order, a round's chunks at once, nothing
acknowledged before its batch is handled, and a failed round handled again event by event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from nudge.events.v1.envelope_pb2 import Envelope

from services.triggers import app, handlers
from services.triggers.config import Settings


@dataclass
class Message:
    key: bytes | None
    partition: int = 0
    offset: int = 0


@dataclass
class Event:
    message: Message
    n: int


@dataclass
class RecordEvent:
    message: Message
    value: bytes
    headers: dict[str, bytes] | None = None


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


async def test_rounds_keep_each_contacts_order_and_hold_different_contacts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rounds: list[list[tuple[bytes | None, int]]] = []
    running = 0
    most = 0
    acked_when_handled: list[int] = []
    stream = FakeStream(
        [
            [Event(Message(key), n) for n, key in enumerate([b"a", b"b", b"a", b"c", b"b", b"a"])],
            [Event(Message(b"a"), 6), Event(Message(None, partition=2), 7)],
        ]
    )
    two_running = asyncio.Event()

    async def handle_round(pool: Any, engine: Any, topic: str, events: list[Event]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        acked_when_handled.append(len(stream.acked))
        if running == 2:
            two_running.set()
        if events[0].n == 0:
            # The first chunk holds until another of its round runs beside it.
            await asyncio.wait_for(two_running.wait(), timeout=5)
        rounds.append([(e.message.key, e.n) for e in events])
        running -= 1

    monkeypatch.setattr(app, "_handle_round", handle_round)
    await app._consume(stream, None, None, "shop.events.v1", Settings(concurrency=4, round_min=1))  # type: ignore[arg-type]

    handled = [e for chunk in rounds for e in chunk]
    assert [n for key, n in handled if key == b"a"] == [0, 2, 5, 6]
    assert [n for key, n in handled if key == b"b"] == [1, 4]
    # The rounds: a, b and c's first events; a and b's second; a's third. A round's events
    # (in chunks of one here) all end before the next round's begin.
    assert [sorted(n for _, n in chunk) for chunk in rounds[:3]] in (
        [[0], [1], [3]],
        [[1], [3], [0]],
        [[1], [0], [3]],
        [[3], [1], [0]],
        [[0], [3], [1]],
        [[3], [0], [1]],
    )
    assert sorted(n for chunk in rounds[3:5] for _, n in chunk) == [2, 4]
    assert [n for _, n in rounds[5]] == [5]
    assert most > 1  # a round's chunks at once
    assert sorted(stream.acked) == list(range(8))
    # The first batch's events were handled before any ack; the second's after the first's.
    assert acked_when_handled[:6] == [0] * 6
    assert set(acked_when_handled[6:]) == {6}


async def test_a_round_is_cut_in_chunks_of_round_min_up_to_concurrency_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes: list[int] = []
    running = 0
    most = 0

    async def handle_round(pool: Any, engine: Any, topic: str, events: list[Event]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0)
        sizes.append(len(events))
        running -= 1

    monkeypatch.setattr(app, "_handle_round", handle_round)
    stream = FakeStream([[Event(Message(str(n).encode()), n) for n in range(50)]])
    await app._consume(stream, None, None, "t", Settings(concurrency=4, round_min=20))  # type: ignore[arg-type]
    assert sorted(sizes) == [10, 20, 20]  # at least round_min each
    stream = FakeStream([[Event(Message(str(n).encode()), n) for n in range(50)]])
    sizes.clear()
    await app._consume(stream, None, None, "t", Settings(concurrency=3, round_min=1))  # type: ignore[arg-type]
    assert sorted(sizes) == [16, 17, 17]  # no more than `concurrency` transactions
    assert most == 3


async def test_a_failed_round_is_handled_again_one_event_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rounds: list[int] = []
    one_by_one: list[str] = []

    async def failing(pool: Any, engine: Any, envelopes: list[Envelope], traces: Any) -> None:
        rounds.append(len(envelopes))
        raise RuntimeError("deadlock detected")

    async def handle(pool: Any, engine: Any, topic: str, event: Any, envelope: Envelope) -> None:
        one_by_one.append(envelope.event_id)

    monkeypatch.setattr(handlers, "on_events", failing)
    monkeypatch.setattr(app, "_handle", handle)
    events = [
        RecordEvent(Message(b"a"), Envelope(event_id="e1").SerializeToString()),
        RecordEvent(Message(b"b"), b"\xff not an envelope"),
        RecordEvent(Message(b"c"), Envelope(event_id="e3").SerializeToString()),
    ]
    await app._handle_round(None, None, "t", events)  # type: ignore[arg-type]
    assert rounds == [2]  # the undecodable record is skipped
    assert one_by_one == ["e1", "e3"]
