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

from services.common import clock, metrics
from services.common.retrying import retrying
from services.triggers import derived
from services.triggers.runtime import runs
from services.triggers.runtime.erasure import try_erasure_lock_shared
from services.triggers.runtime.runs import Engine, Run

log = logging.getLogger(__name__)

BATCH = 500
POLL_S = 0.15
RETRY = timedelta(seconds=60)
BUSY_RETRY = timedelta(milliseconds=200)


def unless_erasing(due: list[asyncpg.Record]) -> list[asyncpg.Record]:
    """The claimed timers but those of contacts being erased, which are dropped.

    The claim tries each timer's erasure lock (runtime/erasure.py), shared, never waiting
    (``free``), and holds it until the round commits: an erasure that comes after waits for
    the round, then deletes what it wrote. One that holds the lock already is deleting the
    contact's runs and timers: a timer fired or put back now would write rows (the next date
    timer, a new run, the timer again for a run it has locked) that its delete, its snapshot
    taken before this round commits, does not see, and they would stay behind. Should that
    erasure fail, its consumer retries it until it succeeds."""
    fire = [t for t in due if t["free"]]
    if len(fire) < len(due):
        log.info("dropped %d timer(s) of contacts being erased", len(due) - len(fire))
    return fire


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
        # How late each claimed timer was handled (committed minus due), by kind.
        self.lateness = metrics.LatencyHistogram(
            "nudge_timer_lateness_seconds", "kind", known=("run", "date", "inactive")
        )

    def wake(self, due_at: datetime) -> None:
        """A timer due at ``due_at`` was written (committed or about to be): fire it on time."""
        if self._next_round_at is None or due_at <= self._next_round_at:
            self._woken.set()

    async def run(self) -> None:
        """Forever. A database outage is waited out (logged, retried with backoff), and so is
        a round PostgreSQL rolled back to break a deadlock or a serialization conflict (class
        40: retrying the transaction is the answer); any other error ends the task, which
        stops the service with exit 1 (services/common/runtime.py)."""
        while True:
            claimed = await retrying(self.round, "timer round", log)
            if claimed >= self._batch:
                continue  # a backlog: drain it without sleeping
            self._next_round_at = clock.now() + timedelta(seconds=self._poll_s)
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self._poll_s)
            self._next_round_at = None

    async def round(self) -> int:
        """Claim and fire the timers due now, in one transaction; how many were claimed.

        The run timers of the batch are advanced together (a fixed number of statements per
        batch, :func:`~services.triggers.runtime.runs.advance_many`); if that fails, each is
        tried alone so that one bad timer cannot hold the others back."""
        now = clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            due = await conn.fetch(
                "DELETE FROM timers WHERE timer_key IN (SELECT timer_key FROM timers"
                " WHERE due_at <= $1 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
                f" RETURNING *, {try_erasure_lock_shared('workspace_id', 'contact_id')} AS free",
                now,
                self._batch,
            )
            fire = unless_erasing(due)
            run_timers = [t for t in fire if t["kind"] == "run"]
            alone = [t for t in fire if t["kind"] != "run"]
            if run_timers:
                try:
                    async with conn.transaction():  # a savepoint
                        await self._fire_runs(conn, run_timers, now)
                except Exception:
                    log.exception(
                        "a batch of %s run timers failed; firing each alone", len(run_timers)
                    )
                    alone += run_timers
            for timer in alone:
                try:
                    async with conn.transaction():  # a savepoint: one bad timer fails alone
                        await self._fire(conn, timer, now)
                except Exception:
                    log.exception("timer %s failed; trying again later", timer["timer_key"])
                    await self._put_back(conn, [timer], now + RETRY, failed=True)
        self.rounds += 1
        self.fired += len(due)
        committed = clock.now()
        for timer in due:
            self.lateness.observe(timer["kind"], (committed - timer["due_at"]).total_seconds())
        return len(due)

    async def _fire(self, conn: asyncpg.Connection, timer: asyncpg.Record, now: datetime) -> None:
        if timer["kind"] == "run":
            await self._fire_runs(conn, [timer], now)
            return
        workspace_id = str(timer["workspace_id"])
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

    async def _fire_runs(
        self, conn: asyncpg.Connection, timers: list[asyncpg.Record], now: datetime
    ) -> None:
        ws = [t["workspace_id"] for t in timers]
        ids = [t["run_id"] for t in timers]
        rows = await conn.fetch(
            "SELECT * FROM runs WHERE (workspace_id, id) IN"
            " (SELECT * FROM unnest($1::uuid[], $2::uuid[])) FOR UPDATE SKIP LOCKED",
            ws,
            ids,
        )
        statuses = {
            (r["workspace_id"], r["id"]): r["status"]
            for r in await conn.fetch(
                "SELECT workspace_id, id, status FROM workflows WHERE (workspace_id, id) IN"
                " (SELECT DISTINCT * FROM unnest($1::uuid[], $2::uuid[]))",
                [r["workspace_id"] for r in rows],
                [r["workflow_id"] for r in rows],
            )
        }
        locked = {row["id"] for row in rows}
        unlocked = [t for t in timers if t["run_id"] not in locked]
        if unlocked:
            busy = await conn.fetch(
                "SELECT r.id FROM unnest($1::uuid[], $2::uuid[]) AS q(w, id)"
                " JOIN runs r ON r.workspace_id = q.w AND r.id = q.id WHERE r.ended_at IS NULL",
                [t["workspace_id"] for t in unlocked],
                [t["run_id"] for t in unlocked],
            )
            held = {r["id"] for r in busy}  # an event holds the run: look again in a moment
            await self._put_back(
                conn, [t for t in unlocked if t["run_id"] in held], now + BUSY_RETRY
            )
        timer_of = {t["run_id"]: t for t in timers}
        paused: list[asyncpg.Record] = []
        pending: list[runs.Pending] = []
        for row in rows:
            run = Run.of(row)
            if run.ended:
                continue
            status = statuses.get((row["workspace_id"], row["workflow_id"]))
            if status == "paused" and not run.test_recipient:
                paused.append(timer_of[row["id"]])
                continue
            compiled = await self._engine.version(
                conn, run.workspace_id, run.workflow_id, run.version
            )
            pending.append(runs.Pending(compiled, run, now))
        await self._put_back(conn, paused, now + runs.PAUSED_HOLD)
        # One contact's runs one after the other (in the order they fell due), as events
        # advance them: the second must see the first's mail (the frequency cap) and tags.
        # Advanced together, each read the facts from before the round.
        due = {str(t["run_id"]): t["due_at"] for t in timers}
        pending.sort(key=lambda p: (due[p.run.id], p.run.started_at))
        for wave in runs.waves(pending, lambda p: (p.run.workspace_id, p.run.contact_id)):
            await runs.advance_many(conn, self._engine, wave, now)

    async def _put_back(
        self,
        conn: asyncpg.Connection,
        timers: list[asyncpg.Record],
        due_at: datetime,
        *,
        failed: bool = False,
    ) -> None:
        if not timers:
            return
        payloads = []
        for timer in timers:
            payload = json.loads(timer["payload"])
            if failed:
                payload["attempts"] = int(payload.get("attempts", 0)) + 1
            payloads.append(json.dumps(payload))
        await conn.execute(
            "INSERT INTO timers (timer_key, workspace_id, contact_id, workflow_id, run_id, kind,"
            " due_at, payload) SELECT k, w, c, f, r, kind, $7, p::jsonb FROM unnest($1::text[],"
            " $2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text[], $8::text[])"
            " AS q(k, w, c, f, r, kind, p) ON CONFLICT (timer_key) DO NOTHING",
            [t["timer_key"] for t in timers],
            [t["workspace_id"] for t in timers],
            [t["contact_id"] for t in timers],
            [t["workflow_id"] for t in timers],
            [t["run_id"] for t in timers],
            [t["kind"] for t in timers],
            due_at,
            payloads,
        )
