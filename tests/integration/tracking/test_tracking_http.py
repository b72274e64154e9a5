"""The tracking service over real HTTP and Kafka: each accepted hit is on tracking.events.v1."""

from __future__ import annotations

import uuid

import httpx
from aiokafka import AIOKafkaConsumer
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import links
from tests.integration.tracking.conftest import LINK_SECRET
from tests.support import eventually


async def published(
    consumer: AIOKafkaConsumer, message_id: str, payload: str
) -> tuple[bytes, Envelope, dict[str, bytes]]:
    """The record of ``message_id`` with ``payload`` on tracking.events.v1 (waits for it)."""
    return (await all_published(consumer, message_id, payload, 1))[0]


async def all_published(
    consumer: AIOKafkaConsumer, message_id: str, payload: str, count: int
) -> list[tuple[bytes, Envelope, dict[str, bytes]]]:
    """The first ``count`` records of ``message_id`` with ``payload`` (waits for them)."""
    found: list[tuple[bytes, Envelope, dict[str, bytes]]] = []

    async def arrived() -> bool:
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            for record in records:
                envelope = Envelope.FromString(record.value)
                kind = envelope.WhichOneof("payload")
                if kind == payload and getattr(envelope, kind).message_id == message_id:
                    found.append((record.key, envelope, dict(record.headers)))
        return len(found) >= count

    await eventually(arrived, timeout=30)
    return found[:count]


def ids() -> tuple[str, str, str]:
    return str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())


async def test_the_open_pixel_publishes_message_opened(
    http: httpx.AsyncClient, consumer: AIOKafkaConsumer
) -> None:
    workspace_id, message_id, contact_id = ids()
    trace_id = uuid.uuid4().hex
    answer = await http.get(
        links.sign_open(LINK_SECRET, workspace_id, message_id, contact_id),
        headers={
            "User-Agent": "Mozilla/5.0 (via ggpht.com GoogleImageProxy)",
            "traceparent": f"00-{trace_id}-{'1' * 16}-01",
        },
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/gif"
    key, envelope, headers = await published(consumer, message_id, "message_opened")
    assert key == contact_id.encode()
    assert envelope.workspace_id == workspace_id
    assert envelope.type == "nudge.tracking.v1.MessageOpened"
    assert envelope.message_opened.contact_id == contact_id
    assert envelope.message_opened.machine_open
    # The request's trace continues into Kafka, for whoever consumes the event.
    assert headers["traceparent"].decode().split("-")[1] == trace_id


async def test_a_click_redirects_and_publishes_link_clicked(
    http: httpx.AsyncClient, consumer: AIOKafkaConsumer
) -> None:
    workspace_id, message_id, contact_id = ids()
    url = "https://shop.example/spring-sale?utm_source=nudge"
    answer = await http.get(
        links.sign_click(LINK_SECRET, workspace_id, message_id, contact_id, url),
        headers={"User-Agent": "Firefox/128.0"},
    )
    assert answer.status_code == 302
    assert answer.headers["location"] == url
    _, envelope, _ = await published(consumer, message_id, "link_clicked")
    assert (envelope.link_clicked.url, envelope.link_clicked.user_agent) == (url, "Firefox/128.0")


async def test_one_click_unsubscribe_publishes_unsubscribe_requested(
    http: httpx.AsyncClient, consumer: AIOKafkaConsumer
) -> None:
    workspace_id, message_id, contact_id = ids()
    path = links.sign_unsubscribe(LINK_SECRET, workspace_id, message_id, contact_id)
    page = await http.get(path)
    assert page.status_code == 200 and "<form" in page.text
    for _ in range(2):  # a provider retrying after a timeout
        answer = await http.post(path, data={"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 200
    records = await all_published(consumer, message_id, "unsubscribe_requested", 2)
    for key, envelope, _ in records:
        assert key == contact_id.encode()
        assert envelope.unsubscribe_requested.one_click
    # Each post is its own event; contacts is idempotent on the consent state instead.
    assert len({envelope.event_id for _, envelope, _ in records}) == 2


async def test_a_form_with_too_many_fields_is_a_400_problem(http: httpx.AsyncClient) -> None:
    workspace_id, message_id, contact_id = ids()
    path = links.sign_unsubscribe(LINK_SECRET, workspace_id, message_id, contact_id)
    answer = await http.post(
        path,
        content="&".join(f"f{i}=x" for i in range(50)),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["status"] == 400


async def test_a_forged_link_is_a_404_problem(http: httpx.AsyncClient) -> None:
    workspace_id, message_id, contact_id = ids()
    forged = links.sign_click(
        "not-the-secret", workspace_id, message_id, contact_id, "https://x.example/"
    )
    answer = await http.get(forged)
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"


async def test_healthz_reports_kafka(http: httpx.AsyncClient, infra: dict[str, str]) -> None:
    answer = await http.get("/healthz")
    assert answer.status_code == 200, answer.text
    kafka = answer.json()["checks"]["kafka"]
    assert kafka["ok"] and kafka["brokers"] >= 1
