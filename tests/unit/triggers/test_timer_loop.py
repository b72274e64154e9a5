"""The timer loop's supervision (TimerLoop.run): which failed rounds it waits out and which
end it (and with it the worker, restarted by its supervisor). The rounds are scripted: this
is the loop's control logic alone; the rounds themselves run on PostgreSQL in
tests/integration/triggers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import cast

import asyncpg
import pytest
from asyncpg.exceptions import DeadlockDetectedError, SerializationError

from services.triggers.runtime.runs import Engine
from services.triggers.runtime.timers import TimerLoop


class ScriptedLoop(TimerLoop):
    """A loop whose rounds raise (or claim) what the script says, then wait forever."""

    def __init__(self, script: list[BaseException | int]) -> None:
        super().__init__(cast(asyncpg.Pool, None), cast(Engine, None), poll_s=0.01)
        self.script: Iterator[BaseException | int] = iter(script)
        self.calls = 0
        self.done = asyncio.Event()

    async def round(self) -> int:
        self.calls += 1
        step = next(self.script, None)
        if step is None:
            self.done.set()
            await asyncio.Event().wait()
        if isinstance(step, BaseException):
            raise step
        return cast(int, step)


@pytest.mark.parametrize(
    "error",
    [
        DeadlockDetectedError("deadlock detected"),
        SerializationError("could not serialize access"),
        ConnectionRefusedError("database away"),
    ],
)
async def test_a_round_rolled_back_or_cut_off_is_tried_again(error: BaseException) -> None:
    loop = ScriptedLoop([error, 0])
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.wait_for(loop.done.wait(), 10)
        assert loop.calls == 3  # the failed round, the next one, and the idle one
    finally:
        task.cancel()


async def test_any_other_error_ends_the_loop() -> None:
    loop = ScriptedLoop([RuntimeError("a bug")])
    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(loop.run(), 10)
