"""``/v1/messages``: what became of one message (DeliveryService.GetMessageStatus), and with
``?explain=true`` its whole story (DeliveryService.ExplainMessage, issue 17);
``/v1/contacts/{id}/messages``: a contact's messages, newest first, with their outcomes and
what tracking saw (DeliveryService.ListContactMessages, issue 18)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from nudge.delivery.v1 import delivery_pb2

from services.gateway import convert, problems
from services.gateway.deps import BackendsDep, CallerDep, SettingsDep
from services.gateway.schemas import (
    UUID_PATTERN,
    ContactMessageList,
    MessageStatusOut,
    MessageStoryOut,
)

router = APIRouter(prefix="/v1/messages", tags=["messages"])
# Delivery keeps contact ids as UUIDs and refuses any other (422): the document says so
# (schemathesis found an id the former pattern allowed and delivery refused).
ContactUuid = Annotated[str, Path(pattern=UUID_PATTERN, description="The contact's id (a UUID).")]
contact_router = APIRouter(prefix="/v1/contacts", tags=["messages"])

MAX_PAGE_SIZE = 100  # as delivery's ListContactMessages allows
MAX_PAGE_TOKEN = 1000
_FIELDS = {"contact_id": "path.contact_id"}

# Every message id is a UUID (deterministic per campaign and contact, or a transactional
# send's), so the document says so: schemathesis found a "schema-valid" id that `explain=true`
# refused.
MessageId = Annotated[str, Path(pattern=UUID_PATTERN, description="The message's id (a UUID).")]
Explain = Annotated[
    bool,
    Query(
        description="Answer the message's story too: its origin, eligibility, every status"
        " with times, tracking events, and its trace (the same as `nudge message ID`)."
    ),
]


@router.get(
    "/{message_id}",
    response_model=MessageStoryOut | MessageStatusOut,
    summary="Get a message's delivery status, or its whole story",
    responses=problems.responses(401, 404, 422, 503),
)
async def get_message_status(
    message_id: MessageId,
    caller: CallerDep,
    backends: BackendsDep,
    settings: SettingsDep,
    explain: Explain = False,
) -> MessageStoryOut | MessageStatusOut:
    """Claimed, sent, skipped (and why), bounced or failed. With `explain=true`, where the
    mail is and how it got there. A malformed id is refused (422, `message_id`)."""
    if explain:
        story: delivery_pb2.MessageStory = await caller.call(
            backends.delivery.ExplainMessage,
            delivery_pb2.ExplainMessageRequest(message_id=message_id),
            service="delivery",
        )
        return convert.message_story_json(story, settings.jaeger_url)
    answer: delivery_pb2.GetMessageStatusResponse = await caller.call(
        backends.delivery.GetMessageStatus,
        delivery_pb2.GetMessageStatusRequest(message_id=message_id),
        service="delivery",
    )
    return convert.message_status_json(answer)


def _contact_messages_field(field: str) -> str:
    """Delivery's request fields, named as the gateway's own validation names them."""
    return _FIELDS.get(field, f"query.{field}")


@contact_router.get(
    "/{contact_id}/messages",
    response_model=ContactMessageList,
    summary="List a contact's messages with their outcomes",
    responses=problems.responses(401, 422, 503),
)
async def list_contact_messages(
    contact_id: ContactUuid,
    caller: CallerDep,
    backends: BackendsDep,
    page_size: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description="At most this many (1-100).")
    ] = 20,
    page_token: Annotated[
        str,
        Query(max_length=MAX_PAGE_TOKEN, description="`next_page_token` of the previous page."),
    ] = "",
) -> ContactMessageList:
    """The messages sent (or not) to a contact, newest first: each with its status and why,
    its campaign or workflow, and the opens and clicks tracking saw, by people and by
    machines. A contact without messages, or unknown, has an empty list; an id that is no
    contact id is refused (422, `path.contact_id`), as is a token not of this list."""
    answer: delivery_pb2.ListContactMessagesResponse = await caller.call(
        backends.delivery.ListContactMessages,
        delivery_pb2.ListContactMessagesRequest(
            contact_id=contact_id, page_size=page_size, page_token=page_token
        ),
        service="delivery",
        fields=_contact_messages_field,
    )
    return convert.contact_messages_json(answer)
