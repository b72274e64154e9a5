"""The story of a mail (issue 17): DeliveryService.ExplainMessage, behind
``GET /v1/messages/{id}?explain=true`` and ``nudge message ID``.

One answer to "where is this mail?", from what delivery itself keeps:

- the request's origin, written on the ledger row at the first claim (migrations/
  0070_message_story.sql): kind, campaign, or workflow with its run and step, the consent
  purpose asked about, and the trace id of the span current at the claim (the consumer's
  per-record span, which continues the producer's trace), so the trace can be opened;
- every status the ledger went through (``message_history``, written by triggers in the
  statements that change the ledger: no path can forget it, and the group writes pay no
  extra round trip), with the SMTP answer and, for a deferral, the next attempt;
- the eligibility decision, read from that history (:func:`eligibility_of`);
- what tracking saw of the mail (opens, clicks, human or machine: ``message_tracking``,
  kept from tracking.events.v1 by :mod:`services.delivery.tracking_log`).

Scoped to the caller's workspace: another workspace's message is NOT_FOUND, like an unknown
one; an id that is no message id is INVALID_ARGUMENT naming ``message_id``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from nudge.delivery.v1 import delivery_pb2
from opentelemetry import trace

from services.common.errors import FieldViolation, InvalidArgument, NotFound
from services.common.ids import is_uuid
from services.delivery.domain.ledger import Status


def current_trace_id() -> str:
    """The current span's trace id (32 hex digits), or "" outside any trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


INVALID_REQUEST = "invalid request"  # the start of handlers._deliver's FAILED detail


@dataclass(frozen=True)
class Stage:
    at: datetime
    status: Status
    detail: str
    attempt: int
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class Eligibility:
    checked: bool
    eligible: bool = False
    reason: str = ""
    at: datetime | None = None


def eligibility_of(kind: int, stages: Sequence[Stage]) -> Eligibility:
    """Delivery's consent and suppression check, as its history shows it: a SKIPPED stage is
    a refusal (its detail says why: unsubscribed, suppressed, the workspace suspended...);
    a claim that went on to anything else passed the check, which is asked just before the
    claim. A test send is never checked (it goes to the manager's own address)."""
    if kind == delivery_pb2.MESSAGE_KIND_TEST:
        return Eligibility(checked=False, reason="test send: no consent check")
    for stage in stages:
        if stage.status == Status.SKIPPED:
            return Eligibility(checked=True, eligible=False, reason=stage.detail, at=stage.at)
    # A request refused as invalid (handlers._deliver) never got to the check; any other
    # claim was taken after contacts said yes.
    invalid = any(
        s.status == Status.FAILED and s.detail.startswith(INVALID_REQUEST) for s in stages
    )
    if not stages or invalid:
        return Eligibility(checked=False)
    return Eligibility(checked=True, eligible=True, at=stages[0].at)


async def explain(
    pool: asyncpg.Pool, workspace_id: str, message_id: str
) -> delivery_pb2.MessageStory:
    if not is_uuid(message_id):
        raise InvalidArgument(FieldViolation("message_id", "not a message id (a UUID)"))
    key = uuid.UUID(message_id)
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT m.message_id, m.contact_id, m.kind, m.campaign_id, m.workflow_id, m.status,"
            " m.detail, m.attempts, m.claimed_at, m.updated_at, m.trace_id, m.purpose,"
            " m.run_id, m.step_id, m.requested_at, p.due_at"
            " FROM messages m LEFT JOIN pending_sends p ON p.message_id = m.message_id"
            " WHERE m.workspace_id = $1 AND m.message_id = $2",
            uuid.UUID(workspace_id),
            key,
        )
        if row is None:
            raise NotFound("message not found")
        history = await conn.fetch(
            "SELECT at, status, detail, attempt, next_attempt_at FROM message_history"
            " WHERE message_id = $1 ORDER BY seq",
            key,
        )
        tracking = await conn.fetch(
            "SELECT at, kind, machine, machine_reason, url FROM message_tracking"
            " WHERE workspace_id = $1 AND message_id = $2 ORDER BY at, event_id",
            uuid.UUID(workspace_id),
            key,
        )
    stages = [
        Stage(h["at"], Status(h["status"]), h["detail"], h["attempt"], h["next_attempt_at"])
        for h in history
    ]
    story = delivery_pb2.MessageStory(
        message_id=str(row["message_id"]),
        status=row["status"],
        detail=row["detail"],
        kind=row["kind"],
        contact_id=str(row["contact_id"]),
        campaign_id=row["campaign_id"],
        workflow_id=row["workflow_id"],
        run_id=row["run_id"],
        step_id=row["step_id"],
        purpose=row["purpose"],
        attempts=row["attempts"],
        trace_id=row["trace_id"],
    )
    story.updated_at.FromDatetime(row["updated_at"])
    story.claimed_at.FromDatetime(row["claimed_at"])
    if row["requested_at"] is not None:
        story.requested_at.FromDatetime(row["requested_at"])
    if row["due_at"] is not None:
        story.next_attempt_at.FromDatetime(row["due_at"])
    decision = eligibility_of(row["kind"], stages)
    story.eligibility.checked = decision.checked
    story.eligibility.eligible = decision.eligible
    story.eligibility.reason = decision.reason
    if decision.at is not None:
        story.eligibility.at.FromDatetime(decision.at)
    for stage in stages:
        out = story.stages.add(status=int(stage.status), detail=stage.detail)
        out.attempt = stage.attempt
        out.at.FromDatetime(stage.at)
        if stage.next_attempt_at is not None:
            out.next_attempt_at.FromDatetime(stage.next_attempt_at)
    for event in tracking:
        seen = story.tracking.add(
            kind=event["kind"],
            machine=event["machine"],
            machine_reason=event["machine_reason"],
            url=event["url"],
        )
        seen.at.FromDatetime(event["at"])
    return story
