"""The group commit's queueing (services/delivery/writes.py ``GroupCommit``): pure logic with
a fake write; the SQL and the outage handling run on PostgreSQL in
tests/integration/delivery/test_group_commit.py."""

from __future__ import annotations

import asyncio

import pytest

from services.delivery.writes import GroupCommit
from tests.support import eventually


class Recorder:
    """A write that records its groups; ``gate`` holds every write until set."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.writing = 0
        self.most_at_once = 0

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.groups.append(list(items))
        self.writing += 1
        self.most_at_once = max(self.most_at_once, self.writing)
        try:
            await self.gate.wait()
        finally:
            self.writing -= 1
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def test_lanes_that_ask_together_share_one_write() -> None:
    write = Recorder()
    commit: GroupCommit[int, int] = GroupCommit(write, max_batch=500, max_in_flight=4)
    answers = await asyncio.gather(*(commit.submit(i) for i in range(100)))
    assert answers == [i * 10 for i in range(100)]  # each caller its own answer
    assert write.groups == [list(range(100))]


async def test_a_lone_item_is_written_at_once() -> None:
    write = Recorder()
    commit: GroupCommit[int, int] = GroupCommit(write, max_batch=500, max_in_flight=4)
    assert await asyncio.wait_for(commit.submit(7), timeout=5) == 70
    assert write.groups == [[7]]


async def test_items_gather_while_the_writes_in_flight_are_busy() -> None:
    write = Recorder()
    write.gate.clear()
    commit: GroupCommit[int, int] = GroupCommit(write, max_batch=3, max_in_flight=2)
    lanes = [asyncio.create_task(commit.submit(i)) for i in range(10)]
    await eventually(lambda: len(write.groups) == 2)  # both writes started, held by the gate
    assert write.groups == [[0, 1, 2], [3, 4, 5]]  # at most max_batch, max_in_flight at once
    write.gate.set()
    assert await asyncio.gather(*lanes) == [i * 10 for i in range(10)]
    assert sorted(i for g in write.groups for i in g) == list(range(10))
    assert all(len(g) <= 3 for g in write.groups) and write.most_at_once == 2


async def test_an_item_that_fails_fails_only_its_own_caller() -> None:
    commit: GroupCommit[int, int] = GroupCommit(Recorder(), max_batch=500, max_in_flight=4)
    answers = await asyncio.gather(*(commit.submit(i) for i in (1, -2, 3)), return_exceptions=True)
    assert answers[0] == 10 and answers[2] == 30
    assert isinstance(answers[1], ValueError)


async def test_a_broken_writer_fails_every_caller_rather_than_hanging() -> None:
    async def broken(items: list[int]) -> list[int | BaseException]:
        raise RuntimeError("a bug in the writer")

    commit: GroupCommit[int, int] = GroupCommit(broken, max_batch=500, max_in_flight=4)
    for lane in asyncio.as_completed([commit.submit(i) for i in range(3)], timeout=5):
        with pytest.raises(RuntimeError):
            await lane
    assert await asyncio.wait_for(
        GroupCommit(Recorder(), max_batch=5, max_in_flight=1).submit(1), timeout=5
    )


async def test_a_caller_that_went_away_does_not_stop_the_others() -> None:
    write = Recorder()
    write.gate.clear()
    commit: GroupCommit[int, int] = GroupCommit(write, max_batch=500, max_in_flight=1)
    lanes = [asyncio.create_task(commit.submit(i)) for i in range(3)]
    await eventually(lambda: write.groups)
    lanes[1].cancel()
    write.gate.set()
    assert await lanes[0] == 0 and await lanes[2] == 20
    with pytest.raises(asyncio.CancelledError):
        await lanes[1]
    assert await asyncio.wait_for(commit.submit(5), timeout=5) == 50  # still writing


async def test_lanes_asking_about_a_suspension_at_once_share_one_query(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The guard's refusal lookup (services/delivery/guard.py): when its cache runs out, the
    lanes that ask at that moment share one query rather than each sending its own."""
    import asyncpg

    from services.delivery import guard
    from services.delivery.adapters import guard_store

    queries = 0
    answer = asyncio.Event()

    async def active_suspension(db: object, workspace_id: str) -> None:
        nonlocal queries
        queries += 1
        await answer.wait()

    class Pool(asyncpg.Pool):  # type: ignore[misc]
        def __init__(self) -> None:  # a stand-in: the lookup is replaced above
            pass

    monkeypatch.setattr(guard_store, "active_suspension", active_suspension)
    guard._cache.clear()
    guard._lookups.clear()
    workspace = "8b669f4c-a833-4653-8b38-11a59bf0cd21"
    lanes = [asyncio.create_task(guard.refusal(Pool(), workspace)) for _ in range(64)]
    await eventually(lambda: queries >= 1)
    answer.set()
    assert await asyncio.gather(*lanes) == [None] * 64
    assert queries == 1
    assert await guard.refusal(Pool(), workspace) is None and queries == 1  # cached now
    guard._cache.clear()
