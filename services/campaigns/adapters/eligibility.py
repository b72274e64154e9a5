"""What decides who of an audience is mailed, outside the campaign: contacts' eligibility
answers (consent, suppression, the contact's name and zone), the workspace's frequency cap
(campaigns' own ``settings`` and ``recipients`` tables) and the campaign's audience fields.

The eligibility of a batch is asked :data:`MAX_CHECKS` contacts a call, the calls of a batch
at once: the stream waits for the slowest call of a batch, not for their sum."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc

from services.common.auth import internal_metadata
from services.common.db import id_array
from services.common.errors import Unavailable

log = logging.getLogger(__name__)

# CheckEligibilityBatch's own limit (services/contacts/consent.py MAX_ELIGIBILITY_CHECKS).
MAX_CHECKS = 1000
TIMEOUT_S = 30

_NOT_ANSWERING = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

Answer = contacts_pb2.CheckEligibilityResponse | None  # None: no such contact (erased)


class Eligibility:
    """Contacts' ``CheckEligibilityBatch`` for one workspace and purpose."""

    def __init__(
        self, channel: grpc.aio.Channel, internal_token: str, workspace_id: str, purpose: int
    ) -> None:
        self._stub = contacts_pb2_grpc.ConsentServiceStub(channel)
        self._metadata = internal_metadata(internal_token, workspace_id)
        self._purpose = purpose

    async def check(self, contact_ids: Sequence[str]) -> list[Answer]:
        """The answer of each contact, in order, from ``ceil(n / MAX_CHECKS)`` calls in
        flight together."""
        chunks = _chunks(contact_ids)
        responses = await asyncio.gather(*(self._call(c, False) for c in chunks))
        answers: list[Answer] = []
        for chunk, response in zip(chunks, responses, strict=True):
            if len(response.answers) != len(chunk):
                raise RuntimeError(f"contacts answered {len(response.answers)} of {len(chunk)}")
            answers.extend(a.eligibility if a.found else None for a in response.answers)
        return answers

    async def exceptions(self, contact_ids: Sequence[str]) -> dict[str, Answer]:
        """The answers of the contacts that are not plainly mailable (not found: None), by
        contact id; every contact left out is found, eligible, consenting and has an address
        (contacts' ``exceptions_only``). A fan-out's audience is mostly mailable, so this
        spares contacts a million answers to fill and send, and us to read."""
        responses = await asyncio.gather(*(self._call(c, True) for c in _chunks(contact_ids)))
        return {
            a.contact_id: a.eligibility if a.found else None
            for response in responses
            for a in response.answers
        }

    async def _call(
        self, contact_ids: Sequence[str], exceptions_only: bool
    ) -> contacts_pb2.CheckEligibilityBatchResponse:
        purpose = self._purpose
        request = contacts_pb2.CheckEligibilityBatchRequest(exceptions_only=exceptions_only)
        add = request.checks.add  # half the cost of a message object per check, then a list
        for c in contact_ids:
            add(contact_id=c, purpose=purpose)
        try:
            response: contacts_pb2.CheckEligibilityBatchResponse = (
                await self._stub.CheckEligibilityBatch(
                    request, metadata=self._metadata, timeout=TIMEOUT_S
                )
            )
        except grpc.aio.AioRpcError as err:
            if err.code() not in _NOT_ANSWERING:
                raise
            log.warning("contacts answered %s: %s", err.code().name, err.details())
            raise Unavailable(f"cannot check eligibility now: {err.code().name}") from err
        return response


def _chunks(contact_ids: Sequence[str]) -> list[Sequence[str]]:
    return [
        contact_ids[start : start + MAX_CHECKS] for start in range(0, len(contact_ids), MAX_CHECKS)
    ]


