"""Bounces and complaints that come back later (DSN, ARF on delivery's inbound endpoint)
count in ``nudge_delivery_outcomes_total`` under the kind of the mail they are about, once
each however often the relay repeats them."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from tests.integration.conftest import RunningService, Workspace
from tests.integration.delivery.auth_support import (
    AuthDelivery,
    CaptureSmtp,
    DeliveryEvents,
    auth_delivery,
    capture,
    delivery_events,
    producer,
)
from tests.integration.delivery.test_inbound_reports import report, send_report, sent_mail
from tests.integration.delivery.test_outcome_metrics import counts
from tests.support import eventually

__all__ = ["auth_delivery", "capture", "delivery_events", "producer"]  # fixtures


async def test_a_complaint_and_a_dsn_bounce_count_once_under_the_mails_kind(
    auth_delivery: AuthDelivery,
    contacts_service: RunningService,
    capture: CaptureSmtp,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    delivery_events: DeliveryEvents,
) -> None:
    _, complained_id, complained_at = await sent_mail(
        auth_delivery, producer, capture, contacts_service, workspace
    )
    _, bounced_id, bounced_at = await sent_mail(
        auth_delivery, producer, capture, contacts_service, workspace
    )
    complaint = report("yahoo_arf.eml", complained_at, complained_id)
    bounce = report("postfix_hard_bounce.eml", bounced_at, bounced_id)
    before = counts()
    for _ in range(2):  # a relay's retry of each: recorded once, counted once
        assert (await send_report(auth_delivery, complained_at, complaint)).code == 250
        assert (await send_report(auth_delivery, bounced_at, bounce)).code == 250
    # A report is recorded (and counted) before the endpoint answers it.
    now = counts()
    keys = (("complained", "automation", ""), ("bounced_hard", "automation", ""))
    assert [now[k] - before[k] for k in keys] == [1, 1]
    await eventually(lambda: delivery_events.of(bounced_id, "message_bounced"), timeout=30)
