"""Single ``POST /v1/events`` requests that arrive together share one TrackEvents call to the
real contacts service: each still gets its own answer, and each accepted event keeps the
trace of the request that sent it, to its record on shop.events.v1.

To make the sharing certain rather than likely, the test holds both of the gateway's call
slots: two idempotency keys are claimed in an open PostgreSQL transaction, so the two lone
calls that carry them wait on the row locks until the test rolls back; the requests sent
meanwhile queue in the gateway, which the test watches before letting go.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from nudge.events.v1.envelope_pb2 import Envelope
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.topics import SHOP_EVENTS
from services.gateway.adapters import ingest_batcher
from tests.integration.conftest import RunningService, Workspace
from tests.integration.gateway.conftest import nowhere
from tests.integration.gateway.test_events_batch import (
    PROBLEM,
    auth,
    http,  # noqa: F401 (fixture)
    new_contact,
    order,
)
from tests.integration.tracking.conftest import HttpService, run_http
from tests.support import eventually, free_port, unique


@pytest.fixture(scope="module")
async def gateway(
    contacts_service: RunningService, spans: InMemorySpanExporter
) -> AsyncIterator[HttpService]:
    """The gateway of this package's conftest, with a call deadline long enough for the
    held calls of the test to outlast a slow machine."""
    from services.gateway.bootstrap import serve
    from services.gateway.config import Settings

    settings = Settings(
        bind_host="127.0.0.1",
        http_port=free_port(),
        contacts_addr=contacts_service.address,
        segmentation_addr=nowhere(),
        campaigns_addr=nowhere(),
        triggers_addr=nowhere(),
        delivery_addr=nowhere(),
        tracking_url=f"http://{nowhere()}",
        rpc_timeout_s=120.0,
    )
    async with run_http(serve, settings) as running:
        yield running


def queued() -> int:
    return sum(b.queued for b in ingest_batcher.LIVE)


def in_flight() -> int:
    return sum(b.in_flight for b in ingest_batcher.LIVE)


def calls() -> int:
    return sum(b.calls for b in ingest_batcher.LIVE)


async def records_of(bootstrap: str, contact_id: str, event_ids: set[str]) -> dict[str, str]:
    """The traceparent header of each of ``event_ids`` (of ``contact_id``) on the topic."""
    consumer = AIOKafkaConsumer(
        SHOP_EVENTS,
        bootstrap_servers=bootstrap,
        group_id=unique("test-coalesced-reader"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: dict[str, str] = {}
    try:
        async with asyncio.timeout(60):
            while not event_ids <= set(found):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        if record.key == contact_id.encode():
                            headers = {k: v.decode() for k, v in record.headers}
                            found[Envelope.FromString(record.value).event_id] = headers.get(
                                "traceparent", ""
                            )
    finally:
        await consumer.stop()
    return found


async def test_concurrent_single_events_share_a_call_and_each_gets_its_answer_and_trace(
    http: httpx.AsyncClient,  # noqa: F811
    workspace: Workspace,
    infra: dict[str, str],
    spans: InMemorySpanExporter,
) -> None:
    ada = await new_contact(http, workspace)
    earlier = unique("earlier")
    held = await http.post("/v1/events", json=order(earlier, ada, "o-0"), headers=auth(workspace))
    assert held.status_code == 202, held.text

    blocking = [unique("blocked"), unique("blocked")]
    cases: list[tuple[str, dict[str, Any]]] = [
        *(("accepted", order(unique("new"), ada, f"o-{n}")) for n in range(4)),
        ("duplicate", order(earlier, ada, "o-0")),
        ("conflict", order(earlier, ada, "o-other")),
        ("not_found", {**order(unique("k"), ada, "o-5"), "contact": {"external_id": "nobody"}}),
        ("invalid", {**order(unique("k"), ada, "o-6"), "occurred_at": "2100-01-01T00:00:00Z"}),
        *(("accepted", order(unique("new"), ada, f"o-{n}")) for n in range(7, 10)),
    ]
    traces = [secrets.token_hex(16) for _ in cases]

    def post(event: dict[str, Any], trace_id: str) -> Any:
        headers = {**auth(workspace), "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        return http.post("/v1/events", json=event, headers=headers)

    db = await asyncpg.connect(infra["DATABASE_URL"])
    try:
        lock = db.transaction()
        await lock.start()
        for key in blocking:
            await db.execute(
                "INSERT INTO contacts.ingested_events"
                " (workspace_id, idempotency_key, event_id, contact_id, created_at)"
                " VALUES ($1, $2, $3, $4, now())",
                uuid.UUID(workspace.id),
                key,
                uuid.uuid4(),
                uuid.UUID(ada["id"]),
            )
        calls_before = calls()
        first = [
            asyncio.create_task(post(order(k, ada, f"b-{n}"), secrets.token_hex(16)))
            for n, k in enumerate(blocking)
        ]

        async def both_calls_wait_on_the_claims() -> bool:
            # Both of the gateway's slots are taken, and contacts waits on this connection's
            # claims: in one transaction or two, as contacts' own group commit happened to
            # gather the two calls (asyncpg's query text is no guide).
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
            )
            return in_flight() == 2 and waiting >= 1

        await eventually(both_calls_wait_on_the_claims, timeout=30)
        rest = [
            asyncio.create_task(post(event, trace_id))
            for (_, event), trace_id in zip(cases, traces, strict=True)
        ]
        await eventually(lambda: queued() == len(cases), timeout=30)
        await lock.rollback()
        answers = await asyncio.gather(*rest)
        assert [a.status_code for a in await asyncio.gather(*first)] == [202, 202]
    finally:
        await db.close()

    # The two lone requests were sent as they came; the others queued behind them: one call.
    assert calls() - calls_before == 3
    for (kind, _), answer in zip(cases, answers, strict=True):
        match kind:
            case "accepted":
                assert answer.status_code == 202, answer.text
                assert answer.json()["duplicate"] is False
                assert answer.json()["contact_id"] == ada["id"]
            case "duplicate":
                assert answer.status_code == 202, answer.text
                assert answer.json() == {**held.json(), "duplicate": True}
            case "conflict":
                assert (answer.status_code, answer.headers["content-type"]) == (409, PROBLEM)
                assert earlier in answer.json()["detail"]
            case "not_found":
                assert (answer.status_code, answer.headers["content-type"]) == (404, PROBLEM)
            case "invalid":
                assert (answer.status_code, answer.headers["content-type"]) == (422, PROBLEM)
                assert answer.json()["errors"] == [
                    {"field": "occurred_at", "message": "in the future"}
                ]
    accepted = {
        answer.json()["event_id"]: trace_id
        for (kind, _), answer, trace_id in zip(cases, answers, traces, strict=True)
        if kind == "accepted"
    }
    assert len(accepted) == 7

    # Each accepted event's record carries its own request's trace, through contacts' span.
    on_topic = await records_of(infra["KAFKA_BOOTSTRAP_SERVERS"], ada["id"], set(accepted))
    assert {
        event_id: tp.split("-")[1] for event_id, tp in on_topic.items() if event_id in accepted
    } == accepted
    finished = spans.get_finished_spans()
    ingest_spans = {
        format(s.context.trace_id, "032x")
        for s in finished
        if s.name == "shop event ingest" and s.context is not None
    }
    assert set(accepted.values()) <= ingest_spans
    batch = [s for s in finished if s.name == "gateway ingest batch"]
    linked = {format(link.context.trace_id, "032x") for s in batch for link in s.links}
    assert set(traces) <= linked
