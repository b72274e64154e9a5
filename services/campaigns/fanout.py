"""The fan-out: every campaign in status SENDING becomes one ``delivery.requests.v1`` record
per mailed recipient, exactly once in effect, whatever crashes, pauses and resumes happen.

How (issue 15, DESIGN.md "Delivery guarantees"):

- :class:`FanoutDriver` polls for SENDING campaigns and runs each in a task of its own, under
  a PostgreSQL advisory lock per campaign: two campaigns processes never fan out one
  campaign at once, and a process that dies releases it with its connection.
- A campaign is sent in phases: ``all`` without an A/B test; ``sample`` (the variants'
  subjects), then ``rest`` (the winner's subject, once REPORT's decision loop has written
  ``ab_test.winner``) with one. Each phase streams the audience
  (services/campaigns/audience.py) at an evaluation time fixed when the phase starts and
  kept in its checkpoint (``fanouts``), so a resumed phase continues the stream it began.
- Per batch: the batch's ``recipients`` rows are inserted (excluded rows too, with their
  reason; again with ``ON CONFLICT DO NOTHING`` if an earlier run wrote them), the records
  of the rows due now are produced and every ack awaited, and only then is the checkpoint
  moved past the batch. A crash anywhere replays at most the batch after the checkpoint;
  its records are byte for byte the same (adapters/requests_out.py) and delivery claims a
  message id once: nobody twice, nobody left out.
- Between batches the status is read again: anything but SENDING (paused, cancelled) stops
  the phase at that batch boundary; SENDING again resumes from the checkpoint.
- Rows written with a ``due_at`` ahead (frequency-cap DEFER, each contact's local time)
  are produced by the same driver when due, ``requested_at`` set then.
- When every phase is done and no row waits, the campaign moves SENDING -> SENT (actor
  ``system:fanout``). A failure that retrying cannot cure (content too large for a record,
  a segment gone) moves it to PAUSED with the reason instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.campaigns import audience
from services.campaigns.adapters.postgres import transition
from services.campaigns.adapters.requests_out import (
    DeliveryRequestWriter,
    RecordTooLarge,
    RequestTemplate,
    campaign_message_id,
    request_template,
)
from services.campaigns.domain.content import message_templates
from services.campaigns.domain.model import Status
from services.campaigns.ports import Ports
from services.common import clock, metrics
from services.common.auth import internal_metadata

log = logging.getLogger(__name__)

ACTOR = "system:fanout"
# Advisory lock class of the fan-out (pg_try_advisory_lock(int, int): class, campaign hash).
LOCK_CLASS = 0x0F0F_0015
# gRPC answers of segmentation/contacts that another try cannot change.
PERMANENT_CODES = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
)
MAX_BACKOFF_S = 30.0
WAITING_RECHECK_S = 2.0

CAMPAIGN_COLUMNS = (
    "c.workspace_id, c.id, c.status, c.segment_ids, c.exclude_segment_ids, c.tags_any,"
    " c.subject, c.body_text,"
    " c.body_html, c.body_markdown,"
    " coalesce(nullif(c.reply_to, ''), s.default_reply_to, '') AS reply_to,"
    " c.purpose, c.cap_action, c.local_time,"
    " coalesce(nullif(c.time_zone, ''), s.time_zone, 'UTC') AS time_zone, c.scheduled_at,"
    " c.holdout_percent, c.ab_test"
)


class PermanentFailure(Exception):
    """The campaign cannot be fanned out as it stands; retrying would fail the same way."""


@dataclass
class Checkpoint:
    phase: audience.Phase
    as_of: datetime
    after: uuid.UUID | None
    reached: int
    requested: int
    excluded: int
    deferred: int
    done: bool


@dataclass
class _Batch:
    """One audience batch as the fan-out writes it: rows as columns, and what to produce."""

    now: datetime
    last: str
    size: int
    # Contact and message ids as text: asyncpg parses a uuid's text in C, where a
    # uuid.UUID's bytes come from a Python property.
    contacts: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    variants: list[int] = field(default_factory=list)
    excluded: list[str | None] = field(default_factory=list)
    due: list[datetime | None] = field(default_factory=list)
    requested: list[datetime | None] = field(default_factory=list)
    produce: list[tuple[str, str, int]] = field(default_factory=list)
    excluded_count: int = 0
    deferred_count: int = 0


@dataclass
class _Progress:
    """A campaign's fan-out as metrics read it: the checkpoints of its phases (the very
    objects the run moves forward, so a scrape reads them as they are, for nothing), and
    the rows due later this process requested since."""

    phases: dict[str, Checkpoint] = field(default_factory=dict)
    due_requested: int = 0

    def samples(self) -> Iterator[tuple[str, int]]:
        checkpoints = list(self.phases.values())
        yield "reached", sum(c.reached for c in checkpoints)
        yield "requested", sum(c.requested for c in checkpoints) + self.due_requested
        yield "excluded", sum(c.excluded for c in checkpoints)
        yield "deferred", sum(c.deferred for c in checkpoints)

    @property
    def streaming(self) -> bool:
        return any(not c.done for c in self.phases.values())


@dataclass(frozen=True)
class Outcome:
    """What one run of a campaign ended with (logged)."""

    campaign_id: uuid.UUID
    result: str  # "sent", "stopped" (not SENDING), "waiting" (winner or due rows), "busy"


class FanoutDriver:
    """Finds SENDING campaigns and fans each out in its own task (see the module docstring).

    ``run()`` is the background loop bootstrap.py spawns; ``run_campaign()`` is one pass over
    one campaign, until it is sent, stopped or has to wait.
    """

    def __init__(
        self,
        ports: Ports,
        writer: DeliveryRequestWriter,
        *,
        poll_interval_s: float = 0.5,
        batch_size: int = 2000,
        concurrency: int = 2,
    ) -> None:
        self.ports = ports
        self.writer = writer
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        self.concurrency = concurrency
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._failures: dict[uuid.UUID, tuple[int, float]] = {}  # attempts, retry at
        # Metrics (docs/operating.md): the campaigns this process fans out, from their first
        # run here until sent, stopped or paused (so the campaign_id label stays bounded by
        # the campaigns sending now), and every recipient handed to delivery.
        self.progress: dict[uuid.UUID, _Progress] = {}
        self.requested = 0
        metrics.watch(self)

    def metric_samples(self) -> Iterator[tuple[str, dict[str, str], Any]]:
        yield "nudge_campaign_fanout_requested", {}, self.requested
        for campaign_id, progress in list(self.progress.items()):
            campaign = {"campaign_id": str(campaign_id)}
            for state, value in progress.samples():
                yield "nudge_campaign_fanout_recipients", {**campaign, "state": state}, value
            yield "nudge_campaign_fanout_streaming", campaign, int(progress.streaming)

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.tick()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    log.warning("fan-out: could not look for sending campaigns", exc_info=True)
                await asyncio.sleep(self.poll_interval_s)
        finally:
            for task in self._running.values():
                task.cancel()
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def tick(self) -> None:
        """Start a task for each SENDING campaign not already running here (up to
        ``concurrency`` at once, the least recently changed first)."""
        rows = await self.ports.pool.fetch(
            "SELECT workspace_id, id FROM campaigns WHERE status = $1"
            " ORDER BY updated_at LIMIT 200",
            int(Status.SENDING),
        )
        sending = {row["id"] for row in rows}
        for gone in [c for c in self.progress if c not in sending and c not in self._running]:
            del self.progress[gone]  # sent or stopped by another process since it ran here
        now = time.monotonic()
        for row in rows:
            if len(self._running) >= self.concurrency:
                break
            campaign_id: uuid.UUID = row["id"]
            if campaign_id in self._running:
                continue
            failed = self._failures.get(campaign_id)
            if failed is not None and failed[1] > now:
                continue
            task = asyncio.create_task(
                self._guarded(str(row["workspace_id"]), campaign_id),
                name=f"fanout-{campaign_id}",
            )
            self._running[campaign_id] = task

    async def _guarded(self, workspace_id: str, campaign_id: uuid.UUID) -> None:
        try:
            outcome = await self.run_campaign(workspace_id, campaign_id)
            self._failures.pop(campaign_id, None)
            if outcome.result in ("sent", "stopped", "busy"):
                # Its series end with it; a campaign another process holds is that one's.
                self.progress.pop(campaign_id, None)
            if outcome.result == "waiting":
                # For the winner or rows due later: look again soon, not at every poll.
                self._failures[campaign_id] = (0, time.monotonic() + WAITING_RECHECK_S)
            quiet = outcome.result in ("waiting", "busy")  # again and again while it waits
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "fan-out of campaign %s: %s",
                campaign_id,
                outcome.result,
            )
        except asyncio.CancelledError:
            raise
        except PermanentFailure as err:
            log.error("fan-out of campaign %s cannot go on: %s", campaign_id, err)
            self.progress.pop(campaign_id, None)
            await self._pause_for(workspace_id, campaign_id, str(err))
        except Exception:
            attempts = self._failures.get(campaign_id, (0, 0.0))[0] + 1
            backoff = min(MAX_BACKOFF_S, self.poll_interval_s * 2**attempts)
            self._failures[campaign_id] = (attempts, time.monotonic() + backoff)
            log.warning(
                "fan-out of campaign %s failed (attempt %s), retrying in %.1f s",
                campaign_id,
                attempts,
                backoff,
                exc_info=True,
            )
        finally:
            self._running.pop(campaign_id, None)

    async def _pause_for(self, workspace_id: str, campaign_id: uuid.UUID, reason: str) -> None:
        async with self.ports.pool.acquire() as conn:
            await transition(
                conn,
                workspace_id,
                campaign_id,
                (Status.SENDING,),
                Status.PAUSED,
                ACTOR,
                "the fan-out cannot go on",
                clock.now(),
                status_reason=reason[:500],
            )

    async def run_campaign(self, workspace_id: str, campaign_id: uuid.UUID) -> Outcome:
        """One pass: under the campaign's advisory lock, every phase from its checkpoint,
        the rows that fell due, and SENT when nothing is left."""
        async with self.ports.pool.acquire() as lock_conn:
            locked = await lock_conn.fetchval(
                "SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_CLASS, str(campaign_id)
            )
            if not locked:
                return Outcome(campaign_id, "busy")
            try:
                return await _CampaignRun(self, workspace_id, campaign_id).run()
            finally:
                with contextlib.suppress(Exception):
                    await lock_conn.execute(
                        "SELECT pg_advisory_unlock($1, hashtext($2))",
                        LOCK_CLASS,
                        str(campaign_id),
                    )


class _CampaignRun:
    """One pass over one campaign (the state of a run_campaign call)."""

    def __init__(self, driver: FanoutDriver, workspace_id: str, campaign_id: uuid.UUID) -> None:
        self.driver = driver
        self.pool = driver.ports.pool
        self.workspace_id = workspace_id
        self.workspace = uuid.UUID(workspace_id)
        self.campaign_id = campaign_id
        self.campaign_text = str(campaign_id)
        self._from_name: str | None = None
        self._templates: dict[tuple[datetime, int], RequestTemplate] = {}
        self.progress = _Progress()

    async def run(self) -> Outcome:
        row = await self._campaign()
        if row is None or row["status"] != Status.SENDING:
            return Outcome(self.campaign_id, "stopped")
        ab = json.loads(row["ab_test"]) if row["ab_test"] else None
        phases: tuple[audience.Phase, ...] = ("sample", "rest") if ab else ("all",)
        self.progress = self.driver.progress.setdefault(self.campaign_id, _Progress())
        for phase in phases:
            checkpoint = await self._checkpoint(phase)
            if checkpoint is not None:
                self.progress.phases[phase] = checkpoint
            if checkpoint is not None and checkpoint.done:
                continue
            if phase == "rest":
                assert ab is not None
                ab = await self._ab_test()
                if ab is None or int(ab.get("winner", -1)) < 0:
                    return Outcome(self.campaign_id, "waiting")  # REPORT decides
            if checkpoint is None:
                checkpoint = await self._start_phase(phase)
                self.progress.phases[phase] = checkpoint
            if not await self._stream_phase(row, ab, checkpoint):
                return Outcome(self.campaign_id, "stopped")
            if phase == "sample":
                await self._mark_sample_done()
        if not await self._send_due(row, ab):
            return Outcome(self.campaign_id, "stopped")
        async with self.pool.acquire() as conn, conn.transaction():
            waiting = await conn.fetchval(
                "SELECT count(*) FROM recipients WHERE workspace_id = $1 AND campaign_id = $2"
                " AND excluded IS NULL AND requested_at IS NULL",
                self.workspace,
                self.campaign_id,
            )
            if waiting:
                return Outcome(self.campaign_id, "waiting")
            moved = await transition(
                conn,
                self.workspace_id,
                self.campaign_id,
                (Status.SENDING,),
                Status.SENT,
                ACTOR,
                "every recipient handed to delivery",
                clock.now(),
            )
        return Outcome(self.campaign_id, "sent" if moved is not None else "stopped")

    # -- the campaign and its checkpoints --------------------------------------------------

    async def _campaign(self) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"SELECT {CAMPAIGN_COLUMNS} FROM campaigns c"
            " LEFT JOIN settings s ON s.workspace_id = c.workspace_id"
            " WHERE c.workspace_id = $1 AND c.id = $2",
            self.workspace,
            self.campaign_id,
        )

    async def _status(self) -> int | None:
        value = await self.pool.fetchval(
            "SELECT status FROM campaigns WHERE workspace_id = $1 AND id = $2",
            self.workspace,
            self.campaign_id,
        )
        return None if value is None else int(value)

    async def _ab_test(self) -> dict[str, Any] | None:
        raw = await self.pool.fetchval(
            "SELECT ab_test FROM campaigns WHERE workspace_id = $1 AND id = $2",
            self.workspace,
            self.campaign_id,
        )
        return json.loads(raw) if raw else None

    async def _checkpoint(self, phase: audience.Phase) -> Checkpoint | None:
        row = await self.pool.fetchrow(
            "SELECT as_of, after_contact_id, reached, requested, excluded, deferred, done_at"
            " FROM fanouts WHERE workspace_id = $1 AND campaign_id = $2 AND phase = $3",
            self.workspace,
            self.campaign_id,
            phase,
        )
        if row is None:
            return None
        return Checkpoint(
            phase=phase,
            as_of=row["as_of"],
            after=row["after_contact_id"],
            reached=row["reached"],
            requested=row["requested"],
            excluded=row["excluded"],
            deferred=row["deferred"],
            done=row["done_at"] is not None,
        )

    async def _start_phase(self, phase: audience.Phase) -> Checkpoint:
        """The phase's checkpoint with its evaluation time fixed now (the first run to
        insert it wins; a concurrent insert cannot happen under the advisory lock)."""
        now = clock.now()
        await self.pool.execute(
            "INSERT INTO fanouts (workspace_id, campaign_id, phase, as_of, updated_at)"
            " VALUES ($1, $2, $3, $4, $4) ON CONFLICT DO NOTHING",
            self.workspace,
            self.campaign_id,
            phase,
            now,
        )
        checkpoint = await self._checkpoint(phase)
        assert checkpoint is not None
        return checkpoint

    async def _mark_sample_done(self) -> None:
        """Tells REPORT's decision loop when the sample went out (set once)."""
        await self.pool.execute(
            "UPDATE campaigns SET ab_test = jsonb_set(ab_test, '{sample_done_at}',"
            " to_jsonb($3::text)) WHERE workspace_id = $1 AND id = $2 AND ab_test IS NOT NULL"
            " AND (ab_test->>'sample_done_at') IS NULL",
            self.workspace,
            self.campaign_id,
            clock.now().astimezone(UTC).isoformat(),
        )

    # -- records -----------------------------------------------------------------------------

    async def _sender_name(self) -> str:
        """The workspace's name, the sender's display name (asked once per run)."""
        if self._from_name is None:
            ports = self.driver.ports
            stub = contacts_pb2_grpc.WorkspaceServiceStub(ports.contacts)
            try:
                answer = await stub.GetWorkspaceSettings(
                    contacts_pb2.GetWorkspaceSettingsRequest(),
                    metadata=internal_metadata(ports.settings.internal_token, self.workspace_id),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as err:
                if err.code() in PERMANENT_CODES:
                    raise PermanentFailure(f"workspace settings: {err.details()}") from err
                raise
            self._from_name = answer.name
        return self._from_name

    async def _template(
        self, row: asyncpg.Record, ab: dict[str, Any] | None, as_of: datetime, variant: int
    ) -> RequestTemplate:
        """The constant bytes of ``variant``'s records: the campaign's subject, an A/B
        variant's, or (variant -1) the winner's."""
        key = (as_of, variant)
        found = self._templates.get(key)
        if found is not None:
            return found
        subject = row["subject"]
        if ab is not None:
            subjects = list(ab.get("subjects") or [])
            index = variant if variant >= 0 else int(ab.get("winner", -1))
            if not 0 <= index < len(subjects):
                raise PermanentFailure(f"no A/B subject for variant {variant}")
            subject = subjects[index]
        content = message_templates(
            subject, row["body_text"], row["body_html"], row["body_markdown"]
        )
        template = request_template(
            workspace_id=self.workspace_id,
            campaign_id=self.campaign_text,
            purpose=row["purpose"],
            content=content,
            from_name=await self._sender_name(),
            reply_to=row["reply_to"],
            occurred_at=as_of,
        )
        self._templates[key] = template
        return template

    async def _produce(
        self,
        row: asyncpg.Record,
        ab: dict[str, Any] | None,
        as_of: datetime,
        rows: list[tuple[str, str, int]],
    ) -> None:
        """Produce (contact id, message id, variant) ``rows`` and wait for every ack."""
        templates = {v: await self._template(row, ab, as_of, v) for v in {r[2] for r in rows}}
        records = [
            (contact.encode(), templates[variant].encode(message, contact))
            for contact, message, variant in rows
        ]
        try:
            await self.driver.writer.write(records)
        except RecordTooLarge as err:
            raise PermanentFailure(str(err)) from err

    # -- the phases ----------------------------------------------------------------------

    async def _stream_phase(
        self, row: asyncpg.Record, ab: dict[str, Any] | None, checkpoint: Checkpoint
    ) -> bool:
        """Every batch of the phase after its checkpoint; False when the campaign stopped
        being SENDING (the checkpoint stays at the last whole batch).

        Two batches overlap: while the records of one are in flight (and its checkpoint is
        written), the next is read from the audience and its rows inserted. Each batch keeps
        its own order (rows, records acked, checkpoint) and checkpoints follow each other,
        so a crash still replays only what no checkpoint covers."""
        # The row's time zone already falls back to the workspace's (CAMPAIGN_COLUMNS).
        spec = audience.spec_from_row(row, default_time_zone="UTC")
        stream = audience.stream_recipients(
            self.driver.ports,
            spec,
            phase=checkpoint.phase,
            as_of=checkpoint.as_of,
            after=checkpoint.after,
            batch_size=self.driver.batch_size,
        )
        in_flight: asyncio.Task[None] | None = None
        try:
            async for batch in stream:
                if await self._status() != Status.SENDING:
                    return False
                if not batch:
                    continue
                prepared = self._prepare(batch)
                await self._insert_rows(prepared)
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.create_task(
                    self._send_and_checkpoint(row, ab, checkpoint, prepared)
                )
            if in_flight is not None:
                await in_flight
                in_flight = None
        except grpc.aio.AioRpcError as err:
            if err.code() in PERMANENT_CODES:
                raise PermanentFailure(f"audience: {err.details()}") from err
            raise
        finally:
            if in_flight is not None:
                # Stopped (paused, cancelled) or failed: the batch in flight completes (or
                # fails) before the run ends, so its checkpoint is all or nothing.
                await asyncio.gather(in_flight, return_exceptions=True)
            # Leaving early ends the segmentation stream now, not at collection.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if await self._status() != Status.SENDING:
            return False
        await self.pool.execute(
            "UPDATE fanouts SET done_at = $4, updated_at = $4"
            " WHERE workspace_id = $1 AND campaign_id = $2 AND phase = $3",
            self.workspace,
            self.campaign_id,
            checkpoint.phase,
            clock.now(),
        )
        checkpoint.done = True
        return True

    def _prepare(self, batch: list[audience.Recipient]) -> _Batch:
        """The batch's rows as columns, and which of them are due now."""
        now = clock.now()
        b = _Batch(now=now, last=batch[-1].contact_id, size=len(batch))
        campaign = self.campaign_text
        for r in batch:
            contact = r.contact_id
            message = campaign_message_id(campaign, contact)
            b.contacts.append(contact)
            b.messages.append(message)
            b.variants.append(r.variant)
            b.excluded.append(r.excluded)
            b.due.append(r.due_at)
            if r.excluded is not None:
                b.excluded_count += 1
                b.requested.append(None)
            elif r.due_at is not None and r.due_at > now:
                b.deferred_count += 1
                b.requested.append(None)
            else:
                b.requested.append(now)
                b.produce.append((contact, message, r.variant))
        return b

    async def _insert_rows(self, b: _Batch) -> None:
        """The batch's rows. A batch conflicts only when a run before this one wrote it (a
        crash or a stop after the insert, before the checkpoint), so it is inserted plainly
        first and again with ``ON CONFLICT DO NOTHING`` only if that fails on a duplicate
        (the failed statement wrote nothing). ON CONFLICT is a speculative insertion: each
        row probes both unique indexes before it is inserted, and confirms its heap tuple
        after, a third of the insert's cost for rows that almost never conflict."""
        try:
            await self._insert_statement(b, "")
        except asyncpg.UniqueViolationError:
            await self._insert_statement(b, " ON CONFLICT DO NOTHING")

    async def _insert_statement(self, b: _Batch, on_conflict: str) -> None:
        if len(b.produce) == b.size and len(set(b.variants)) == 1:
            # The usual batch: everyone mailed now, one variant. Two arrays to encode, not
            # six (asyncpg's encoding of the arrays is a tenth of the fan-out's time).
            await self.pool.execute(
                "INSERT INTO recipients (workspace_id, campaign_id, contact_id, message_id,"
                " variant, requested_at) SELECT $1, $2, c, m, $5, $6"
                f" FROM unnest($3::uuid[], $4::uuid[]) AS t(c, m){on_conflict}",
                self.workspace,
                self.campaign_id,
                b.contacts,
                b.messages,
                b.variants[0],
                b.now,
            )
            return
        await self.pool.execute(
            "INSERT INTO recipients (workspace_id, campaign_id, contact_id, message_id, variant,"
            " excluded, due_at, requested_at)"
            " SELECT $1, $2, c, m, v, e, d, r FROM unnest($3::uuid[], $4::uuid[],"
            " $5::smallint[], $6::text[], $7::timestamptz[], $8::timestamptz[])"
            f" AS t(c, m, v, e, d, r){on_conflict}",
            self.workspace,
            self.campaign_id,
            b.contacts,
            b.messages,
            b.variants,
            b.excluded,
            b.due,
            b.requested,
        )

    async def _send_and_checkpoint(
        self,
        row: asyncpg.Record,
        ab: dict[str, Any] | None,
        checkpoint: Checkpoint,
        b: _Batch,
    ) -> None:
        """The batch's records (every ack awaited), then its checkpoint."""
        await self._produce(row, ab, checkpoint.as_of, b.produce)
        await self.pool.execute(
            "UPDATE fanouts SET after_contact_id = $4, reached = reached + $5,"
            " requested = requested + $6, excluded = excluded + $7, deferred = deferred + $8,"
            " updated_at = $9 WHERE workspace_id = $1 AND campaign_id = $2 AND phase = $3",
            self.workspace,
            self.campaign_id,
            checkpoint.phase,
            b.last,
            b.size,
            len(b.produce),
            b.excluded_count,
            b.deferred_count,
            b.now,
        )
        checkpoint.after = uuid.UUID(b.last)
        checkpoint.reached += b.size
        checkpoint.requested += len(b.produce)
        checkpoint.excluded += b.excluded_count
        checkpoint.deferred += b.deferred_count
        self.driver.requested += len(b.produce)

    async def _send_due(self, row: asyncpg.Record, ab: dict[str, Any] | None) -> bool:
        """The waiting rows whose time has come, a batch at a time; False when the campaign
        stopped being SENDING. A crash between the produce and the update sends the batch
        again, identical: delivery claims each message id once."""
        while True:
            if await self._status() != Status.SENDING:
                return False
            now = clock.now()
            due = await self.pool.fetch(
                "SELECT r.contact_id, r.message_id, r.variant, f.as_of FROM recipients r"
                " JOIN fanouts f ON f.workspace_id = r.workspace_id"
                " AND f.campaign_id = r.campaign_id"
                " AND f.phase = CASE WHEN r.variant < 0 THEN 'rest'"
                " WHEN $4 THEN 'sample' ELSE 'all' END"
                " WHERE r.workspace_id = $1 AND r.campaign_id = $2 AND r.excluded IS NULL"
                " AND r.requested_at IS NULL AND (r.due_at IS NULL OR r.due_at <= $3)"
                " ORDER BY r.due_at, r.contact_id LIMIT $5",
                self.workspace,
                self.campaign_id,
                now,
                ab is not None,
                self.driver.batch_size,
            )
            if not due:
                return True
            by_as_of: dict[datetime, list[tuple[str, str, int]]] = {}
            for d in due:
                by_as_of.setdefault(d["as_of"], []).append(
                    (str(d["contact_id"]), str(d["message_id"]), d["variant"])
                )
            for as_of, rows in by_as_of.items():
                await self._produce(row, ab, as_of, rows)
                self.progress.due_requested += len(rows)
                self.driver.requested += len(rows)
            await self.pool.execute(
                "UPDATE recipients SET requested_at = $4 WHERE workspace_id = $1"
                " AND campaign_id = $2 AND contact_id = ANY($3::uuid[])",
                self.workspace,
                self.campaign_id,
                [d["contact_id"] for d in due],
                now,
            )
