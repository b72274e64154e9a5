"""Killing the trigger engine mid-stream loses and repeats nothing.

A worker process (``python -m services.triggers``) is SIGKILLed while events are flowing AND
timers are falling due, both blocked inside their transactions; a new worker in the same
consumer group takes over. Every run must then have taken each of its steps exactly once,
and each of its mails must be on delivery.requests.v1 under the one deterministic message id
of its step (copies of a record are allowed, the at-least-once outbox relay may send one
twice; another id for the same step, or a missing one, is not).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.triggers.support import (
    EventProducer,
    MovableClock,
    cart,
    delivery_requests,
    publish,
)
from tests.integration.triggers.workers import (
    TableLock,
    Worker,
    blocked_on,
    count,
    duplicates_differ,
    expected_message_ids,
    new_workspace,
    runs_of,
    steps_by_run,
)
from tests.support import eventually, unique

# Two transactional mails an hour apart: transactional, so that neither the send window
# nor the frequency cap (both about marketing) changes what is sent when.
TWO_MAILS: dict[str, Any] = {
    "name": "Two mails an hour apart",
    "trigger": {"event": "cart_updated"},
    "entry": {"concurrency": "unlimited"},
    "steps": [
        {
            "id": "first",
            "type": "send",
            "message": {"kind": "transactional", "subject": "First", "body_text": "one"},
        },
        {"id": "pause", "type": "wait", "duration": "PT1H"},
        {
            "id": "second",
            "type": "send",
            "message": {"kind": "transactional", "subject": "Second", "body_text": "two"},
        },
    ],
}
SENDS = ["first", "second"]
STEPS = ["first#0:done", "pause#0:done", "second#0:done"]


@pytest.fixture
async def worker(
    engine_clock: MovableClock, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    base = tmp_path_factory.mktemp("kill")
    process = Worker(base / "worker.log", unique("triggers-kill"), base / "faust")
    process.start()
    try:
        await process.ready()
        yield process
    finally:
        process.stop()


async def report_carts(producer: EventProducer, workspace_id: str, contacts: list[str]) -> None:
    for contact_id in contacts:
        await producer.shop(
            workspace_id, contact_id, cart(unique("cart"), ("p1", "Blue mug", 1, 1200))
        )


def runs_in_state(database_url: str, workspace_id: str, n: int, state: str) -> Any:
    async def probe() -> bool:
        runs = await runs_of(database_url, workspace_id)
        return sum(1 for r in runs if r["state"] == state) == n

    return probe


async def check_each_step_once(
    database_url: str, bootstrap: str, workspace_id: str, n_runs: int
) -> None:
    """The shared verdict of the kill and scale-out tests."""
    runs = await runs_of(database_url, workspace_id)
    assert len(runs) == n_runs
    assert {r["end_reason"] for r in runs} == {"completed"}
    assert len({r["contact_id"] for r in runs}) == n_runs  # one run per trigger event
    steps = await steps_by_run(database_url, workspace_id)
    wrong = {run: taken for run, taken in steps.items() if taken != STEPS}
    assert wrong == {}
    expected = expected_message_ids(workspace_id, runs, SENDS)

    async def all_requested() -> bool:
        requests = await delivery_requests(bootstrap, workspace_id)
        return {r.message_id for r in requests} >= set(expected)

    await eventually(all_requested, timeout=60, interval=0.5)
    requests = await delivery_requests(bootstrap, workspace_id)
    assert {r.message_id for r in requests} == set(expected)  # none missing, none made up
    assert duplicates_differ(requests) == []


async def test_killing_a_worker_mid_stream_and_mid_timers_loses_and_repeats_nothing(
    worker: Worker,
    engine_clock: MovableClock,
    producer: EventProducer,
    infra: dict[str, str],
) -> None:
    database_url, bootstrap = infra["DATABASE_URL"], infra["KAFKA_BOOTSTRAP_SERVERS"]
    workspace_id = new_workspace()
    await publish(database_url, workspace_id, TWO_MAILS)
    early = [str(uuid.uuid4()) for _ in range(30)]
    late = [str(uuid.uuid4()) for _ in range(30)]

    # The first events are handled: their runs sent the first mail and sleep for an hour.
    await report_carts(producer, workspace_id, early)
    await eventually(
        runs_in_state(database_url, workspace_id, len(early), "waiting"), timeout=90, interval=0.2
    )

    lock = await TableLock.take(database_url, "triggers.run_steps")
    try:
        # More events flow in, and the hour passes: the first runs' timers are due.
        await report_carts(producer, workspace_id, late)
        engine_clock.advance(hours=2)
        await eventually(
            functools.partial(blocked_on, database_url, "triggers.run_steps"), timeout=60
        )
        # Mid-stream: part of the events handled, none of the due timers fired.
        runs = await runs_of(database_url, workspace_id)
        assert len(runs) == len(early) < len(early) + len(late)
        assert {r["state"] for r in runs} == {"waiting"}
        due = await count(
            database_url,
            "SELECT count(*) FROM triggers.timers WHERE workspace_id = $1::uuid AND due_at <= $2",
            workspace_id,
            engine_clock.now(),
        )
        assert due == len(early)
        worker.kill()
    finally:
        await lock.release()

    worker.start()
    await worker.ready()
    total = len(early) + len(late)

    async def all_started() -> bool:
        runs = await runs_of(database_url, workspace_id)
        return len(runs) == total

    await eventually(all_started, timeout=120, interval=0.2)
    # The late runs started after the clock moved: their hour is still ahead.
    engine_clock.advance(hours=2)
    await eventually(
        runs_in_state(database_url, workspace_id, total, "completed"), timeout=120, interval=0.2
    )
    await check_each_step_once(database_url, bootstrap, workspace_id, total)
