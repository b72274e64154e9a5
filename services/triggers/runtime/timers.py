"""The timer loop: wakes the runs (and the date and silence triggers) whose time has come.

Every worker runs one. Each round claims up to :data:`BATCH` due timers with
``DELETE ... FOR UPDATE SKIP LOCKED ... RETURNING`` and, in the same transaction, fires
each of them: a run timer locks its run, advances it and writes the result (outbox
included); a ``date`` or ``inactive`` timer goes to :func:`services.triggers.derived.on_timer`
and the runs it returns start like any other. Nothing is lost by a crash: an uncommitted
claim is no claim, the timers come back and fire again, and every effect carries a
deterministic id. Several workers share the load without coordination (SKIP LOCKED).

A timer that fails (a bug, a version that no longer loads) is rolled back alone (a
savepoint) and put back :data:`RETRY` later with its attempts counted in its payload, so
one bad timer never blocks the others. A run whose lock an event holds is put back at once
rather than waited for (the event path locks the run first, then its timer: waiting here
could deadlock). A run of a paused workflow holds: its timer is put back
:data:`~services.triggers.runtime.runs.PAUSED_HOLD` later, and it goes on once resumed.

The loop sleeps :data:`POLL_S` between rounds, or less: :meth:`TimerLoop.wake` is told of
every timer written in this process, and a timer due before the next round wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime, timedelta

import asyncpg

from services.common import clock
from services.common.consumer import is_dependency_outage
from services.triggers import derived
from services.triggers.runtime import runs
from services.triggers.runtime.runs import Engine, Run

log = logging.getLogger(__name__)

BATCH = 500
POLL_S = 0.15
RETRY = timedelta(seconds=60)
BUSY_RETRY = timedelta(milliseconds=200)


class TimerLoop:
    def __init__(
        self, pool: asyncpg.Pool, engine: Engine, *, poll_s: float = POLL_S, batch: int = BATCH
    ) -> None:
        self._pool = pool
        self._engine = engine
        self._poll_s = poll_s
        self._batch = batch
        self._woken = asyncio.Event()
        self._next_round_at: datetime | None = None
        self.fired = 0  # timers fired (for tests and metrics)
        self.rounds = 0

    def wake(self, due_at: datetime) -> None:
        """A timer due at ``due_at`` was written (committed or about to be): fire it on time."""
        if self._next_round_at is None or due_at <= self._next_round_at:
            self._woken.set()

    async def run(self) -> None:
        """Forever. A database outage is waited out (logged, retried with backoff); any other
        error ends the task, which stops the service with exit 1 (services/common/runtime.py)."""
        backoff = 0.1
        while True:
            try:
                claimed = await self.round()
            except Exception as err:
                if not is_dependency_outage(err):
                    raise
                log.warning("timer round failed (%r); retrying in %.1fs", err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if claimed >= self._batch:
                continue  # a backlog: drain it without sleeping
            self._next_round_at = clock.now() + timedelta(seconds=self._poll_s)
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self._poll_s)
            self._next_round_at = None

    async def round(self) -> int:
        """Claim and fire the timers due now, in one transaction; how many were claimed."""
        now = clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            due = await conn.fetch(
                "DELETE FROM timers WHERE timer_key IN (SELECT timer_key FROM timers"
                " WHERE due_at <= $1 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
                " RETURNING *",
                now,
                self._batch,
            )
            for timer in due:
                try:
                    async with conn.transaction():  # a savepoint: one bad timer fails alone
                        await self._fire(conn, timer, now)
                except Exception:
                    log.exception("timer %s failed; trying again later", timer["timer_key"])
                    await self._put_back(conn, timer, now + RETRY, failed=True)
        self.rounds += 1
        self.fired += len(due)
        return len(due)

    async def _fire(self, conn: asyncpg.Connection, timer: asyncpg.Record, now: datetime) -> None:
        workspace_id = str(timer["workspace_id"])
        if timer["kind"] != "run":
            for start in await derived.on_timer(conn, timer, now):
                compiled = await self._engine.version(
                    conn, workspace_id, start.workflow_id, start.version
                )
                await runs.start_run(
                    conn,
                    self._engine,
                    compiled,
                    workspace_id=workspace_id,
                    contact_id=start.contact_id,
                    trigger_event_id=start.trigger_event_id,
                    occurred_at=now,
                    vars=start.vars,
                    key=start.key,
                    now=now,
                )
            return
        row = await conn.fetchrow(
            "SELECT r.*, w.status AS workflow_status FROM runs r JOIN workflows w"
            " ON w.workspace_id = r.workspace_id AND w.id = r.workflow_id"
            " WHERE r.workspace_id = $1 AND r.id = $2 FOR UPDATE OF r SKIP LOCKED",
            timer["workspace_id"],
            timer["run_id"],
        )
        if row is None:
            exists = await conn.fetchval(
                "SELECT 1 FROM runs WHERE workspace_id = $1 AND id = $2 AND ended_at IS NULL",
                timer["workspace_id"],
                timer["run_id"],
            )
            if exists:  # an event holds the run: look again in a moment
                await self._put_back(conn, timer, now + BUSY_RETRY)
            return
        run = Run.of(row)
        if run.ended:
            return
        if row["workflow_status"] == "paused" and not run.test_recipient:
            await self._put_back(conn, timer, now + runs.PAUSED_HOLD)
            return
        compiled = await self._engine.version(conn, workspace_id, run.workflow_id, run.version)
        await runs.advance_run(conn, self._engine, compiled, run, now)

    async def _put_back(
        self,
        conn: asyncpg.Connection,
        timer: asyncpg.Record,
        due_at: datetime,
        *,
        failed: bool = False,
    ) -> None:
        payload = json.loads(timer["payload"])
        if failed:
            payload["attempts"] = int(payload.get("attempts", 0)) + 1
        await conn.execute(
            "INSERT INTO timers (timer_key, workspace_id, contact_id, workflow_id, run_id, kind,"
            " due_at, payload) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)"
            " ON CONFLICT (timer_key) DO NOTHING",
            timer["timer_key"],
            timer["workspace_id"],
            timer["contact_id"],
            timer["workflow_id"],
            timer["run_id"],
            timer["kind"],
            due_at,
            json.dumps(payload),
        )
