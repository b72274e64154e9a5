"""Date workflows' timers for the contacts known already, written after the publication.

A ``date_reached`` workflow (a birthday, a signup anniversary) needs one timer per contact
with the date. Those of contacts that change later come from the event path
(derived.on_contact_changed); those of the contacts known when the workflow is published or
resumed used to be written inside the publication's transaction, which then grew with the
workspace: 8.2 s at 100,000 contacts on a quiet machine (bench/triggers_publish.py), near
the gateway's 10 s deadline, and past it beyond, with the answer lost but the publication
committed.

Now the publication only records a job (derived.schedule_workflow, in the publication's
transaction, so a publication without its job cannot commit), and every worker's
:class:`ScheduleLoop` works the jobs off, :data:`derived.BATCH_SIZE` contacts a transaction,
keyset over contact ids:

- **Durable and resumable.** The cursor moves in the transaction that writes the batch's
  timers; a worker killed mid-job leaves the job where its last batch committed, and any
  worker takes it up again (``FOR UPDATE SKIP LOCKED``: two workers never work one job at
  once). Writing a timer again is harmless (an upsert that moves it only when its basis
  changed).
- **Current.** A job whose workflow is no longer active at that version (paused, archived,
  published again) ends without writing: resuming or publishing again enqueues a fresh one,
  from the first contact.
- **Ordered against the event path and erasure.** The batch reads the contacts' facts
  ``FOR SHARE``: a contact's change being written (its facts row locked) is waited for and
  read as it commits, and one that comes after waits for the batch and writes its own timer
  last. The batch tries each contact's erasure lock (runtime/erasure.py) and skips a contact
  being erased, whose timers that erasure deletes.

The scheduled timers are those the publication wrote before, from the same code
(:func:`services.triggers.derived.schedule_dates_batch`); only where and when changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import datetime

import asyncpg

from services.common import clock
from services.common.retrying import retrying
from services.triggers import derived
from services.triggers.runtime.erasure import try_erasure_lock_shared

log = logging.getLogger(__name__)

POLL_S = 1.0


async def run_one_batch(conn: asyncpg.Connection, now: datetime) -> bool:
    """One batch of the oldest job no other worker holds, in one transaction; false when
    there was no job to work on."""
    async with conn.transaction():
        job = await conn.fetchrow(
            "SELECT j.workspace_id::text AS workspace_id, j.workflow_id::text AS workflow_id,"
            " j.version, j.after_contact::text AS after_contact, j.written,"
            " w.status = 'active' AND w.published_version = j.version AS current"
            " FROM schedule_jobs j LEFT JOIN workflows w"
            " ON w.workspace_id = j.workspace_id AND w.id = j.workflow_id"
            " ORDER BY j.created_at LIMIT 1 FOR UPDATE OF j SKIP LOCKED"
        )
        if job is None:
            return False
        ws, workflow_id = job["workspace_id"], job["workflow_id"]
        done = not job["current"]
        written = job["written"]
        if not done:
            rows = await conn.fetch(
                f"SELECT {derived.FACTS_COLUMNS},"
                f" {try_erasure_lock_shared('workspace_id', 'contact_id')} AS free"
                " FROM contact_facts WHERE workspace_id = $1"
                " AND ($2::uuid IS NULL OR contact_id > $2::uuid)"
                " ORDER BY contact_id LIMIT $3 FOR SHARE",
                ws,
                job["after_contact"],
                derived.BATCH_SIZE,
            )
            written += await derived.schedule_dates_batch(
                conn, ws, workflow_id, job["version"], [r for r in rows if r["free"]], now
            )
            # Done on an empty batch, one more short transaction per job: a short batch is
            # proof only as long as a row deleted while awaited (an erasure) is refilled by
            # the LIMIT, which is PostgreSQL's plan today, not a promise.
            done = not rows
        if done:
            await conn.execute(
                "DELETE FROM schedule_jobs WHERE workspace_id = $1 AND workflow_id = $2",
                uuid.UUID(ws),
                uuid.UUID(workflow_id),
            )
            log.info(
                "scheduled workflow %s version %s: %d timer(s) written%s",
                workflow_id,
                job["version"],
                written,
                "" if job["current"] else " (no longer live at that version: stopped)",
            )
        else:
            await conn.execute(
                "UPDATE schedule_jobs SET after_contact = $3, written = $4"
                " WHERE workspace_id = $1 AND workflow_id = $2",
                uuid.UUID(ws),
                uuid.UUID(workflow_id),
                rows[-1]["contact_id"],
                written,
            )
        return True


async def run_all(pool: asyncpg.Pool) -> None:
    """Every job to its end (tests, and a caller that needs the timers now)."""
    async with pool.acquire() as conn:
        while await run_one_batch(conn, clock.now()):
            pass


class ScheduleLoop:
    """Works the jobs off, batch after batch, then waits :data:`POLL_S` or until
    :meth:`wake` (a publication in this process)."""

    def __init__(self, pool: asyncpg.Pool, *, poll_s: float = POLL_S) -> None:
        self._pool = pool
        self._poll_s = poll_s
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def run(self) -> None:
        """Forever. A database outage, a deadlock or a serialization failure is waited out
        and the batch tried again; any other error ends the task, which stops the service
        with exit 1 (services/common/runtime.py), as the timer loop does."""
        while True:
            self._woken.clear()
            await retrying(lambda: run_all(self._pool), "scheduling a workflow", log)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self._poll_s)
