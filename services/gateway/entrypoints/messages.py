"""``/v1/messages``: what became of one message (DeliveryService.GetMessageStatus)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from nudge.delivery.v1 import delivery_pb2

from services.gateway import convert, problems
from services.gateway.deps import BackendsDep, CallerDep
from services.gateway.schemas import MessageStatusOut

router = APIRouter(prefix="/v1/messages", tags=["messages"])

MessageId = Annotated[str, Path(min_length=1, max_length=200, description="The message's id.")]


@router.get(
    "/{message_id}",
    response_model=MessageStatusOut,
    summary="Get a message's delivery status",
    responses=problems.responses(401, 404, 422, 503),
)
async def get_message_status(
    message_id: MessageId, caller: CallerDep, backends: BackendsDep
) -> MessageStatusOut:
    """Claimed, sent, skipped (and why), bounced or failed."""
    answer: delivery_pb2.GetMessageStatusResponse = await caller.call(
        backends.delivery.GetMessageStatus,
        delivery_pb2.GetMessageStatusRequest(message_id=message_id),
        service="delivery",
    )
    return convert.message_status_json(answer)
