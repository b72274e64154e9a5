"""The story of a mail (issue 17): DeliveryService.ExplainMessage over a real delivery
service, PostgreSQL, Kafka and the project's SMTP sink.

What is proven: a mail the sink defers once and then accepts tells every stage with its time
(claimed, deferred with the server's answer and the next attempt, claimed again, sent), the
origin kept at the claim (workflow, run, step, purpose) and the trace id of the claim; what
tracking saw of it (tracking.events.v1) joins the story; a contact without consent reads as
"not eligible" with contacts' reason; another workspace's message and an unknown id are
NOT_FOUND, a malformed id INVALID_ARGUMENT naming ``message_id``; an erasure clears the
SMTP answers of the history too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from google.rpc import error_details_pb2, status_pb2
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from nudge.tracking.v1 import events_pb2 as tracking_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from services.common.events import deterministic_id, new_envelope
from services.common.topics import DELIVERY_REQUESTS, TRACKING_EVENTS
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.delivery.helpers import (
    Sink,
    address,
    execute,
    new_contact,
    running_sink,
    status_is,
)
from tests.support import eventually, free_port, unique

S = delivery_pb2
# A deferral waits far beyond any test's wait: the test makes it due (release) when it wants.
RETRY_BASE_DELAY_S = 600.0
SEARCH_PATH = {"search_path": "delivery"}  # as delivery's own connections have it


@pytest.fixture(scope="module", autouse=True)
def tracing() -> None:
    """Spans as a service process makes them (runtime.configure): the services of these
    tests run inside the test process, which has no tracer provider of its own."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())


@pytest.fixture(scope="module")
async def sink(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sink]:
    async with running_sink(tmp_path_factory.mktemp("sink")) as running:
        yield running


@pytest.fixture(scope="module")
async def delivery(contacts_service: RunningService, sink: Sink) -> AsyncIterator[RunningService]:
    from services.delivery.bootstrap import serve
    from services.delivery.config import Settings

    port = free_port()
    settings = Settings(
        grpc_port=port,
        smtp_url=sink.url,
        smtp_timeout_s=30.0,
        retry_base_delay_s=RETRY_BASE_DELAY_S,
        retry_max_delay_s=RETRY_BASE_DELAY_S * 4,
        retry_poll_interval_s=0.2,
    )
    async with run_in_process(serve, settings, port) as running:
        yield running


@pytest.fixture
async def producer(infra: dict[str, str]) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"])
    await p.start()
    yield p
    await p.stop()


async def explain(
    delivery: RunningService, ws: Workspace, message_id: str
) -> delivery_pb2.MessageStory:
    async with grpc.aio.insecure_channel(delivery.address) as ch:
        story: delivery_pb2.MessageStory = await delivery_pb2_grpc.DeliveryServiceStub(
            ch
        ).ExplainMessage(
            delivery_pb2.ExplainMessageRequest(message_id=message_id), metadata=ws.metadata
        )
    return story


# The producer's trace: the consumer's per-record span continues it.
PRODUCER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{PRODUCER_TRACE_ID}-00f067aa0ba902b7-01"


async def request_automation_mail(
    producer: AIOKafkaProducer, ws: Workspace, contact_id: str, run_id: str
) -> str:
    message_id = deterministic_id(ws.id, unique("run"))
    request = delivery_pb2.DeliveryRequested(
        message_id=message_id,
        contact_id=contact_id,
        kind=delivery_pb2.MESSAGE_KIND_AUTOMATION,
        purpose=contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
        workflow_id="wf-story",
        run_id=run_id,
        step_id="welcome-mail",
        content=delivery_pb2.MessageContent(subject="Hello", body_text="Hi"),
    )
    envelope = new_envelope(ws.id, request, event_id=message_id)
    await producer.send_and_wait(
        DELIVERY_REQUESTS,
        envelope.SerializeToString(),
        key=contact_id.encode(),
        headers=[("traceparent", TRACEPARENT.encode())],
    )
    return message_id


async def release(message_id: str) -> bool:
    """Make a DEFERRED message's next attempt due now."""
    done = await execute(
        "UPDATE delivery.pending_sends p SET due_at = now() FROM delivery.messages m"
        " WHERE p.message_id = $1::uuid AND m.message_id = p.message_id AND m.status = $2",
        message_id,
        S.MESSAGE_STATUS_DEFERRED,
    )
    return done != "UPDATE 0"


