"""The sweeper: transitions caused by time alone (DESIGN.md's timer pattern).

Each profile keeps ``next_transition_at``, the earliest moment time alone may change one of
its memberships (a window closing, a last order growing old), indexed. The sweeper claims the
profiles that fell due (``FOR UPDATE SKIP LOCKED``, the earliest first, up to ``batch`` at a
time, across workspaces), re-evaluates each at the moment it fell due, publishes the
transitions with cause TIME effective at that moment, and sets their next due time, all in
one transaction: a crash
mid-sweep rolls back and the rows stay due, so nothing is lost and nothing is published
twice.

Why at the due moment rather than at now: a row still due was not evaluated since (every
evaluation sets a next time after its own), so its facts then are its facts now, and the
transition is exact even when the sweep runs late (a sweeper down for an hour publishes
``lost`` effective at the second the last order turned 90 days old, not at its restart);
when several transitions fell due meanwhile, each is published at its own moment, in order,
as the row falls due again at once. Several sweepers (replicas) share the work without
waiting on one another.

No busy polling: when nothing is due, it sleeps until the earliest due time (read from the
index), at most ``max_sleep_s`` (a due time set by another replica is seen that late at
worst); an evaluation in this process that sets an earlier due time wakes it at once. Time
comes from :mod:`services.common.clock`, so tests move it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

import asyncpg
from nudge.segmentation.v1 import events_pb2

from services.common import clock
from services.segmentation import membership
from services.segmentation.adapters import membership_sql as sql

log = logging.getLogger(__name__)

BATCH = 1000
MIN_SLEEP_S = 0.05


class Sweeper:
    """Counters for tests and the benchmark: ``swept`` (profiles re-evaluated),
    ``published`` (TIME transitions), ``rounds`` (transactions committed)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        batch: int = BATCH,
        max_sleep_s: float = 1.0,
        definitions: membership.Definitions | None = None,
    ) -> None:
        self._pool = pool
        self._batch = batch
        self._max_sleep_s = max_sleep_s
        self._definitions = definitions or membership.DEFINITIONS
        self._wake = asyncio.Event()
        self._sleeping_until: datetime | None = None
        self.swept = 0
        self.published = 0
        self.rounds = 0

    def wake(self, due: datetime | None = None) -> None:
        """A due time was set: wake up now if it is earlier than the one slept towards."""
        if due is None or self._sleeping_until is None or due < self._sleeping_until:
            self._wake.set()

    async def run(self) -> None:
        undo = membership.on_next_due(self.wake)
        failures = 0
        try:
            while True:
                try:
                    swept = await self.sweep_once()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception:
                    failures += 1
                    log.exception("membership sweep failed; the due rows stay due")
                    await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                    continue
                if swept == 0:  # else go again: rows may have fallen due again at once
                    await self._sleep()
        finally:
            undo()

    async def _sleep(self) -> None:
        due = await sql.earliest_due(self._pool)
        now = clock.now()
        pause = self._max_sleep_s
        if due is not None:
            # Due but not claimed: locked by another sweeper or a definition change.
            pause = min(pause, max((due - now).total_seconds(), MIN_SLEEP_S))
        self._sleeping_until = due
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)
        finally:
            self._sleeping_until = None
            self._wake.clear()

    async def sweep_once(self) -> int:
        """One transaction: claim up to ``batch`` due profiles and re-evaluate each at its
        due moment; returns how many were claimed."""
        now = clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            due = await sql.claim_due(conn, now, self._batch)
            if not due:
                return 0
            by_ws: dict[str, dict[str, membership.Trigger]] = {}
            for ws, contact, at in due:
                by_ws.setdefault(ws, {})[contact] = membership.Trigger(
                    events_pb2.MEMBERSHIP_CAUSE_TIME, at
                )
            workspaces = sorted(by_ws)
            for ws in workspaces:
                await sql.lock_workspace(conn, ws, shared=True)
            compiled = await self._definitions.compiled(conn, workspaces)
            published = 0
            for ws in workspaces:
                published += len(await membership.reevaluate(conn, ws, by_ws[ws], compiled[ws]))
        self.swept += len(due)
        self.published += published
        self.rounds += 1
        return len(due)
