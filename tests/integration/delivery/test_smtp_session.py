"""Session and configuration errors: the relay unreachable, the sender refused at MAIL FROM,
the login refused. No message is to blame, so none is bounced: sending pauses (the consumer
starts no new request), the health check ``dependency.smtp_sending`` says NOT_SERVING, and
the paused message goes out once the relay answers (by itself) or the configuration is
fixed (a restart). Each test runs its own delivery service: the configuration is the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from aiosmtpd.smtp import SMTP, Envelope, Session
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nudge.delivery.v1 import delivery_pb2

from tests.integration.conftest import RunningService, Workspace
from tests.integration.delivery.helpers import (
    Events,
    address,
    is_suppressed,
    new_contact,
    request_mail,
    row,
    running_sink,
    status_is,
)
from tests.smtp_server import ScriptedSmtp
from tests.support import eventually, free_port

S = delivery_pb2
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
async def producer(infra: dict[str, str]) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"])
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def events(infra: dict[str, str]) -> AsyncIterator[Events]:
    reader = Events(infra["KAFKA_BOOTSTRAP_SERVERS"])
    await reader.start()
    yield reader
    await reader.stop()


def delivery(smtp_url: str, **overrides: object) -> tuple[object, int]:
    from services.delivery.config import Settings

    port = free_port()
    settings = Settings(
        grpc_port=port,
        smtp_url=smtp_url,
        smtp_timeout_s=3.0,
        pause_max_backoff_s=0.5,
        health_interval_s=0.2,
        **overrides,  # type: ignore[arg-type]
    )
    return settings, port


@contextlib.asynccontextmanager
async def run_in_process(settings: object, port: int) -> AsyncIterator[RunningService]:
    """Like tests.integration.conftest.run_in_process, but up once the health service answers
    at all: with its relay away, delivery is rightly NOT_SERVING."""
    from services.delivery.bootstrap import serve

    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))  # type: ignore[arg-type]
    service = RunningService(address=f"127.0.0.1:{port}", task=task, stop=stop)

    async def answers() -> bool:
        if task.done():
            task.result()  # raises what start-up failed with
        try:
            await sending_serves(service)
        except grpc.aio.AioRpcError:
            return False
        return True

    try:
        await eventually(answers, timeout=30)
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


async def sending_serves(service: RunningService) -> bool:
    async with grpc.aio.insecure_channel(service.address) as ch:
        answer = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="dependency.smtp_sending"), timeout=5
        )
    return bool(answer.status == SERVING)


async def sending_paused(service: RunningService) -> bool:
    return not await sending_serves(service)


async def test_an_unreachable_relay_pauses_sending_and_it_resumes_by_itself(
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    events: Events,
    tmp_path: Path,
) -> None:
    relay_port = free_port()  # nothing listens there yet
    settings, port = delivery(f"smtp://127.0.0.1:{relay_port}")
    first = await new_contact(contacts_service, workspace, address())
    second = await new_contact(contacts_service, workspace, address())
    async with run_in_process(settings, port) as service:
        message_id = await request_mail(producer, workspace, first.id)
        queued = await eventually(
            lambda: status_is(message_id, S.MESSAGE_STATUS_QUEUED), timeout=60
        )
        assert queued["detail"].startswith("paused: connect:"), queued["detail"]
        await eventually(lambda: sending_paused(service), timeout=30)
        later = await request_mail(producer, workspace, second.id)
        async with running_sink(tmp_path, relay_port) as sink:
            await eventually(lambda: status_is(message_id, S.MESSAGE_STATUS_SENT), timeout=60)
            await eventually(lambda: status_is(later, S.MESSAGE_STATUS_SENT), timeout=60)
            await eventually(lambda: sending_serves(service), timeout=30)
            assert sink.copies(message_id) == sink.copies(later) == 1
    sent = await row(message_id)
    assert sent is not None and sent["attempts"] == 1  # paused tries are not attempts
    found = await eventually(lambda: events.has(message_id, "message_sent"), timeout=30)
    assert [name for name, _ in found] == ["message_queued", "message_sent"]


@pytest.mark.parametrize(
    ("broken", "detail"),
    [
        ({"bounce_domain": "bounce-553.nudge.localhost"}, "paused: mail: 553 5.1.3"),
        ({"login": "refuse"}, "paused: auth: 535"),
    ],
    ids=["sender-refused", "login-refused"],
)
async def test_a_configuration_error_bounces_nobody_until_it_is_fixed(
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    events: Events,
    tmp_path: Path,
    broken: dict[str, str],
    detail: str,
) -> None:
    contact = await new_contact(contacts_service, workspace, address())
    async with running_sink(tmp_path) as sink:
        login = broken.get("login")
        url = f"smtp://{login}:secret@127.0.0.1:{sink.port}" if login else sink.url
        overrides = {k: v for k, v in broken.items() if k != "login"}
        settings, port = delivery(url, **overrides)
        async with run_in_process(settings, port) as service:
            message_id = await request_mail(producer, workspace, contact.id)
            queued = await eventually(
                lambda: status_is(message_id, S.MESSAGE_STATUS_QUEUED), timeout=60
            )
            assert queued["detail"].startswith(detail), queued["detail"]
            await eventually(lambda: sending_paused(service), timeout=30)
        assert sink.copies(message_id) == 0
        # The operator fixes the configuration and restarts delivery.
        settings, port = delivery(sink.url)
        async with run_in_process(settings, port):
            sent = await eventually(
                lambda: status_is(message_id, S.MESSAGE_STATUS_SENT), timeout=60
            )
        assert sent["attempts"] == 1
        assert sink.copies(message_id) == 1
    found = await eventually(lambda: events.has(message_id, "message_sent"), timeout=30)
    assert [name for name, _ in found] == ["message_queued", "message_sent"]
    assert not await is_suppressed(contacts_service, workspace, contact.id)


REFUSED_DOMAIN = "refused.nudge.localhost"


class RefusingOneSenderDomain(ScriptedSmtp):
    """A relay that refuses senders at one domain (``553`` at MAIL FROM) and notes every
    sender it is offered, probes' and sends' alike."""

    def __init__(self) -> None:
        super().__init__()
        self.senders: list[str] = []
        self._senders_lock = threading.Lock()

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self._senders_lock:
            self.senders.append(address)
        if address.endswith(f"@{REFUSED_DOMAIN}"):
            return "553 5.1.3 sender domain not allowed"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    def offered(self) -> list[str]:
        with self._senders_lock:
            return list(self.senders)


@pytest.fixture
def refusing_relay() -> Iterator[RefusingOneSenderDomain]:
    server = RefusingOneSenderDomain()
    server.start()
    yield server
    server.stop()


async def test_the_paused_sending_probe_offers_the_same_kind_of_sender_as_a_send(
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    refusing_relay: RefusingOneSenderDomain,
) -> None:
    """The relay refuses only the VERP bounce domain. A probe from the From address would
    pass, claim the message again and fail again at each try; a probe from a VERP address
    at the bounce domain is refused like the sends, so sending stays paused."""
    contact = await new_contact(contacts_service, workspace, address())
    settings, port = delivery(refusing_relay.url, bounce_domain=REFUSED_DOMAIN)
    async with run_in_process(settings, port) as service:
        message_id = await request_mail(producer, workspace, contact.id)
        queued = await eventually(
            lambda: status_is(message_id, S.MESSAGE_STATUS_QUEUED), timeout=60
        )
        assert queued["detail"].startswith("paused: mail: 553"), queued["detail"]
        # The first send, then probes while paused (the consumer retries with backoff).
        await eventually(lambda: len(refusing_relay.offered()) >= 4, timeout=60)
        assert await sending_paused(service)
    senders = refusing_relay.offered()
    assert all(s.startswith("bounces+") and s.endswith(f"@{REFUSED_DOMAIN}") for s in senders), (
        senders
    )
    assert refusing_relay.messages() == []
    sent = await row(message_id)
    assert sent is not None and sent["attempts"] == 0  # given back, never claimed by a probe
