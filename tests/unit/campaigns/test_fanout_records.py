"""The fan-out's records, built from bytes for speed, are exactly what the protobuf library
would serialise: delivery reads them as ordinary envelopes, and a replay is identical."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.campaigns.adapters.requests_out import (
    RequestTemplate,
    campaign_message_id,
    murmur2_many,
    partitions_of,
    request_template,
)
from services.campaigns.audience import message_id
from services.campaigns.domain.content import message_templates
from services.common.events import new_envelope

WS = "00000000-0000-4000-8000-000000000001"
CAMPAIGN = "5d9f3c1e-8d44-4b43-9a9e-0e4a4e1f2a10"
AS_OF = datetime(2026, 12, 2, 3, 4, 5, 678000, tzinfo=UTC)


def template(
    body_markdown: str = "", subject: str = "Tea {{ contact.first_name }}"
) -> tuple[RequestTemplate, delivery_pb2.MessageContent]:
    content = message_templates(subject, "Hello,\nnew tea.", "<p>Hello</p>", body_markdown)
    built = request_template(
        workspace_id=WS,
        campaign_id=CAMPAIGN,
        purpose=contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES,
        content=content,
        from_name="Thé & Co — Ünïcode",
        reply_to="manager@example.com",
        occurred_at=AS_OF,
    )
    proto = delivery_pb2.MessageContent(
        subject=content.subject, body_text=content.body_text, body_html=content.body_html
    )
    return built, proto


def expected(contact: str, content: delivery_pb2.MessageContent) -> bytes:
    mid = message_id(CAMPAIGN, contact)
    payload = delivery_pb2.DeliveryRequested(
        message_id=mid,
        contact_id=contact,
        kind=delivery_pb2.MESSAGE_KIND_CAMPAIGN,
        purpose=contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES,
        content=content,
        campaign_id=CAMPAIGN,
        from_name="Thé & Co — Ünïcode",
        reply_to="manager@example.com",
    )
    env = new_envelope(
        WS,
        payload,
        event_id=mid,
        occurred_at=AS_OF,
    )
    return env.SerializeToString()


@pytest.mark.parametrize(
    "body_markdown",
    ["", "# Spring\n\nNew **tea**.", "x" * 100, "y" * 20_000],  # lengths of 1, 2 and 3 varint bytes
)
def test_a_record_is_byte_for_byte_the_protobuf_serialisation(body_markdown: str) -> None:
    built, content = template(body_markdown)
    for _ in range(20):
        contact = str(uuid.uuid4())
        record = built.encode(campaign_message_id(CAMPAIGN, contact), contact)
        assert record == expected(contact, content)
        env = Envelope.FromString(record)
        assert env.WhichOneof("payload") == "delivery_requested"
        assert env.delivery_requested.contact_id == contact
        assert env.occurred_at.ToDatetime(tzinfo=UTC) == AS_OF


def test_the_fast_ids_are_the_deterministic_ids_of_the_contract() -> None:
    for _ in range(200):
        contact = str(uuid.uuid4())
        mid = campaign_message_id(CAMPAIGN, contact)
        assert mid == message_id(CAMPAIGN, contact)


def test_a_replay_is_identical_and_another_contact_differs() -> None:
    built, _ = template()
    again, _ = template()
    contact, other = str(uuid.uuid4()), str(uuid.uuid4())
    first = built.encode(campaign_message_id(CAMPAIGN, contact), contact)
    assert first == again.encode(campaign_message_id(CAMPAIGN, contact), contact)
    assert first != built.encode(campaign_message_id(CAMPAIGN, other), other)


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4, 7, 36, 40, 128, 200])
def test_the_fast_murmur2_is_kafkas_so_every_producer_of_a_contact_picks_its_partition(
    length: int,
) -> None:
    extremes = [b"\xff" * length, b"\0" * length, str(uuid.uuid4()).encode()[:length]]
    keys = extremes + [os.urandom(length) for _ in range(297)]
    assert murmur2_many(keys) == [aiokafka_murmur2(key) for key in keys]
    for count in range(1, 8):
        partitions = list(range(count))
        assert partitions_of(keys, partitions) == [
            DefaultPartitioner()(key, partitions, partitions) for key in keys
        ]


def test_keys_of_mixed_lengths_are_hashed_one_by_one_all_the_same() -> None:
    keys = [os.urandom(n % 41) for n in range(300)]
    assert murmur2_many(keys) == [aiokafka_murmur2(key) for key in keys]
    assert murmur2_many([]) == []
