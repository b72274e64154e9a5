"""Two trigger engine workers share the work, and one dying loses and repeats nothing.

Two ``python -m services.triggers`` processes join one Faust app id (one consumer group):
they split the event partitions between them, and both timer loops claim from the one
``timers`` table (``FOR UPDATE SKIP LOCKED``). One is SIGKILLed while both are blocked inside
their transactions (events flowing, timers due); the survivor inherits its partitions after
the group's session timeout and a rebalance (slow on Tansu, ~20 s: DESIGN.md), and every run
still takes each step once, each mail under its one message id.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable

import pytest

from tests.integration.triggers.support import EventProducer, MovableClock, publish
from tests.integration.triggers.test_kill import (
    TWO_MAILS,
    check_each_step_once,
    report_carts,
    runs_in_state,
)
from tests.integration.triggers.workers import (
    TableLock,
    Worker,
    blocked_on,
    group_members,
    new_workspace,
    runs_of,
)
from tests.support import eventually, unique


@pytest.fixture
async def two_workers(
    engine_clock: MovableClock, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Worker, Worker]]:
    base = tmp_path_factory.mktemp("scale")
    app_id = unique("triggers-scale")
    workers = (
        Worker(base / "one.log", app_id, base / "faust-one"),
        Worker(base / "two.log", app_id, base / "faust-two"),
    )
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            await worker.ready()
        yield workers
    finally:
        for worker in workers:
            worker.stop()


async def test_two_workers_share_the_stream_and_the_survivor_of_a_kill_finishes_it_exactly(
    two_workers: tuple[Worker, Worker],
    engine_clock: MovableClock,
    producer: EventProducer,
    infra: dict[str, str],
) -> None:
    database_url, bootstrap = infra["DATABASE_URL"], infra["KAFKA_BOOTSTRAP_SERVERS"]
    doomed, survivor = two_workers
    # Both are members of one group: the partitions are split between them.
    await eventually(
        lambda: _equals(group_members(bootstrap, doomed.app_id), 2), timeout=120, interval=0.5
    )
    workspace_id = new_workspace()
    await publish(database_url, workspace_id, TWO_MAILS)
    # Enough contacts that every partition gets some (murmur2 of random ids).
    early = [str(uuid.uuid4()) for _ in range(40)]
    late = [str(uuid.uuid4()) for _ in range(40)]

    await report_carts(producer, workspace_id, early)
    await eventually(
        runs_in_state(database_url, workspace_id, len(early), "waiting"), timeout=90, interval=0.2
    )

    lock = await TableLock.take(database_url, "triggers.run_steps")
    try:
        await report_carts(producer, workspace_id, late)
        engine_clock.advance(hours=2)
        # Both workers are stuck inside a transaction (each has partitions with late events,
        # and each timer loop claimed some of the due timers).
        await eventually(
            lambda: _at_least(blocked_on(database_url, "triggers.run_steps"), 2), timeout=60
        )
        runs = await runs_of(database_url, workspace_id)
        assert len(runs) == len(early) < len(early) + len(late)
        assert {r["state"] for r in runs} == {"waiting"}
        doomed.kill()
    finally:
        await lock.release()

    total = len(early) + len(late)

    async def all_started() -> bool:
        return len(await runs_of(database_url, workspace_id)) == total

    # The survivor takes the dead worker's partitions over after its session times out.
    await eventually(all_started, timeout=180, interval=0.5)
    engine_clock.advance(hours=2)
    await eventually(
        runs_in_state(database_url, workspace_id, total, "completed"), timeout=120, interval=0.2
    )
    await check_each_step_once(database_url, bootstrap, workspace_id, total)
    assert survivor.process is not None and survivor.process.poll() is None


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _at_least(value: Awaitable[int], expected: int) -> bool:
    return await value >= expected