async def test_a_deferred_then_sent_mail_tells_every_stage_with_its_origin_and_trace(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    sink: Sink,
) -> None:
    contact = await new_contact(contacts_service, workspace, address("defer1-451"))
    run_id = str(uuid.uuid4())
    message_id = await request_automation_mail(producer, workspace, contact.id, run_id)
    await eventually(lambda: status_is(message_id, S.MESSAGE_STATUS_DEFERRED), timeout=60)

    story = await explain(delivery, workspace, message_id)
    assert story.status == S.MESSAGE_STATUS_DEFERRED
    assert [s.status for s in story.stages] == [
        S.MESSAGE_STATUS_CLAIMED,
        S.MESSAGE_STATUS_DEFERRED,
    ]
    deferred = story.stages[1]
    assert deferred.detail.startswith("451 4.3.0"), deferred.detail
    assert deferred.attempt == 1
    assert deferred.HasField("next_attempt_at")
    # The next attempt is the backoff's, minutes after the deferral, and the kept request's.
    wait_s = deferred.next_attempt_at.seconds - deferred.at.seconds
    assert RETRY_BASE_DELAY_S / 2 - 5 <= wait_s <= RETRY_BASE_DELAY_S + 5, wait_s
    assert story.next_attempt_at == deferred.next_attempt_at

    assert await release(message_id)
    await eventually(lambda: status_is(message_id, S.MESSAGE_STATUS_SENT), timeout=60)
    assert sink.copies(message_id) == 1
    story = await explain(delivery, workspace, message_id)
    assert story.status == S.MESSAGE_STATUS_SENT
    assert [(s.status, s.attempt) for s in story.stages] == [
        (S.MESSAGE_STATUS_CLAIMED, 1),
        (S.MESSAGE_STATUS_DEFERRED, 1),
        (S.MESSAGE_STATUS_CLAIMED, 2),
        (S.MESSAGE_STATUS_SENT, 2),
    ]
    times = [s.at.ToDatetime() for s in story.stages]
    assert times == sorted(times), times
    assert story.stages[3].detail == story.detail != "", story.detail  # the server's reply
    assert not story.HasField("next_attempt_at")  # nothing kept any more
    # Where it came from, as the request said at the claim.
    assert story.kind == S.MESSAGE_KIND_AUTOMATION
    assert (story.workflow_id, story.run_id, story.step_id) == ("wf-story", run_id, "welcome-mail")
    assert story.contact_id == contact.id
    assert story.purpose == contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS
    assert story.eligibility.checked and story.eligibility.eligible
    assert story.eligibility.at == story.stages[0].at
    # When it was asked for (the request's envelope), before the first claim.
    assert story.HasField("requested_at")
    assert story.requested_at.ToDatetime() <= story.claimed_at.ToDatetime()
    assert story.claimed_at == story.stages[0].at
    # The trace of the claim: the consumer's per-record span, in the producer's trace.
    assert story.trace_id == PRODUCER_TRACE_ID

    # What tracking saw joins the story: a person's open, then a scanner's click.
    opened = new_envelope(
        workspace.id, tracking_pb2.MessageOpened(message_id=message_id, contact_id=contact.id)
    )
    clicked = new_envelope(
        workspace.id,
        tracking_pb2.LinkClicked(
            message_id=message_id,
            contact_id=contact.id,
            url="https://shop.example/a",
            machine_click=True,
            machine_reason="scanner",
        ),
    )
    for event in (opened, clicked, opened):  # the open redelivered: kept once
        await producer.send_and_wait(
            TRACKING_EVENTS, event.SerializeToString(), key=contact.id.encode()
        )

    async def tracked() -> delivery_pb2.MessageStory | None:
        found = await explain(delivery, workspace, message_id)
        return found if len(found.tracking) >= 2 else None

    story = await eventually(tracked, timeout=60)
    assert [(t.kind, t.machine, t.machine_reason, t.url) for t in story.tracking] == [
        (S.TRACKING_EVENT_KIND_OPEN, False, "", ""),
        (S.TRACKING_EVENT_KIND_CLICK, True, "scanner", "https://shop.example/a"),
    ]


async def test_a_contact_without_consent_reads_as_not_eligible_with_the_reason(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    contact = await new_contact(contacts_service, workspace, address(), consents=())
    message_id = await request_automation_mail(producer, workspace, contact.id, "")
    await eventually(lambda: status_is(message_id, S.MESSAGE_STATUS_SKIPPED), timeout=60)
    story = await explain(delivery, workspace, message_id)
    assert story.eligibility.checked and not story.eligibility.eligible
    assert story.eligibility.reason == story.detail and story.detail, story.detail
    assert story.stages[-1].status == S.MESSAGE_STATUS_SKIPPED


async def test_another_workspaces_message_or_an_unknown_one_is_not_found_and_a_bad_id_named(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    from tests.integration.gateway.conftest import new_workspace

    contact = await new_contact(contacts_service, workspace, address())
    message_id = await request_automation_mail(producer, workspace, contact.id, "")
    await eventually(lambda: status_is(message_id, S.MESSAGE_STATUS_SENT), timeout=60)
    assert (await explain(delivery, workspace, message_id)).message_id == message_id

    other = await new_workspace(contacts_service)
    for ws, asked in ((other, message_id), (workspace, str(uuid.uuid4()))):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await explain(delivery, ws, asked)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert message_id not in (err.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await explain(delivery, workspace, "not-a-message")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_pb2.Status.FromString(
        dict(err.value.trailing_metadata() or ())["grpc-status-details-bin"]  # type: ignore[arg-type]
    )
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["message_id"]


async def test_an_erasure_clears_the_smtp_answers_of_the_history_too(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    import asyncpg

    from services.delivery import privacy

    contact = await new_contact(contacts_service, workspace, address("defer1-451"))
    message_id = await request_automation_mail(producer, workspace, contact.id, "")
    await eventually(lambda: status_is(message_id, S.MESSAGE_STATUS_DEFERRED), timeout=60)
    before = await explain(delivery, workspace, message_id)
    assert any(s.detail.startswith("451") for s in before.stages)

    conn = await asyncpg.connect(os.environ["DATABASE_URL"], server_settings=SEARCH_PATH)
    try:
        async with conn.transaction():
            await privacy.erase_contact(conn, workspace.id, uuid.UUID(contact.id))
    finally:
        await conn.close()
    after = await explain(delivery, workspace, message_id)
    assert [s.status for s in after.stages] == [s.status for s in before.stages]  # no new stage
    assert {s.detail for s in after.stages if s.detail} == {privacy.ERASED_DETAIL}
