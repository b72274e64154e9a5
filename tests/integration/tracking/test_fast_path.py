"""The request path never waits for Kafka: with a broker that cannot be reached the pixel and
the redirect still answer at once; with the real one every open and click reaches
tracking.events.v1; and link scanners that click every link at once are flagged (Redis)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import links
from services.tracking.domain.machine_opens import LINK_BURST
from tests.integration.tracking.conftest import LINK_SECRET, HttpService, run_http
from tests.support import eventually, free_port

BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36"
)
AN_HOUR_AGO = int(time.time()) - 3600


def ids() -> tuple[str, str, str]:
    return str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())


async def collect(
    consumer: AIOKafkaConsumer, message_id: str, count: int, timeout: float = 60
) -> list[Envelope]:
    """The first ``count`` open/click events of ``message_id`` on tracking.events.v1."""
    found: list[Envelope] = []

    async def arrived() -> bool:
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            for record in records:
                envelope = Envelope.FromString(record.value)
                kind = envelope.WhichOneof("payload")
                if (
                    kind in ("message_opened", "link_clicked")
                    and getattr(envelope, kind).message_id == message_id
                ):
                    found.append(envelope)
        return len(found) >= count

    await eventually(arrived, timeout=timeout)
    return found


@pytest.fixture
async def kafka_down() -> AsyncIterator[HttpService]:
    """Tracking whose Kafka is a port nobody listens on (an outage from the start)."""
    from services.tracking.bootstrap import serve
    from services.tracking.config import Settings

    settings = Settings(
        bind_host="127.0.0.1",
        http_port=free_port(),
        link_secret=LINK_SECRET,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        publish_timeout_s=2,
        health_timeout_s=1,
        buffer_capacity=100,
    )
    async with run_http(serve, settings) as running:
        yield running


async def test_with_kafka_unreachable_the_pixel_and_the_redirect_still_answer_at_once(
    kafka_down: HttpService,
) -> None:
    workspace_id, message_id, contact_id = ids()
    url = "https://shop.example/sale"
    click = links.sign_click(
        LINK_SECRET, workspace_id, message_id, contact_id, url, link_index=0, issued_at=1
    )
    pixel = links.sign_open(LINK_SECRET, workspace_id, message_id, contact_id, issued_at=1)
    async with httpx.AsyncClient(base_url=kafka_down.base_url, timeout=30) as web:
        slowest = 0.0
        for _ in range(150):  # more than the buffer holds: the oldest are dropped
            started = time.monotonic()
            redirect = await web.get(click, headers={"User-Agent": BROWSER})
            image = await web.get(pixel, headers={"User-Agent": BROWSER})
            slowest = max(slowest, time.monotonic() - started)
            assert (redirect.status_code, redirect.headers["location"]) == (302, url)
            assert (image.status_code, image.headers["content-type"]) == (200, "image/gif")
        # Far below any Kafka timeout (aiokafka's request timeout is 40 s, the old publish
        # timeout 5 s): nothing on the request path waits for the broker.
        assert slowest < 1.5, slowest
        health = await web.get("/healthz")
        assert health.status_code == 503
        kafka = health.json()["checks"]["kafka"]
        assert kafka["events"]["accepted"] == 300
        assert kafka["events"]["dropped"] == 200  # counted: 300 offered, 100 kept
        assert kafka["events"]["published"] == 0
        # An unsubscribe must not be lost silently: the reader is asked to retry.
        unsubscribe = links.sign_unsubscribe(LINK_SECRET, workspace_id, message_id, contact_id)
        answer = await web.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 503


async def test_every_open_and_click_reaches_kafka_with_its_link(
    http: httpx.AsyncClient,
    consumer: AIOKafkaConsumer,
) -> None:
    workspace_id, message_id, contact_id = ids()
    hits = 200
    paths = []
    for n in range(hits):
        if n % 2:
            paths.append(
                links.sign_open(
                    LINK_SECRET, workspace_id, message_id, contact_id, issued_at=AN_HOUR_AGO
                )
            )
        else:
            url = f"https://shop.example/p/{n}"
            # Every click on one of two links: no burst of distinct links.
            paths.append(
                links.sign_click(
                    LINK_SECRET,
                    workspace_id,
                    message_id,
                    contact_id,
                    url,
                    link_index=n % 4 // 2,
                    issued_at=AN_HOUR_AGO,
                )
            )
    limit = asyncio.Semaphore(20)

    async def get(path: str) -> int:
        async with limit:
            return (await http.get(path, headers={"User-Agent": BROWSER})).status_code

    statuses = await asyncio.gather(*(get(p) for p in paths))
    assert sorted(set(statuses)) == [200, 302]
    events = await collect(consumer, message_id, hits)
    assert len(events) == hits
    assert len({e.event_id for e in events}) == hits
    opens = [e.message_opened for e in events if e.WhichOneof("payload") == "message_opened"]
    clicks = [e.link_clicked for e in events if e.WhichOneof("payload") == "link_clicked"]
    assert len(opens) == len(clicks) == hits // 2
    assert not any(o.machine_open for o in opens)
    assert not any(c.machine_click for c in clicks)
    assert {(c.url, c.link_index) for c in clicks} == {
        (f"https://shop.example/p/{n}", n % 4 // 2) for n in range(0, hits, 2)
    }
    assert all(e.workspace_id == workspace_id for e in events)


async def test_every_link_of_a_mail_clicked_at_once_is_flagged_as_a_machine(
    http: httpx.AsyncClient,
    consumer: AIOKafkaConsumer,
) -> None:
    workspace_id, message_id, contact_id = ids()
    paths = [
        links.sign_click(
            LINK_SECRET,
            workspace_id,
            message_id,
            contact_id,
            f"https://shop.example/{n}",
            link_index=n,
            issued_at=AN_HOUR_AGO,
        )
        for n in range(5)
    ]
    # A scanner following every link of the mail at once.
    answers = await asyncio.gather(*(http.get(p, headers={"User-Agent": BROWSER}) for p in paths))
    assert {a.status_code for a in answers} == {302}
    events = await collect(consumer, message_id, 5)
    # The default rule: 3 distinct links within 3 s of each click, before or after it. Each
    # click waited out the window before it was published, so all five are flagged, the
    # first ones included.
    assert [e.link_clicked.machine_reason for e in events] == [LINK_BURST] * 5
    assert all(e.link_clicked.machine_click for e in events)
    assert {e.link_clicked.link_index for e in events} == set(range(5))


async def test_a_scanner_at_delivery_time_is_flagged_too_soon(
    http: httpx.AsyncClient,
    consumer: AIOKafkaConsumer,
) -> None:
    workspace_id, message_id, contact_id = ids()
    # Issued as it is hit (a few seconds ahead, so that a slow request on a loaded machine
    # still lands within the rule's 2 s: a hit before the issue time counts as too soon).
    path = links.sign_open(
        LINK_SECRET, workspace_id, message_id, contact_id, issued_at=int(time.time()) + 5
    )
    assert (await http.get(path, headers={"User-Agent": BROWSER})).status_code == 200
    [event] = await collect(consumer, message_id, 1)
    assert event.message_opened.machine_open
    assert event.message_opened.machine_reason == "too_soon"


@pytest.fixture
async def redis_down(infra: dict[str, str]) -> AsyncIterator[HttpService]:
    """Tracking with the real Kafka and a Redis that nobody serves."""
    from services.tracking.bootstrap import serve
    from services.tracking.config import Settings

    settings = Settings(
        bind_host="127.0.0.1",
        http_port=free_port(),
        link_secret=LINK_SECRET,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        redis_timeout_s=0.5,
    )
    async with run_http(serve, settings) as running:
        yield running


async def test_with_redis_down_clicks_still_redirect_and_reach_kafka_unflagged(
    redis_down: HttpService, consumer: AIOKafkaConsumer
) -> None:
    """The burst rule needs Redis; without it the rule is skipped, nothing is lost."""
    workspace_id, message_id, contact_id = ids()
    paths = [
        links.sign_click(
            LINK_SECRET,
            workspace_id,
            message_id,
            contact_id,
            f"https://shop.example/{n}",
            link_index=n,
            issued_at=AN_HOUR_AGO,
        )
        for n in range(4)
    ]
    async with httpx.AsyncClient(base_url=redis_down.base_url, timeout=30) as web:
        for path in paths:
            answer = await web.get(path, headers={"User-Agent": BROWSER})
            assert answer.status_code == 302
    events = await collect(consumer, message_id, 4)
    assert {e.link_clicked.link_index for e in events} == set(range(4))
    assert not any(e.link_clicked.machine_click for e in events)
