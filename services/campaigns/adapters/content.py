"""What the content part of campaigns reads and writes: a campaign's content, the contact and
workspace facts contacts answers, the test sends table, and delivery.requests.v1."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2

from services.common.auth import internal_metadata
from services.common.errors import FieldViolation, InvalidArgument, Unavailable
from services.common.events import new_envelope
from services.common.kafka import KafkaPublisher
from services.common.topics import DELIVERY_REQUESTS

CONTACTS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CampaignContent:
    campaign_id: uuid.UUID
    subject: str
    body_text: str
    body_html: str
    body_markdown: str
    reply_to: str
    purpose: int
    ab_subjects: tuple[str, ...]


async def find_content(
    conn: asyncpg.Connection, workspace_id: str, campaign_id: uuid.UUID, *, lock: bool = False
) -> CampaignContent | None:
    """The campaign's content; ``lock`` takes its row (test sends of a campaign, one at a
    time, so that two concurrent ones cannot both pass the hourly limit). Its Reply-To is the
    workspace's default when it names none, as the fan-out sends it (fanout.py)."""
    row = await conn.fetchrow(
        "SELECT id, subject, body_text, body_html, body_markdown, purpose,"
        " coalesce(nullif(reply_to, ''), (SELECT s.default_reply_to FROM settings s"
        " WHERE s.workspace_id = campaigns.workspace_id), '') AS reply_to,"
        " ARRAY(SELECT jsonb_array_elements_text(ab_test -> 'subjects')) AS ab_subjects"
        " FROM campaigns WHERE workspace_id = $1 AND id = $2" + (" FOR UPDATE" if lock else ""),
        uuid.UUID(workspace_id),
        campaign_id,
    )
    if row is None:
        return None
    return CampaignContent(
        campaign_id=row["id"],
        subject=row["subject"],
        body_text=row["body_text"],
        body_html=row["body_html"],
        body_markdown=row["body_markdown"],
        reply_to=row["reply_to"],
        purpose=row["purpose"],
        ab_subjects=tuple(row["ab_subjects"] or ()),
    )


async def test_sends_since(
    conn: asyncpg.Connection, workspace_id: str, campaign_id: uuid.UUID, since: datetime
) -> int:
    count = await conn.fetchval(
        "SELECT count(*) FROM test_sends"
        " WHERE workspace_id = $1 AND campaign_id = $2 AND sent_at > $3",
        uuid.UUID(workspace_id),
        campaign_id,
        since,
    )
    return int(count or 0)


async def record_test_send(
    conn: asyncpg.Connection,
    workspace_id: str,
    campaign_id: uuid.UUID,
    message_id: str,
    email: str,
    variant: int,
    now: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO test_sends (workspace_id, campaign_id, message_id, email, variant, sent_at)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        uuid.UUID(workspace_id),
        campaign_id,
        uuid.UUID(message_id),
        email,
        variant,
        now,
    )


class ContactsFacts:
    """Contacts' answers the content part needs: a contact's fields (its eligibility answer,
    whatever the answer: a preview or a test send mails no contact) and the workspace's name."""

    def __init__(self, channel: grpc.aio.Channel, internal_token: str) -> None:
        self._consent = contacts_pb2_grpc.ConsentServiceStub(channel)
        self._workspaces = contacts_pb2_grpc.WorkspaceServiceStub(channel)
        self._token = internal_token

    async def contact(
        self, workspace_id: str, contact_id: str, purpose: int
    ) -> contacts_pb2.CheckEligibilityResponse:
        """Raises InvalidArgument on ``contact_id`` for a contact that does not exist in
        ``workspace_id``: the campaign is there, the request names nobody (HTTP 422, not a
        404 that would read as the campaign missing)."""
        try:
            answer: contacts_pb2.CheckEligibilityResponse = await self._consent.CheckEligibility(
                contacts_pb2.CheckEligibilityRequest(contact_id=contact_id, purpose=purpose),  # type: ignore[arg-type]
                metadata=internal_metadata(self._token, workspace_id),
                timeout=CONTACTS_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise InvalidArgument(
                    FieldViolation("contact_id", "no such contact in this workspace")
                ) from err
            raise Unavailable(f"contacts did not answer: {err.code().name}") from err
        return answer

    async def workspace_name(self, workspace_id: str) -> str:
        try:
            answer: contacts_pb2.WorkspaceSettings = await self._workspaces.GetWorkspaceSettings(
                contacts_pb2.GetWorkspaceSettingsRequest(),
                metadata=internal_metadata(self._token, workspace_id),
                timeout=CONTACTS_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as err:
            raise Unavailable(f"contacts did not answer: {err.code().name}") from err
        return answer.name


class TestSendPublisher:
    """Publishes test sends to delivery.requests.v1 directly (no outbox): a test send is
    answered only once the broker has it, and one that fails is refused to the caller, who
    may try again; nothing else in campaigns changes with it but its ``test_sends`` row,
    written in the same transaction and rolled back when the publish fails."""

    def __init__(self, publisher: KafkaPublisher) -> None:
        self._publisher = publisher

    async def publish(self, workspace_id: str, request: delivery_pb2.DeliveryRequested) -> None:
        envelope = new_envelope(workspace_id, request, event_id=request.message_id)
        # Keyed like every delivery request, by contact; the sample contact has none.
        key = request.contact_id or request.message_id
        try:
            await self._publisher.publish(DELIVERY_REQUESTS, key, envelope)
        except Exception as err:
            raise Unavailable(f"the test message could not be queued: {err!r}") from err
