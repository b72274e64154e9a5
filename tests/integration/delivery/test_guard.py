"""The anti-spam guard on real Kafka, PostgreSQL and SMTP: delivery.events.v1 as delivery
and the feedback-loop endpoint publish it, counted by the guard's consumer; suspensions
refuse sends until an operator lifts them; one workspace's figures never touch another's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from google.protobuf.message import Message
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc, events_pb2

from services.common import clock
from services.common.events import new_envelope
from services.common.topics import DELIVERY_EVENTS, DELIVERY_REQUESTS
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.delivery.test_delivery import (
    automation_request,
    mails_for,
    new_contact,
    status_of,
)
from tests.support import eventually, fetchval, free_port, unique

ADMIN = (("authorization", "Admin test-admin-token"),)


@pytest.fixture(scope="module")
async def delivery_service(contacts_service: RunningService) -> AsyncIterator[RunningService]:
    from services.delivery.bootstrap import serve
    from services.delivery.config import Settings

    port = free_port()
    async with run_in_process(serve, Settings(grpc_port=port), port) as running:
        yield running


@pytest.fixture
async def producer(infra: dict[str, str]) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"], linger_ms=5)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def other_workspace(contacts_service: RunningService) -> Workspace:
    from tests.integration.gateway.conftest import new_workspace

    return await new_workspace(contacts_service)


def sent(count: int) -> list[Message]:
    return [
        events_pb2.MessageSent(message_id=str(uuid.uuid4()), contact_id=str(uuid.uuid4()))
        for _ in range(count)
    ]


def complaints(count: int) -> list[Message]:
    return [
        events_pb2.MessageComplained(
            message_id=str(uuid.uuid4()), contact_id=str(uuid.uuid4()), feedback_type="abuse"
        )
        for _ in range(count)
    ]


async def publish(
    producer: AIOKafkaProducer,
    ws: Workspace,
    payloads: list[Message],
    *,
    key: str | None = None,
    event_ids: list[str] | None = None,
    occurred_at: datetime | None = None,
) -> list[str]:
    """Publish the events on delivery.events.v1 (as if they happened at ``occurred_at``);
    their event ids."""
    ids = event_ids or [str(uuid.uuid4()) for _ in payloads]
    sends = [
        await producer.send(
            DELIVERY_EVENTS,
            new_envelope(
                ws.id, payload, event_id=event_id, occurred_at=occurred_at
            ).SerializeToString(),
            key=(key or str(uuid.uuid4())).encode(),
        )
        for payload, event_id in zip(payloads, ids, strict=True)
    ]
    await asyncio.gather(*sends)
    return ids


async def sending_status(delivery: RunningService, ws: Workspace) -> delivery_pb2.SendingStatus:
    async with grpc.aio.insecure_channel(delivery.address) as ch:
        answer: delivery_pb2.SendingStatus = await delivery_pb2_grpc.DeliveryServiceStub(
            ch
        ).GetSendingStatus(delivery_pb2.GetSendingStatusRequest(), metadata=ws.metadata)
    return answer


async def counted(
    delivery: RunningService, ws: Workspace, sent: int, bounces: int = 0, complaints: int = 0
) -> delivery_pb2.SendingStatus | None:
    """The status once the window holds exactly these counts (the guard judged them in the
    same transaction), else None."""
    status = await sending_status(delivery, ws)
    figures = (status.window_sent, status.window_hard_bounces, status.window_complaints)
    return status if figures == (sent, bounces, complaints) else None


async def send_transactional(
    delivery: RunningService, ws: Workspace, contact_id: str
) -> delivery_pb2.SendTransactionalResponse:
    async with grpc.aio.insecure_channel(delivery.address) as ch:
        answer: delivery_pb2.SendTransactionalResponse = (
            await delivery_pb2_grpc.DeliveryServiceStub(ch).SendTransactional(
                delivery_pb2.SendTransactionalRequest(
                    idempotency_key=unique("reset"),
                    contact_id=contact_id,
                    content=delivery_pb2.MessageContent(subject="Reset", body_text="Your link"),
                ),
                metadata=ws.metadata,
            )
        )
    return answer


async def lift(
    delivery: RunningService,
    workspace_id: str,
    note: str,
    metadata: tuple[tuple[str, str], ...] = ADMIN,
) -> delivery_pb2.SendingStatus:
    async with grpc.aio.insecure_channel(delivery.address) as ch:
        answer: delivery_pb2.SendingStatus = await delivery_pb2_grpc.DeliveryServiceStub(
            ch
        ).LiftSuspension(
            delivery_pb2.LiftSuspensionRequest(workspace_id=workspace_id, note=note),
            metadata=metadata,
        )
    return answer


async def suspend_for_complaints(
    delivery: RunningService, producer: AIOKafkaProducer, ws: Workspace
) -> delivery_pb2.SendingStatus:
    """500 mails and 2 spam reports: 0.40 %, over the 0.30 % limit at the minimum volume."""
    await publish(producer, ws, [*sent(500), *complaints(2)])
    await eventually(lambda: counted(delivery, ws, 500, 0, 2), timeout=60)
    # Judged with the last count, or by the sweep when the last batch held mails only.
    return await eventually(lambda: suspended_status(delivery, ws), timeout=30)


async def suspended_status(
    delivery: RunningService, ws: Workspace
) -> delivery_pb2.SendingStatus | None:
    status = await sending_status(delivery, ws)
    return status if status.suspended else None


async def test_a_workspace_over_the_complaint_limit_is_suspended_and_its_sends_refused(
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    other_workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    # The other workspace sends as much, without complaints: it is not touched.
    await publish(producer, other_workspace, sent(600))
    status = await suspend_for_complaints(delivery_service, producer, workspace)
    assert status.reason.startswith("complaint rate 0.40 % (2 spam reports for 500 mails")
    assert "above the limit of 0.30 %" in status.reason
    assert status.complaint_rate == pytest.approx(0.004)
    assert status.window_seconds == 7 * 24 * 3600
    assert status.HasField("suspended_at")

    contact = await new_contact(contacts_service, workspace, [])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await send_transactional(delivery_service, workspace, contact.id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "suspended by the anti-spam guard: complaint rate 0.40 %" in str(err.value.details())

    # A queued automation mail of the suspended workspace is skipped, not sent.
    member = await new_contact(
        contacts_service, workspace, [contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS]
    )
    message_id, value = automation_request(workspace, member.id)
    await producer.send_and_wait(DELIVERY_REQUESTS, value, key=member.id.encode())

    async def skipped() -> delivery_pb2.GetMessageStatusResponse | None:
        try:
            answer = await status_of(delivery_service, workspace, message_id)
        except grpc.aio.AioRpcError:
            return None
        return answer if answer.status == delivery_pb2.MESSAGE_STATUS_SKIPPED else None

    assert (await eventually(skipped, timeout=30)).detail == "workspace_suspended"
    assert mails_for(message_id) == []

    other = await eventually(lambda: counted(delivery_service, other_workspace, 600), timeout=60)
    assert not other.suspended and other.reason == ""
    other_contact = await new_contact(contacts_service, other_workspace, [])
    sent_other = await send_transactional(delivery_service, other_workspace, other_contact.id)
    await eventually(lambda: mails_for(sent_other.message_id), timeout=30)


async def test_a_hard_bounce_rate_over_five_percent_suspends(
    delivery_service: RunningService, workspace: Workspace, producer: AIOKafkaProducer
) -> None:
    bounces = [
        events_pb2.MessageBounced(
            message_id=str(uuid.uuid4()),
            contact_id=str(uuid.uuid4()),
            permanent=True,
            source="smtp",
            status_code="5.1.1",
            smtp_response="550 5.1.1 no such user",
        )
        for _ in range(26)
    ]
    await publish(producer, workspace, [*sent(474), *bounces])
    await eventually(lambda: counted(delivery_service, workspace, 500, 26), timeout=60)
    status = await eventually(lambda: suspended_status(delivery_service, workspace), timeout=30)
    assert status.reason.startswith("hard-bounce rate 5.20 % (26 addresses")


async def test_below_the_minimum_volume_nothing_is_suspended(
    delivery_service: RunningService, workspace: Workspace, producer: AIOKafkaProducer
) -> None:
    # 20 % complaints, but 499 mails say nothing yet.
    await publish(producer, workspace, [*sent(499), *complaints(100)])
    await eventually(lambda: counted(delivery_service, workspace, 499, 0, 100), timeout=60)
    # One more report, after all of them: a complaint is judged in the transaction that counts
    # it (mails alone may wait for the sweep), so this status is a verdict.
    await publish(producer, workspace, complaints(1))
    status = await eventually(lambda: counted(delivery_service, workspace, 499, 0, 101), timeout=60)
    assert not status.suspended
    assert status.complaint_rate == pytest.approx(101 / 499)


async def test_a_replayed_event_counts_once(
    delivery_service: RunningService, workspace: Workspace, producer: AIOKafkaProducer
) -> None:
    key = str(uuid.uuid4())  # one partition: the marker below comes after every replay
    first = sent(3) + complaints(1)
    ids = await publish(producer, workspace, first, key=key)
    await publish(producer, workspace, first, key=key, event_ids=ids)  # replayed as they are
    # The same spam report again under a new event id (a second ARF report of one mail).
    await publish(producer, workspace, first[3:], key=key)
    await publish(producer, workspace, sent(1), key=key)  # the marker
    assert await eventually(lambda: counted(delivery_service, workspace, 4, 0, 1), timeout=60)


async def test_an_operator_lifts_a_suspension_and_sending_resumes(
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    infra: dict[str, str],
) -> None:
    await suspend_for_complaints(delivery_service, producer, workspace)
    contact = await new_contact(contacts_service, workspace, [])

    async def refused(
        metadata: tuple[tuple[str, str], ...], ws_id: str, note: str
    ) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await lift(delivery_service, ws_id, note, metadata)
        return err.value

    # Only an operator: no token, a wrong one, or the workspace's own API key are refused.
    for metadata in ((), (("authorization", "Admin wrong"),), workspace.metadata):
        err = await refused(metadata, workspace.id, "fixed")
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    err = await refused(ADMIN, "not-a-uuid", " ")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "workspace_id" in str(err.details()) and "note" in str(err.details())
    err = await refused(ADMIN, workspace.id, "x" * 2001)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = await refused(ADMIN, workspace.id, "bad\x00note")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await sending_status(delivery_service, workspace)).suspended  # nothing half-done

    lifted = await lift(delivery_service, workspace.id, "complaints were a list import bug")
    assert not lifted.suspended and lifted.reason == ""
    assert lifted.window_sent == 0  # a clean slate: the old figures no longer count
    answer = await send_transactional(delivery_service, workspace, contact.id)
    await eventually(lambda: mails_for(answer.message_id), timeout=30)

    # Lifting again (a replayed call) finds nothing to lift, and says so.
    err = await refused(ADMIN, workspace.id, "again")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION

    # The next events are counted in the new generation, and do not suspend it again: the
    # two published here and delivery's own MessageSent of the mail above.
    await publish(producer, workspace, sent(2))
    await eventually(lambda: counted(delivery_service, workspace, 3), timeout=60)
    await publish(producer, workspace, complaints(1))  # judged with the count (see above)
    status = await eventually(lambda: counted(delivery_service, workspace, 3, 0, 1), timeout=60)
    assert not status.suspended

    conn = await asyncpg.connect(infra["DATABASE_URL"])
    try:
        history = await conn.fetch(
            "SELECT rule, lift_note, lifted_at, figures FROM delivery.guard_suspensions"
            " WHERE workspace_id = $1",
            uuid.UUID(workspace.id),
        )
    finally:
        await conn.close()
    assert [(r["rule"], r["lift_note"]) for r in history] == [
        ("complaint_rate", "complaints were a list import bug")
    ]
    assert history[0]["lifted_at"] is not None
    assert '"window_complaints": 2' in history[0]["figures"]


async def test_mails_alone_can_pass_the_limit_and_are_judged_after_the_burst(
    delivery_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.delivery import guard

    # The service runs in this process: a long interval makes the burst below arrive
    # within one interval of the judgment of the reports, so only the sweep can judge it.
    monkeypatch.setattr(guard._config, "judge_every_s", 5.0)
    # 3 spam reports among no mails yet: nothing to judge.
    await publish(producer, workspace, complaints(3))
    first = await eventually(lambda: counted(delivery_service, workspace, 0, 0, 3), timeout=60)
    assert not first.suspended
    # Then a burst of mails only: judged at most once a second while it lasts, so the mails
    # that take the window past the minimum volume may come in a batch not judged; the
    # guard judges what it left unjudged after the burst.
    await publish(producer, workspace, sent(600))
    await eventually(lambda: counted(delivery_service, workspace, 600, 0, 3), timeout=60)
    assert await eventually(lambda: suspended_status(delivery_service, workspace), timeout=30)


async def test_a_volume_jump_beyond_the_workspace_history_suspends_but_a_first_campaign_does_not(
    delivery_service: RunningService,
    workspace: Workspace,
    other_workspace: Workspace,
    producer: AIOKafkaProducer,
    infra: dict[str, str],
) -> None:
    async def all_sent(ws: Workspace, total: int) -> bool:
        found = await fetchval(
            infra["DATABASE_URL"],
            "SELECT sum(sent) FROM delivery.guard_counts WHERE workspace_id = $1",
            uuid.UUID(ws.id),
        )
        return found == total

    # A history: 100 mails a day on 7 of the last 14 days (the events say when they
    # happened, and are counted in their own hours).
    now = clock.now()
    for days_ago in range(2, 9):
        await publish(producer, workspace, sent(100), occurred_at=now - timedelta(days=days_ago))
    await eventually(lambda: all_sent(workspace, 700), timeout=60)
    # Then 5,001 in an hour: over the floor, 50 times the median day.
    await publish(producer, workspace, sent(5001))
    # A new workspace sends as much on its first day.
    await publish(producer, other_workspace, sent(5001))
    await eventually(lambda: all_sent(workspace, 5701), timeout=120)
    status = await eventually(lambda: suspended_status(delivery_service, workspace), timeout=30)
    assert status.reason.startswith("volume jump: 5001 mails in the last 24 hours, more than 10")
    await eventually(lambda: counted(delivery_service, other_workspace, 5001), timeout=120)
    await publish(producer, other_workspace, complaints(1))  # judged with the count
    first = await eventually(
        lambda: counted(delivery_service, other_workspace, 5001, 0, 1), timeout=60
    )
    assert not first.suspended
