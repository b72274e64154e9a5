"""The JSON of ``POST /v1/events:batch``: many events in, one result per event out.

The events inside a batch are validated one by one (with the models of ``POST /v1/events``),
not by the request model, so that an invalid event is answered in its own result instead of
refusing the whole batch; only a body that is not ``{"events": [objects]}`` of 1-1,000
events is refused as a whole (422, or 413 above the byte limit).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from services.gateway.problems import FieldError
from services.gateway.schemas import StrictModel

MAX_BATCH_EVENTS = 1000

EventStatus = Literal["accepted", "duplicate", "conflict", "invalid", "contact_not_found"]


class EventBatchIn(StrictModel):
    events: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_BATCH_EVENTS,
        description="1-1,000 events, each as the body of `POST /v1/events`.",
    )


class EventResult(BaseModel):
    index: int = Field(description="Position of the event in the request.")
    status: EventStatus = Field(
        description="`accepted`: new, queued. `duplicate`: its key was seen with the same event"
        " (a no-op). `conflict`: its key was used for a different event. `invalid`: see"
        " `errors`. `contact_not_found`: create the contact first. Only `accepted` writes."
    )
    event_id: str | None = Field(None, description="The event holding the key.")
    contact_id: str | None = None
    detail: str | None = Field(None, description="Why, for conflicts and refusals.")
    errors: list[FieldError] | None = Field(
        None, description="Invalid fields, named inside the event (`data.total.currency`)."
    )


class EventBatchOut(BaseModel):
    accepted: int
    duplicates: int
    rejected: int = Field(description="Invalid, conflicting or of unknown contacts.")
    results: list[EventResult]
