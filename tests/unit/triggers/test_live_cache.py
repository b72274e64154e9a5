"""The engine's cache of live workflows (runtime/runs.Engine) and ``forget``: a list read
while a change came in is not kept (it may be from before the change)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from services.triggers.runtime.caps import FrequencyCaps
from services.triggers.runtime.runs import Engine

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Workflows:
    """Stands in for the connection: counts the reads of ``workflows`` and can hold one."""

    def __init__(self) -> None:
        self.reads = 0
        self.hold: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        assert "FROM workflows" in query
        self.reads += 1
        self.reading.set()
        if self.hold is not None:
            await self.hold.wait()
        return []


def engine() -> Engine:
    return Engine(FrequencyCaps(None, ""), live_ttl_s=3600.0)


async def test_a_cached_list_is_read_again_only_after_forget() -> None:
    e, db = engine(), Workflows()
    for _ in range(3):
        await e.live(db, "ws-1", "signed_up", NOW)  # type: ignore[arg-type]
    assert db.reads == 1
    e.forget("ws-2")  # another workspace's change
    await e.live(db, "ws-1", "signed_up", NOW)  # type: ignore[arg-type]
    assert db.reads == 1
    e.forget("ws-1")
    await e.live(db, "ws-1", "signed_up", NOW)  # type: ignore[arg-type]
    assert db.reads == 2
    e.forget()
    await e.live(db, "ws-1", "signed_up", NOW)  # type: ignore[arg-type]
    assert db.reads == 3


async def test_a_list_read_while_a_change_came_in_is_not_kept() -> None:
    e, db = engine(), Workflows()
    db.hold = asyncio.Event()
    reading = asyncio.create_task(e.live(db, "ws-1", "signed_up", NOW))  # type: ignore[arg-type]
    await db.reading.wait()
    e.forget("ws-1")  # the publication commits while the list is being read
    db.hold.set()
    await reading
    db.hold = None
    await e.live(db, "ws-1", "signed_up", NOW)  # type: ignore[arg-type]
    assert db.reads == 2
