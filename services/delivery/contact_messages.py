"""A contact's messages (issue 18): DeliveryService.ListContactMessages, behind
``GET /v1/contacts/{id}/messages`` and the console's contact page.

Newest first, a page at a time, each with its outcome and what tracking saw of it
(``message_tracking``: opens and clicks, by people and by machines, counted), in one
statement: the page is a range of the ledger's index by contact (migrations/
0072_messages_by_contact.sql), the counts a lateral aggregate per message of the page.

The page token is the position (claimed_at, message_id) of the page's last message, bound to
the contact: a message claimed meanwhile never shifts a page, and a token of another contact's
list is refused rather than read. Scoped to the caller's workspace; a contact id that is no
UUID is INVALID_ARGUMENT naming ``contact_id``; an unknown contact (delivery does not own
contacts) simply has no messages.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime

import asyncpg
from nudge.delivery.v1 import delivery_pb2

from services.common.errors import Validator
from services.common.ids import is_uuid

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
OPEN = delivery_pb2.TRACKING_EVENT_KIND_OPEN
CLICK = delivery_pb2.TRACKING_EVENT_KIND_CLICK

PAGE = (
    "SELECT m.message_id, m.kind, m.campaign_id, m.workflow_id, m.status, m.detail,"
    " m.attempts, m.claimed_at, m.updated_at, t.human_opens, t.machine_opens,"
    " t.human_clicks, t.machine_clicks"
    " FROM messages m"
    " LEFT JOIN LATERAL ("
    f"  SELECT count(*) FILTER (WHERE kind = {OPEN} AND NOT machine) AS human_opens,"
    f"   count(*) FILTER (WHERE kind = {OPEN} AND machine) AS machine_opens,"
    f"   count(*) FILTER (WHERE kind = {CLICK} AND NOT machine) AS human_clicks,"
    f"   count(*) FILTER (WHERE kind = {CLICK} AND machine) AS machine_clicks"
    "  FROM message_tracking WHERE workspace_id = m.workspace_id AND message_id = m.message_id"
    " ) t ON true"
    " WHERE m.workspace_id = $1 AND m.contact_id = $2"
    "  AND ($3::timestamptz IS NULL OR (m.claimed_at, m.message_id) < ($3, $4::uuid))"
    " ORDER BY m.claimed_at DESC, m.message_id DESC LIMIT $5"
)


def page_token(contact_id: str, row: asyncpg.Record) -> str:
    position = {"c": row["claimed_at"].isoformat(), "m": str(row["message_id"]), "k": contact_id}
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def read_page_token(
    v: Validator, token: str, contact_id: str
) -> tuple[datetime, uuid.UUID] | tuple[None, None]:
    """The position after which the page starts, or (None, None) for the first page."""
    if not token:
        return None, None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        position = json.loads(raw)
        after = (datetime.fromisoformat(position["c"]), uuid.UUID(position["m"]))
        same_contact = position["k"] == contact_id
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        v.check(False, "page_token", "not a page token of this list: pass next_page_token back")
        return None, None
    v.check(same_contact, "page_token", "was made for another contact's messages")
    return after


def _message(row: asyncpg.Record) -> delivery_pb2.ContactMessage:
    out = delivery_pb2.ContactMessage(
        message_id=str(row["message_id"]),
        kind=row["kind"],
        campaign_id=row["campaign_id"],
        workflow_id=row["workflow_id"],
        status=row["status"],
        detail=row["detail"],
        attempts=row["attempts"],
        human_opens=row["human_opens"],
        machine_opens=row["machine_opens"],
        human_clicks=row["human_clicks"],
        machine_clicks=row["machine_clicks"],
    )
    out.claimed_at.FromDatetime(row["claimed_at"])
    out.updated_at.FromDatetime(row["updated_at"])
    return out


async def list_page(
    pool: asyncpg.Pool, workspace_id: str, request: delivery_pb2.ListContactMessagesRequest
) -> delivery_pb2.ListContactMessagesResponse:
    v = Validator()
    v.check(is_uuid(request.contact_id), "contact_id", "not a contact id (a UUID)")
    v.check(
        0 <= request.page_size <= MAX_PAGE_SIZE,
        "page_size",
        f"must be 1-{MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})",
    )
    v.check(len(request.page_token) <= 1000, "page_token", "longer than 1000 characters")
    claimed_at, message_id = read_page_token(v, request.page_token[:1000], request.contact_id)
    v.raise_if_any()
    size = request.page_size or DEFAULT_PAGE_SIZE
    rows = await pool.fetch(
        PAGE,
        uuid.UUID(workspace_id),
        uuid.UUID(request.contact_id),
        claimed_at,
        message_id,
        size + 1,
    )
    token = page_token(request.contact_id, rows[size - 1]) if len(rows) > size else ""
    return delivery_pb2.ListContactMessagesResponse(
        messages=[_message(r) for r in rows[:size]], next_page_token=token
    )
