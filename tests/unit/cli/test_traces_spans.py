"""The ids spans carry (services/common/tracing.py), which ``nudge trace --contact`` and
``--message`` search, and the status the JSON-lines files record for ``nudge trace``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord
from nudge.contacts.v1 import contacts_pb2, events_pb2
from nudge.delivery.v1 import delivery_pb2
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.shop.v1 import shop_pb2
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from services.common.consumer import handle_record
from services.common.events import new_envelope
from services.common.tracing import JsonLinesSpanExporter, envelope_ids, message_ids

WORKSPACE = "4f1c2a9e-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """Every span finished in this process from now on (the global provider, as in
    tests/integration/tracking/conftest.py: it can be set only once per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def test_a_message_names_its_contact_however_it_holds_it() -> None:
    # A Contact's own id, a ContactRef by id, a plain contact_id.
    created = contacts_pb2.CreateContactResponse(contact=contacts_pb2.Contact(id="c-1"))
    ref = shop_pb2.TrackEventRequest(contact=contacts_pb2.ContactRef(contact_id="c-2"))
    answer = shop_pb2.TrackEventResponse(contact_id="c-3", event_id="e")
    assert message_ids(created) == {"nudge.contact_id": "c-1"}
    assert message_ids(ref) == {"nudge.contact_id": "c-2"}
    assert message_ids(answer) == {"nudge.contact_id": "c-3"}


def test_empty_or_absent_ids_are_left_out() -> None:
    by_email = shop_pb2.TrackEventRequest(contact=contacts_pb2.ContactRef(email="a@b.c"))
    new = contacts_pb2.CreateContactRequest(contact=contacts_pb2.Contact(email="a@b.c"))
    assert message_ids(by_email) == {}
    assert message_ids(new) == {}
    assert message_ids(contacts_pb2.CreateWorkspaceRequest(name="x")) == {}


def test_an_envelope_names_its_payloads_contact_and_message() -> None:
    request = delivery_pb2.DeliveryRequested(message_id="m-1", contact_id="c-1")
    created = events_pb2.ContactCreated(contact=contacts_pb2.Contact(id="c-2"))
    assert envelope_ids(new_envelope(WORKSPACE, request)) == {
        "nudge.contact_id": "c-1",
        "nudge.message_id": "m-1",
    }
    assert envelope_ids(new_envelope(WORKSPACE, created)) == {"nudge.contact_id": "c-2"}
    assert envelope_ids(Envelope(workspace_id=WORKSPACE)) == {}


async def test_the_consumers_span_names_workspace_contact_message_and_where_it_was_read(
    spans: InMemorySpanExporter,
) -> None:
    request = delivery_pb2.DeliveryRequested(message_id="m-7", contact_id="c-7")
    envelope = new_envelope(WORKSPACE, request)
    record = ConsumerRecord(
        topic="delivery.requests.v1",
        partition=3,
        offset=1234,
        timestamp=0,
        timestamp_type=0,
        key=b"c-7",
        value=envelope.SerializeToString(),
        checksum=None,
        serialized_key_size=3,
        serialized_value_size=0,
        headers=(),
    )

    async def handler(envelope: Envelope, record: ConsumerRecord) -> None:
        return None

    spans.clear()
    await handle_record(record, handler, "delivery")
    [span] = [s for s in spans.get_finished_spans() if s.name == "delivery.requests.v1 process"]
    attributes = dict(span.attributes or {})
    assert attributes["nudge.workspace_id"] == WORKSPACE
    assert attributes["nudge.contact_id"] == "c-7"
    assert attributes["nudge.message_id"] == "m-7"
    assert attributes["messaging.destination.name"] == "delivery.requests.v1"
    assert attributes["messaging.kafka.destination.partition"] == 3
    assert attributes["messaging.kafka.message.offset"] == 1234


def test_the_json_lines_record_each_spans_status(tmp_path: Path) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "nudge-test"}))
    exporter = JsonLinesSpanExporter(tmp_path / "test.jsonl")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("fine"):
        pass
    with tracer.start_as_current_span("broken") as span:
        span.set_status(Status(StatusCode.ERROR, "SMTP said 554"))
    provider.shutdown()
    lines = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    by_name = {line["name"]: line for line in lines}
    assert (by_name["fine"]["status"], by_name["fine"]["status_message"]) == ("UNSET", "")
    assert by_name["broken"]["status"] == "ERROR"
    assert by_name["broken"]["status_message"] == "SMTP said 554"