async def only_consented(channel: grpc.aio.Channel, internal_token: str, workspace_id: str) -> bool:
    """The workspace's "only consented" setting (contacts' consent_required_for_campaigns)."""
    try:
        settings: contacts_pb2.WorkspaceSettings = await contacts_pb2_grpc.WorkspaceServiceStub(
            channel
        ).GetWorkspaceSettings(
            contacts_pb2.GetWorkspaceSettingsRequest(),
            metadata=internal_metadata(internal_token, workspace_id),
            timeout=TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as err:
        if err.code() not in _NOT_ANSWERING:
            raise
        raise Unavailable(f"cannot read the workspace's settings now: {err.code().name}") from err
    return settings.consent_required_for_campaigns


# ---------------------------------------------------------------- campaigns' own tables


@dataclass(frozen=True)
class CapSettings:
    messages: int
    days: int
    time_zone: str


DEFAULT_CAP = CapSettings(messages=1, days=30, time_zone="UTC")


async def cap_settings(conn: asyncpg.Connection, workspace_id: str) -> CapSettings:
    """The workspace's campaign settings; the defaults (1 message per 30 days, UTC) when it
    never set them."""
    row = await conn.fetchrow(
        "SELECT frequency_cap_messages, frequency_cap_days, time_zone FROM settings"
        " WHERE workspace_id = $1",
        uuid.UUID(workspace_id),
    )
    if row is None:
        return DEFAULT_CAP
    return CapSettings(
        messages=row["frequency_cap_messages"],
        days=row["frequency_cap_days"],
        time_zone=row["time_zone"] or "UTC",
    )


async def capped(
    conn: asyncpg.Connection,
    workspace_id: str,
    campaign_id: uuid.UUID,
    contact_ids: Sequence[str],
    cap: CapSettings,
    now: datetime,
) -> dict[str, datetime]:
    """The contacts the cap holds back now, each with the moment it lets them through.

    A contact is capped when it was mailed ``cap.messages`` times or more by OTHER campaigns
    within the last ``cap.days`` days (its rows of this campaign are this send itself); the
    cap lets it through when the ``cap.messages``-th most recent of them leaves the window.
    One query per batch, a probe of ``recipients_by_contact`` per contact (the most recent
    ``cap.messages`` rows, newest first, stopping there). Written as a lateral join rather than
    ``contact_id = ANY($2)``: with that, once asyncpg's prepared statement went generic (its
    sixth run), PostgreSQL planned a parallel sequential scan of the whole of ``recipients``
    for every batch while a fan-out was filling it (0.6-1 s a batch of 5,000; 85 s for a
    1,000,000-contact send against 5.6 s this way, bench/RESULTS.md)."""
    if cap.messages <= 0 or cap.days <= 0 or not contact_ids:
        return {}
    window = timedelta(days=cap.days)
    rows = await conn.fetch(
        "SELECT q.c::text AS contact_id, r.nth"
        " FROM unnest(uuids($2)) AS q(c)"
        " CROSS JOIN LATERAL (SELECT min(t.requested_at) AS nth, count(*) AS n FROM"
        "  (SELECT requested_at FROM recipients"
        "   WHERE workspace_id = $1 AND contact_id = q.c"
        "   AND excluded IS NULL AND requested_at IS NOT NULL AND requested_at > $4"
        "   AND campaign_id <> $3"
        "   ORDER BY requested_at DESC LIMIT $5) t) r"
        " WHERE r.n >= $5",
        uuid.UUID(workspace_id),
        id_array(contact_ids),
        campaign_id,
        now - window,
        cap.messages,
    )
    return {row["contact_id"]: row["nth"] + window for row in rows}


async def campaign_audience_row(
    conn: asyncpg.Connection, workspace_id: str, campaign_id: uuid.UUID
) -> asyncpg.Record | None:
    """The columns of a campaign the audience is made of (None: not this workspace's)."""
    return await conn.fetchrow(
        "SELECT id, workspace_id, segment_ids, exclude_segment_ids, tags_any, purpose,"
        " cap_action, local_time, time_zone, scheduled_at, holdout_percent, ab_test"
        " FROM campaigns WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace_id),
        campaign_id,
    )


def ab_test_of(raw: object) -> dict[str, object] | None:
    """The ab_test column as a dict (asyncpg returns jsonb as text without a codec)."""
    if raw is None:
        return None
    value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    return value if isinstance(value, dict) else None


async def sending_status(
    channel: grpc.aio.Channel, internal_token: str, workspace_id: str
) -> delivery_pb2.SendingStatus:
    """Delivery's anti-spam guard for the workspace (services/delivery/guard.py): while it is
    suspended, SendCampaign is refused, so the preview says so before the manager tries."""
    try:
        status: delivery_pb2.SendingStatus = await delivery_pb2_grpc.DeliveryServiceStub(
            channel
        ).GetSendingStatus(
            delivery_pb2.GetSendingStatusRequest(),
            metadata=internal_metadata(internal_token, workspace_id),
            timeout=TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as err:
        if err.code() not in _NOT_ANSWERING:
            raise
        raise Unavailable(f"cannot read the sending status now: {err.code().name}") from err
    return status
