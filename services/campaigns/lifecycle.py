"""A campaign's life after its draft: send (now or at a time), pause, resume, cancel, and the
record of every move.

Every status change goes through ``adapters/postgres.transition()`` (compare and set, plus a
transitions row naming the actor), so a replayed or racing call cannot move a campaign twice:
the second SendCampaign finds it no longer a draft and is refused with its current status.
The fan-out (FANOUT) reacts to the status at its batch boundaries; nothing here touches the
recipients.

SendCampaign refuses, before any write:
- content that cannot be sent (``content.send_blockers()``), as field violations;
- a workspace the anti-spam guard suspended (delivery's GetSendingStatus), with its reason;
- a missing or stale consent confirmation (``needs_confirmation``): with the workspace's
  "only consented" setting off, the manager must confirm the number of contacts without
  consent who would be mailed; a different number means the audience changed.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.campaigns.v1 import campaigns_pb2
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc

from services.campaigns import audience
from services.campaigns import settings as campaign_settings
from services.campaigns.adapters import postgres as db
from services.campaigns.domain import content
from services.campaigns.domain.model import PURPOSE_MARKETING, Status, allowed_from
from services.campaigns.handlers import campaign_key
from services.campaigns.ports import Ports
from services.common import campaign_limits as limits
from services.common import clock
from services.common.auth import internal_metadata
from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    Validator,
)

log = logging.getLogger(__name__)

# The earliest wall clock on Earth: a local-time campaign starts when its wall-clock time
# comes here (Line Islands), and the fan-out holds each contact until its own zone's.
EARLIEST_ZONE = timezone(timedelta(hours=14))
_NOT_ANSWERING = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_TIMEOUT_S = 10.0


def local_start(scheduled_at: datetime, time_zone: str) -> datetime:
    """When a local-time campaign scheduled at ``scheduled_at`` (an instant; its wall-clock
    time in ``time_zone`` is the one every contact gets) must start: that wall-clock time in
    UTC+14, the first zone to reach it."""
    wall = scheduled_at.astimezone(ZoneInfo(time_zone)).replace(tzinfo=None)
    return wall.replace(tzinfo=EARLIEST_ZONE)


async def _rpc_failed(err: grpc.aio.AioRpcError, service: str) -> None:
    """A dependency that does not answer is UNAVAILABLE (retry); anything else is our fault."""
    if err.code() in _NOT_ANSWERING:
        log.warning("%s answered %s: %s", service, err.code().name, err.details())
        raise Unavailable(f"cannot ask {service} now: {err.code().name}") from err
    raise err


async def suspension_reason(ports: Ports, workspace_id: str) -> str | None:
    """Why the anti-spam guard stops the workspace from sending, or None."""
    stub = delivery_pb2_grpc.DeliveryServiceStub(ports.delivery)
    try:
        status: delivery_pb2.SendingStatus = await stub.GetSendingStatus(
            delivery_pb2.GetSendingStatusRequest(),
            metadata=internal_metadata(ports.settings.internal_token, workspace_id),
            timeout=_TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as err:
        await _rpc_failed(err, "delivery")
        raise
    return (status.reason or "suspended") if status.suspended else None


async def needs_confirmation(ports: Ports, campaign: campaigns_pb2.Campaign) -> int:
    """How many contacts without consent for the campaign's purpose it would mail: the number
    SendCampaign's confirm_not_consented must repeat; 0 when none, or when the workspace's
    "only consented" setting leaves them out (no confirmation is needed then).

    It is the audience preview's own ``not_consented`` (services/campaigns/audience.py,
    the stream the fan-out reads), so the number a manager confirms is the number the
    preview showed, counted the same way."""
    try:
        preview = await audience.preview_audience(ports, campaign.workspace_id, campaign.id)
    except grpc.aio.AioRpcError as err:
        await _rpc_failed(err, "contacts, segmentation or delivery")
        raise
    return preview.not_consented


async def _find(ports: Ports, workspace_id: str, campaign_id: str) -> campaigns_pb2.Campaign:
    key = campaign_key(campaign_id)
    async with ports.pool.acquire() as conn:
        row = await db.find_campaign(conn, workspace_id, key)
    if row is None:
        raise NotFound("campaign not found")
    return db.campaign_to_proto(row)


def _status_name(status: int) -> str:
    try:
        return Status(status).name.lower()
    except ValueError:
        return "unknown"


def _send_at(v: Validator, send_at: Timestamp | None, has: bool, now: datetime) -> datetime | None:
    if not has or send_at is None:
        return None
    when = v.timestamp(send_at, "send_at")
    if when is not None:
        v.check(when > now, "send_at", "is in the past: choose a time to come (or none: now)")
        v.check(
            when <= now + timedelta(days=366),
            "send_at",
            "is more than a year away",
        )
    return when


async def send_campaign(
    ports: Ports,
    workspace_id: str,
    request: campaigns_pb2.SendCampaignRequest,
    actor: str,
) -> campaigns_pb2.Campaign:
    """Draft -> scheduled (send_at) or sending (now), once every check passes."""
    now = clock.now()
    v = Validator()
    when = _send_at(v, request.send_at, request.HasField("send_at"), now)
    v.check(request.confirm_not_consented >= 0, "confirm_not_consented", "must not be negative")
    v.raise_if_any()
    campaign = await _find(ports, workspace_id, request.campaign_id)
    if campaign.status != int(Status.DRAFT):
        # A replayed send lands here: refused, not doubled.
        raise FailedPrecondition(
            f"only a draft can be sent; this campaign is {_status_name(campaign.status)}"
        )
    blockers = content.send_blockers(
        campaign.subject,
        campaign.body_text,
        campaign.body_html,
        campaign.body_markdown,
        tuple(campaign.ab_test.subjects) if campaign.HasField("ab_test") else (),
    )
    if blockers:
        raise InvalidArgument([FieldViolation(f, m) for f, m in blockers])
    reason = await suspension_reason(ports, workspace_id)
    if reason is not None:
        raise FailedPrecondition(f"sending is suspended by the anti-spam guard: {reason}")
    not_consented = await needs_confirmation(ports, campaign)
    if not_consented and request.confirm_not_consented != not_consented:
        if request.confirm_not_consented == 0:
            raise FailedPrecondition(
                f"{_not_consented(not_consented)} consented to"
                f" {_purpose_name(campaign.purpose)}: confirm by sending"
                f" confirm_not_consented = {not_consented}"
            )
        raise FailedPrecondition(
            f"confirm_not_consented is {request.confirm_not_consented}, but"
            f" {_not_consented(not_consented)} consented now: the audience"
            " changed, look again and confirm the new number"
        )
    time_zone = (
        campaign.time_zone or (await campaign_settings.read(ports.pool, workspace_id)).time_zone
    )
    to = Status.SCHEDULED if when is not None else Status.SENDING
    starts_at = None
    if when is not None:
        starts_at = local_start(when, time_zone) if campaign.local_time else when
    key = uuid.UUID(campaign.id)
    note = f"scheduled for {when.isoformat()}" if when is not None else ""
    async with ports.pool.acquire() as conn, conn.transaction():
        moved = await db.transition(conn, workspace_id, key, (Status.DRAFT,), to, actor, note, now)
        if moved is None:
            current = await db.find_campaign(conn, workspace_id, key)
            raise FailedPrecondition(
                "only a draft can be sent; this campaign is "
                + _status_name(current["status"] if current else 0)
            )
        await db.set_schedule(
            conn, workspace_id, key, scheduled_at=when, starts_at=starts_at, time_zone=time_zone
        )
    log.info("campaign %s of %s: draft -> %s by %s", key, workspace_id, to.name, actor)
    return await _find(ports, workspace_id, campaign.id)


def _not_consented(n: int) -> str:
    """The warning's subject in the number's grammar ("1 contact ... has not")."""
    if n == 1:
        return "1 contact of this audience has not"
    return f"{n} contacts of this audience have not"


def _purpose_name(purpose: int) -> str:
    return "marketing" if purpose == PURPOSE_MARKETING else "targeted messages"


# The refusal of each manager's move, by the status it finds (any other: "is <status>").
_REFUSALS: dict[Status, dict[Status, str]] = {
    Status.SENDING: {  # resume
        Status.CANCELLED: "cancelled campaigns cannot be resumed",
        Status.SENT: "sent campaigns cannot be resumed",
    },
}


async def move(
    ports: Ports,
    workspace_id: str,
    campaign_id: str,
    to: Status,
    actor: str,
    note: str,
    *,
    only_from: tuple[Status, ...] | None = None,
    verb: str,
) -> campaigns_pb2.Campaign:
    """Pause, resume or cancel: the move if the campaign's status allows it, else
    FAILED_PRECONDITION naming the status it is in."""
    v = Validator()
    v.check(len(note) <= limits.MAX_NOTE, "note", f"longer than {limits.MAX_NOTE} characters")
    v.check("\x00" not in note, "note", "must not contain NUL characters")
    key = campaign_key(campaign_id)
    v.raise_if_any()
    allowed = only_from or allowed_from(to)
    async with ports.pool.acquire() as conn:
        moved = await db.transition(
            conn, workspace_id, key, allowed, to, actor, note, clock.now(), status_reason=note
        )
        if moved is None:
            row = await db.find_campaign(conn, workspace_id, key)
            if row is None:
                raise NotFound("campaign not found")
            status = Status(row["status"])
            message = _REFUSALS.get(to, {}).get(status)
            raise FailedPrecondition(
                message or f"cannot {verb} a campaign that is {status.name.lower()}"
            )
    log.info("campaign %s of %s: %s -> %s by %s", key, workspace_id, moved.name, to.name, actor)
    return await _find(ports, workspace_id, campaign_id)


async def pause(
    ports: Ports, workspace_id: str, campaign_id: str, actor: str, note: str
) -> campaigns_pb2.Campaign:
    return await move(
        ports,
        workspace_id,
        campaign_id,
        Status.PAUSED,
        actor,
        note,
        only_from=(Status.SENDING,),
        verb="pause",
    )


async def resume(
    ports: Ports, workspace_id: str, campaign_id: str, actor: str, note: str
) -> campaigns_pb2.Campaign:
    return await move(
        ports,
        workspace_id,
        campaign_id,
        Status.SENDING,
        actor,
        note,
        only_from=(Status.PAUSED,),
        verb="resume",
    )


async def cancel(
    ports: Ports, workspace_id: str, campaign_id: str, actor: str, note: str
) -> campaigns_pb2.Campaign:
    return await move(
        ports, workspace_id, campaign_id, Status.CANCELLED, actor, note, verb="cancel"
    )


async def list_transitions(
    pool: asyncpg.Pool, workspace_id: str, campaign_id: str
) -> campaigns_pb2.ListTransitionsResponse:
    """Every move of the campaign, oldest first; another workspace's campaign is not found."""
    key = campaign_key(campaign_id)
    async with pool.acquire() as conn:
        if await db.find_campaign(conn, workspace_id, key) is None:
            raise NotFound("campaign not found")
        rows = await db.list_transitions(conn, workspace_id, key)
    answer = campaigns_pb2.ListTransitionsResponse()
    for r in rows:
        t = answer.transitions.add(
            from_status=r["from_status"], to_status=r["to_status"], actor=r["actor"], note=r["note"]
        )
        t.at.FromDatetime(r["at"])
    return answer
