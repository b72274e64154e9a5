"""``/v1/sending-status``: whether the anti-spam guard suspended the workspace's sending, why,
and the figures of the rolling window it judges (DeliveryService.GetSendingStatus).

Lifting a suspension is an operator's act (the admin token, over gRPC): there is no route
for it here, where every caller holds a workspace's API key. docs/anti-spam-guard.md.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from nudge.delivery.v1 import delivery_pb2
from pydantic import Field

from services.gateway import problems
from services.gateway.deps import BackendsDep, CallerDep
from services.gateway.schemas import ResponseModel

router = APIRouter(prefix="/v1/sending-status", tags=["messages"])


class SendingStatusOut(ResponseModel):
    suspended: bool = Field(description="Sending is suspended until an operator lifts it.")
    reason: str = Field(description="Why, with the figures; empty when not suspended.")
    suspended_at: datetime | None
    window_seconds: int = Field(description="The rolling window the rates are computed over.")
    window_sent: int = Field(description="Mails handed to the SMTP server in the window.")
    window_hard_bounces: int
    window_complaints: int = Field(description="Spam reports (feedback loops) in the window.")
    hard_bounce_rate: float = Field(description="window_hard_bounces / window_sent (0 to 1).")
    complaint_rate: float = Field(description="window_complaints / window_sent (0 to 1).")


def sending_status_json(answer: delivery_pb2.SendingStatus) -> SendingStatusOut:
    return SendingStatusOut(
        suspended=answer.suspended,
        reason=answer.reason,
        suspended_at=(
            answer.suspended_at.ToDatetime(tzinfo=UTC) if answer.HasField("suspended_at") else None
        ),
        window_seconds=answer.window_seconds,
        window_sent=answer.window_sent,
        window_hard_bounces=answer.window_hard_bounces,
        window_complaints=answer.window_complaints,
        hard_bounce_rate=answer.hard_bounce_rate,
        complaint_rate=answer.complaint_rate,
    )


@router.get(
    "",
    response_model=SendingStatusOut,
    summary="Get the workspace's sending status (the anti-spam guard)",
    responses=problems.responses(401, 503),
)
async def get_sending_status(caller: CallerDep, backends: BackendsDep) -> SendingStatusOut:
    """Suspended or not, why, and the window's mails, hard bounces and complaints."""
    answer: delivery_pb2.SendingStatus = await caller.call(
        backends.delivery.GetSendingStatus,
        delivery_pb2.GetSendingStatusRequest(),
        service="delivery",
    )
    return sending_status_json(answer)
