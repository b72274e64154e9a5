"""``/v1/events``: what customers did in the shop (ShopEventService.TrackEvent and
TrackEvents)."""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, Request
from nudge.shop.v1 import shop_pb2
from pydantic import TypeAdapter, ValidationError

from services.gateway import convert, problems
from services.gateway.adapters.grpc import Backends
from services.gateway.adapters.ingest_batcher import IngestBatcher
from services.gateway.deps import BackendsDep, CallerDep, name_ids
from services.gateway.event_schemas import EventBatchIn, EventBatchOut, EventResult
from services.gateway.schemas import EventAccepted, EventIn

router = APIRouter(prefix="/v1/events", tags=["events"])

_EVENT: TypeAdapter[Any] = TypeAdapter(cast(Any, EventIn))

_STATUS = {
    shop_pb2.TRACK_EVENT_STATUS_ACCEPTED: "accepted",
    shop_pb2.TRACK_EVENT_STATUS_DUPLICATE: "duplicate",
    shop_pb2.TRACK_EVENT_STATUS_CONFLICT: "conflict",
    shop_pb2.TRACK_EVENT_STATUS_INVALID: "invalid",
    shop_pb2.TRACK_EVENT_STATUS_CONTACT_NOT_FOUND: "contact_not_found",
}


@router.post(
    "",
    status_code=202,
    response_model=EventAccepted,
    summary="Report a shop event",
    responses=problems.responses(400, 401, 404, 409, 413, 422, 503),
)
async def track_event(
    body: Annotated[EventIn, Body()], caller: CallerDep, request: Request
) -> EventAccepted:
    """Accepts one event once per `idempotency_key`: sending the same event again answers
    the same `event_id` with `duplicate: true`; sending another event (another type, data or
    contact) with a key already used is a 409 naming the key. The contact must exist (404
    otherwise). `data` holds the fields of the event's type, as in shop.proto."""
    # Concurrent requests share TrackEvents calls (see adapters/ingest_batcher.py); each
    # still gets the answer (or the problem) TrackEvent would have given it.
    answer = await ingest_batcher(request).track(
        caller.metadata, caller.timeout_s, convert.track_event_request(body)
    )
    name_ids(answer)  # the contact the event resolved to, on this request's span
    return convert.event_accepted_json(answer)


def ingest_batcher(request: Request) -> IngestBatcher:
    """The app's batcher, made on first use for the app's backends (tests swap them)."""
    state = request.app.state
    backends = cast(Backends, state.backends)
    batcher: IngestBatcher | None = getattr(state, "ingest_batcher", None)
    if batcher is None or batcher.stub is not backends.shop_events:
        batcher = state.ingest_batcher = IngestBatcher(backends.shop_events)
    return batcher


@router.post(
    ":batch",
    status_code=200,
    response_model=EventBatchOut,
    response_model_exclude_none=True,
    summary="Report up to 1,000 shop events",
    responses=problems.responses(400, 401, 413, 422, 503),
)
async def track_events(
    body: Annotated[EventBatchIn, Body()], caller: CallerDep, backends: BackendsDep
) -> EventBatchOut:
    """Each event as for `POST /v1/events`, judged on its own: the answer has one result per
    event, in order, and an invalid event (or one of an unknown contact, or one whose key
    was used for a different event) is refused alone without keeping the others out. The
    accepted events are written in one transaction. Retrying the whole batch is safe: the
    events already accepted come back as `duplicate`."""
    results: list[EventResult | None] = [None] * len(body.events)
    requests: list[shop_pb2.TrackEventRequest] = []
    positions: list[int] = []
    for index, raw in enumerate(body.events):
        try:
            event = _EVENT.validate_python(raw)
        except ValidationError as err:
            located = [{**e, "loc": ("body", *e["loc"])} for e in err.errors()]
            results[index] = EventResult(
                index=index,
                status="invalid",
                errors=problems.validation_problem(located).details.errors,
            )
            continue
        requests.append(convert.track_event_request(event))
        positions.append(index)
    # Called even when every event was refused here: contacts authenticates the key, so a
    # batch of nothing but invalid events still answers 401 to a bad key, never 200.
    answer: shop_pb2.TrackEventsResponse = await caller.call(
        backends.shop_events.TrackEvents,
        shop_pb2.TrackEventsRequest(events=requests),
        service="contacts",
    )
    for index, result in zip(positions, answer.results, strict=True):
        results[index] = _result_json(index, result)
    done = [r for r in results if r is not None]
    accepted = sum(r.status == "accepted" for r in done)
    duplicates = sum(r.status == "duplicate" for r in done)
    return EventBatchOut(
        accepted=accepted,
        duplicates=duplicates,
        rejected=len(done) - accepted - duplicates,
        results=done,
    )


def _result_json(index: int, result: shop_pb2.TrackEventResult) -> EventResult:
    status = _STATUS.get(result.status, "invalid")
    return EventResult(
        index=index,
        status=status,
        event_id=result.event_id or None,
        contact_id=result.contact_id or None,
        detail=result.detail or None,
        errors=[
            problems.FieldError(field=convert.event_field(v.field), message=v.description)
            for v in result.violations
        ]
        or None,
    )
