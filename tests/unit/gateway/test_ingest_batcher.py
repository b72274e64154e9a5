"""The gateway's coalescing of single events (pure logic, with a contacts stand-in that
answers when the test lets it): requests that arrive while calls are in flight share one
TrackEvents call, and each gets the answer TrackEvent would have given it."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from nudge.shop.v1 import shop_pb2

from services.gateway.adapters.ingest_batcher import EVENT_TRACEPARENTS, IngestBatcher
from services.gateway.problems import Problem
from tests.support import eventually

META = (("authorization", "Bearer k"),)


class HeldContacts:
    """Answers TrackEvent/TrackEvents only once ``release`` is set; records every call."""

    def __init__(self, results: dict[str, shop_pb2.TrackEventResult]) -> None:
        self.results = results
        self.release = asyncio.Event()
        self.calls: list[tuple[str, list[str], dict[str, str]]] = []
        self.fail_with: grpc.aio.AioRpcError | None = None

    async def TrackEvent(self, request: Any, *, metadata: Any, timeout: float) -> Any:
        self.calls.append(("TrackEvent", [request.idempotency_key], dict(metadata)))
        await self.release.wait()
        result = self.results[request.idempotency_key]
        return shop_pb2.TrackEventResponse(event_id=result.event_id, contact_id="c")

    async def TrackEvents(self, request: Any, *, metadata: Any, timeout: float) -> Any:
        keys = [e.idempotency_key for e in request.events]
        self.calls.append(("TrackEvents", keys, dict(metadata)))
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return shop_pb2.TrackEventsResponse(results=[self.results[k] for k in keys])


def event(key: str) -> shop_pb2.TrackEventRequest:
    return shop_pb2.TrackEventRequest(idempotency_key=key)


RESULTS = {
    "ok": shop_pb2.TrackEventResult(
        status=shop_pb2.TRACK_EVENT_STATUS_ACCEPTED, event_id="e-ok", contact_id="c"
    ),
    "dup": shop_pb2.TrackEventResult(
        status=shop_pb2.TRACK_EVENT_STATUS_DUPLICATE, event_id="e-dup", contact_id="c"
    ),
    "conflict": shop_pb2.TrackEventResult(
        status=shop_pb2.TRACK_EVENT_STATUS_CONFLICT, event_id="e-x", detail="key 'conflict' used"
    ),
    "missing": shop_pb2.TrackEventResult(
        status=shop_pb2.TRACK_EVENT_STATUS_CONTACT_NOT_FOUND, detail="contact not found"
    ),
    "invalid": shop_pb2.TrackEventResult(
        status=shop_pb2.TRACK_EVENT_STATUS_INVALID,
        detail="event.order_placed.order_id: is required",
        violations=[
            shop_pb2.FieldViolation(field="event.order_placed.order_id", description="is required")
        ],
    ),
}


async def blocked_batcher(
    contacts: HeldContacts, first: list[str]
) -> tuple[IngestBatcher, list[asyncio.Task[Any]]]:
    """A batcher whose two call slots are taken by the events ``first`` (held by contacts)."""
    batcher = IngestBatcher(contacts, max_in_flight=2)  # type: ignore[arg-type]
    tasks = [asyncio.create_task(batcher.track(META, 5.0, event(k))) for k in first]
    await eventually(lambda: len(contacts.calls) == len(first), timeout=10)
    return batcher, tasks


async def test_requests_arriving_while_calls_are_in_flight_share_one_call_each_answered() -> None:
    contacts = HeldContacts({**RESULTS, "a": RESULTS["ok"], "b": RESULTS["ok"]})
    batcher, first = await blocked_batcher(contacts, ["a", "b"])
    keys = ["ok", "dup", "conflict", "missing", "invalid"] * 4
    rest = [asyncio.create_task(batcher.track(META, 5.0, event(k))) for k in keys]
    await eventually(lambda: batcher.queued == len(keys), timeout=10)
    contacts.release.set()
    answers = await asyncio.gather(*first, *rest, return_exceptions=True)

    # Two lone events went as TrackEvent, then the 20 queued behind them as one TrackEvents.
    assert [(name, len(k)) for name, k, _ in contacts.calls] == [
        ("TrackEvent", 1),
        ("TrackEvent", 1),
        ("TrackEvents", 20),
    ]
    assert batcher.calls == 3
    assert contacts.calls[2][1] == keys  # in the order the requests came
    for key, answer in zip(["a", "b", *keys], answers, strict=True):
        match key:
            case "a" | "b" | "ok":
                assert isinstance(answer, shop_pb2.TrackEventResponse)
                assert (answer.event_id, answer.duplicate) == ("e-ok", False)
            case "dup":
                assert isinstance(answer, shop_pb2.TrackEventResponse)
                assert (answer.event_id, answer.duplicate) == ("e-dup", True)
            case "conflict":
                assert isinstance(answer, Problem)
                assert (answer.status, answer.details.type) == (
                    409,
                    "https://nudge.dev/problems/already-exists",
                )
                assert answer.details.detail == "key 'conflict' used"
            case "missing":
                assert isinstance(answer, Problem)
                assert (answer.status, answer.details.detail) == (404, "contact not found")
            case "invalid":
                assert isinstance(answer, Problem)
                assert answer.status == 422
                assert answer.details.errors is not None
                # Renamed into the JSON of POST /v1/events, as the single route renames them.
                assert [(e.field, e.message) for e in answer.details.errors] == [
                    ("data.order_id", "is required")
                ]


async def test_each_event_of_a_shared_call_carries_its_own_traceparent_in_order() -> None:
    contacts = HeldContacts({"a": RESULTS["ok"], "b": RESULTS["ok"], "c": RESULTS["ok"]})
    batcher, first = await blocked_batcher(contacts, ["a", "b"])
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    parents = []
    rest = []
    for key in ["c", "c"]:
        with tracer.start_as_current_span(f"request {len(rest)}") as span:
            ctx = span.get_span_context()
            parents.append(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}")
            rest.append(asyncio.create_task(batcher.track(META, 5.0, event(key))))
    assert trace.get_current_span() is trace.INVALID_SPAN
    await eventually(lambda: batcher.queued == 2, timeout=10)
    contacts.release.set()
    await asyncio.gather(*first, *rest)
    name, _, metadata = contacts.calls[2]
    assert name == "TrackEvents"
    sent = metadata[EVENT_TRACEPARENTS].split(",")
    assert [p.rsplit("-", 1)[0] for p in sent] == parents  # (the flags vary)
    assert metadata["authorization"] == "Bearer k"


async def test_a_failed_shared_call_is_every_waiting_request_s_problem() -> None:
    contacts = HeldContacts({"a": RESULTS["ok"], "b": RESULTS["ok"], "ok": RESULTS["ok"]})
    batcher, first = await blocked_batcher(contacts, ["a", "b"])
    contacts.fail_with = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
    )
    rest = [asyncio.create_task(batcher.track(META, 5.0, event("ok"))) for _ in range(3)]
    await eventually(lambda: batcher.queued == 3, timeout=10)
    contacts.release.set()
    await asyncio.gather(*first)
    problems = await asyncio.gather(*rest, return_exceptions=True)
    assert [type(p) for p in problems] == [Problem] * 3
    assert {p.status for p in problems if isinstance(p, Problem)} == {503}
    assert len({id(p) for p in problems}) == 3  # each request raises its own


async def test_callers_with_different_keys_never_share_a_call() -> None:
    contacts = HeldContacts({"ok": RESULTS["ok"]})
    batcher = IngestBatcher(contacts, max_in_flight=1)  # type: ignore[arg-type]
    tasks = [
        asyncio.create_task(
            batcher.track(((("authorization", f"Bearer {n % 2}"),)), 5.0, event("ok"))
        )
        for n in range(6)
    ]
    await eventually(lambda: len(contacts.calls) == 2, timeout=10)
    contacts.release.set()
    await asyncio.gather(*tasks)
    by_key: dict[str, int] = {}
    for _, keys, metadata in contacts.calls:
        by_key[metadata["authorization"]] = by_key.get(metadata["authorization"], 0) + len(keys)
    assert by_key == {"Bearer 0": 3, "Bearer 1": 3}
    assert len(contacts.calls) == 4


@pytest.mark.parametrize("status", [99])
async def test_an_unknown_status_is_a_500_not_an_acceptance(status: int) -> None:
    from services.gateway.adapters.ingest_batcher import single_answer

    with pytest.raises(Problem) as raised:
        single_answer(shop_pb2.TrackEventResult(status=status))
    assert raised.value.status == 500
