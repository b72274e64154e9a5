"""API-key tests: the real contacts service, and the services that verify keys through it
(segmentation, campaigns, delivery, each in-process on the session's Redis) behind the
gateway, so a test can present one key to every one of them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta

import grpc
import httpx
import pytest
from nudge.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from services.common import clock
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.tracking.conftest import HttpService, run_http
from tests.support import free_port


def bearer(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),)


@pytest.fixture(scope="module")
async def key_services(contacts_service: RunningService) -> AsyncIterator[dict[str, str]]:
    """segmentation, campaigns and delivery, by name: their gRPC addresses."""
    from services.campaigns.bootstrap import serve as serve_campaigns
    from services.campaigns.config import Settings as CampaignsSettings
    from services.delivery.bootstrap import serve as serve_delivery
    from services.delivery.config import Settings as DeliverySettings
    from services.segmentation.bootstrap import serve as serve_segmentation
    from services.segmentation.config import Settings as SegmentationSettings

    ports = {name: free_port() for name in ("segmentation", "campaigns", "delivery")}
    async with contextlib.AsyncExitStack() as stack:
        segmentation = await stack.enter_async_context(
            run_in_process(
                serve_segmentation,
                SegmentationSettings(grpc_port=ports["segmentation"]),
                ports["segmentation"],
            )
        )
        campaigns = await stack.enter_async_context(
            run_in_process(
                serve_campaigns,
                CampaignsSettings(
                    grpc_port=ports["campaigns"], segmentation_addr=segmentation.address
                ),
                ports["campaigns"],
            )
        )
        delivery = await stack.enter_async_context(
            run_in_process(
                serve_delivery, DeliverySettings(grpc_port=ports["delivery"]), ports["delivery"]
            )
        )
        yield {
            "contacts": contacts_service.address,
            "segmentation": segmentation.address,
            "campaigns": campaigns.address,
            "delivery": delivery.address,
        }


@pytest.fixture(scope="module")
async def keys_gateway(key_services: dict[str, str]) -> AsyncIterator[HttpService]:
    from services.gateway.bootstrap import serve
    from services.gateway.config import Settings

    nowhere = f"127.0.0.1:{free_port()}"
    settings = Settings(
        bind_host="127.0.0.1",
        http_port=free_port(),
        contacts_addr=key_services["contacts"],
        segmentation_addr=key_services["segmentation"],
        campaigns_addr=key_services["campaigns"],
        triggers_addr=nowhere,
        delivery_addr=key_services["delivery"],
        tracking_url=f"http://{nowhere}",
        health_timeout_s=1.0,
    )
    async with run_http(serve, settings) as running:
        yield running


@pytest.fixture
async def http(keys_gateway: HttpService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=keys_gateway.base_url, timeout=15) as client:
        yield client


@dataclass
class Stubs:
    workspaces: contacts_pb2_grpc.WorkspaceServiceStub
    contacts: contacts_pb2_grpc.ContactServiceStub


@pytest.fixture
async def stubs(contacts_service: RunningService) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        yield Stubs(
            contacts_pb2_grpc.WorkspaceServiceStub(channel),
            contacts_pb2_grpc.ContactServiceStub(channel),
        )


async def create_key(
    stubs: Stubs, workspace: Workspace, name: str = "integration"
) -> contacts_pb2.CreateApiKeyResponse:
    answer: contacts_pb2.CreateApiKeyResponse = await stubs.workspaces.CreateApiKey(
        contacts_pb2.CreateApiKeyRequest(name=name), metadata=workspace.metadata
    )
    return answer


async def accepted_by(service: str, address: str, api_key: str) -> bool:
    """Whether ``service`` lets ``api_key`` in: any answer but UNAUTHENTICATED (a probe may
    well be NOT_FOUND; the key was accepted to get there)."""
    async with grpc.aio.insecure_channel(address) as channel:
        md = bearer(api_key)
        try:
            if service == "contacts":
                await contacts_pb2_grpc.WorkspaceServiceStub(channel).ListApiKeys(
                    contacts_pb2.ListApiKeysRequest(), metadata=md, timeout=10
                )
            elif service == "segmentation":
                await segmentation_pb2_grpc.SegmentServiceStub(channel).ListSegments(
                    segmentation_pb2.ListSegmentsRequest(), metadata=md, timeout=10
                )
            elif service == "campaigns":
                await campaigns_pb2_grpc.CampaignServiceStub(channel).ListCampaigns(
                    campaigns_pb2.ListCampaignsRequest(), metadata=md, timeout=10
                )
            elif service == "delivery":
                await delivery_pb2_grpc.DeliveryServiceStub(channel).GetMessageStatus(
                    delivery_pb2.GetMessageStatusRequest(
                        message_id="00000000-0000-4000-8000-000000000000"
                    ),
                    metadata=md,
                    timeout=10,
                )
            else:
                raise ValueError(service)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                return False
            if err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return True
            raise
    return True


async def accepted_everywhere(
    services: dict[str, str], http: httpx.AsyncClient, api_key: str
) -> dict[str, bool]:
    """Per service (and "gateway" over HTTP): does it accept ``api_key`` now?"""
    seen = {name: await accepted_by(name, address, api_key) for name, address in services.items()}
    answer = await http.get("/v1/api-keys", headers={"Authorization": f"Bearer {api_key}"})
    assert answer.status_code in (200, 401), answer.text
    seen["gateway"] = answer.status_code == 200
    return seen


@contextlib.contextmanager
def shifted_clock() -> Iterator[clock.SystemClock]:
    """Every in-process component's clock (the services run in this process), real time
    plus an offset the test moves; restored afterwards."""
    previous = clock._clock
    shifted = clock.SystemClock(timedelta())
    clock.set_clock(shifted)
    try:
        yield shifted
    finally:
        clock.set_clock(previous)
