"""``/v1/events``: what customers did in the shop (ShopEventService.TrackEvent)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body
from nudge.shop.v1 import shop_pb2

from services.gateway import convert, problems
from services.gateway.deps import BackendsDep, CallerDep
from services.gateway.schemas import EventAccepted, EventIn

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.post(
    "",
    status_code=202,
    response_model=EventAccepted,
    summary="Report a shop event",
    responses=problems.responses(400, 401, 404, 413, 422, 503),
)
async def track_event(
    body: Annotated[EventIn, Body()], caller: CallerDep, backends: BackendsDep
) -> EventAccepted:
    """Accepts one event once per `idempotency_key`: sending it again answers the same
    `event_id` with `duplicate: true`. The contact must exist (404 otherwise). `data` holds
    the fields of the event's type, as in shop.proto."""
    answer: shop_pb2.TrackEventResponse = await caller.call(
        backends.shop_events.TrackEvent,
        convert.track_event_request(body),
        service="contacts",
        fields=convert.event_field,
    )
    return convert.event_accepted_json(answer)
