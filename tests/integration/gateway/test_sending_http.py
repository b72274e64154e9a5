"""GET /v1/sending-status over HTTP, in front of the real delivery service: a manager reads
whether the anti-spam guard suspended the workspace and why; each key sees its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.delivery.test_guard import complaints, publish, sent
from tests.integration.gateway.conftest import new_workspace
from tests.integration.tracking.conftest import HttpService, run_http
from tests.support import eventually, free_port

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def sending_gateway(contacts_service: RunningService) -> AsyncIterator[HttpService]:
    from services.delivery.bootstrap import serve as serve_delivery
    from services.delivery.config import Settings as DeliverySettings
    from services.gateway.bootstrap import serve
    from services.gateway.config import Settings

    port = free_port()
    async with (
        run_in_process(serve_delivery, DeliverySettings(grpc_port=port), port) as delivery,
        run_http(
            serve,
            Settings(
                bind_host="127.0.0.1",
                http_port=free_port(),
                contacts_addr=contacts_service.address,
                delivery_addr=delivery.address,
            ),
        ) as gateway,
    ):
        yield gateway


@pytest.fixture
async def producer(infra: dict[str, str]) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"], linger_ms=5)
    await p.start()
    yield p
    await p.stop()


def client(gateway: HttpService, api_key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gateway.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=15
    )


async def test_a_manager_reads_why_the_workspace_is_suspended(
    sending_gateway: HttpService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    other = await new_workspace(contacts_service)
    async with client(sending_gateway, workspace.api_key) as http:
        fresh = await http.get("/v1/sending-status")
        assert fresh.status_code == 200, fresh.text
        assert fresh.json() == {
            "suspended": False,
            "reason": "",
            "suspended_at": None,
            "window_seconds": 7 * 24 * 3600,
            "window_sent": 0,
            "window_hard_bounces": 0,
            "window_complaints": 0,
            "hard_bounce_rate": 0.0,
            "complaint_rate": 0.0,
        }
        # The mails first, counted, then the complaints: the guard judges as events come,
        # so complaints that overtook some of the mails (other partitions) would be judged
        # over fewer mails and name another rate.
        await publish(producer, workspace, sent(600))

        async def all_counted() -> bool:
            body = (await http.get("/v1/sending-status")).json()
            return bool(body["window_sent"] == 600)

        await eventually(all_counted, timeout=60)
        await publish(producer, workspace, complaints(3))

        async def suspended() -> dict[str, object] | None:
            body: dict[str, object] = (await http.get("/v1/sending-status")).json()
            return body if body["suspended"] else None

        body = await eventually(suspended, timeout=60)
    assert body["reason"] == (
        "complaint rate 0.50 % (3 spam reports for 600 mails over the last 7 days) is above"
        " the limit of 0.30 %"
    )
    assert (body["window_sent"], body["window_complaints"]) == (600, 3)
    assert body["complaint_rate"] == pytest.approx(0.005)
    assert str(body["suspended_at"]).endswith("Z") or "+00:00" in str(body["suspended_at"])
    # Another workspace's key reads its own status, untouched.
    async with client(sending_gateway, other.api_key) as http:
        theirs = (await http.get("/v1/sending-status")).json()
    assert theirs["suspended"] is False and theirs["window_sent"] == 0


async def test_the_sending_status_needs_a_valid_key(sending_gateway: HttpService) -> None:
    async with httpx.AsyncClient(base_url=sending_gateway.base_url, timeout=15) as http:
        missing = await http.get("/v1/sending-status")
        wrong = await http.get(
            "/v1/sending-status",
            headers={"Authorization": f"Bearer nk_{uuid.uuid4().hex[:16]}_{'x' * 43}"},
        )
        malformed = await http.get(
            "/v1/sending-status", headers={"Authorization": "Bearer not a key"}
        )
    for answer in (missing, wrong, malformed):
        assert answer.status_code == 401, answer.text
        assert answer.headers["content-type"] == PROBLEM


async def test_the_sending_status_is_unavailable_without_delivery(
    gateway: HttpService, workspace: Workspace
) -> None:
    # The shared gateway fixture points delivery at a port where nothing listens.
    async with client(gateway, workspace.api_key) as http:
        answer = await http.get("/v1/sending-status")
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == PROBLEM
