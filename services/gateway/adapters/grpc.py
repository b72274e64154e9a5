"""gRPC stubs of the services behind the gateway, on channels opened once at start-up.

Channels come from :func:`services.common.grpc_client.channel`, which carries the trace
context, so each call continues the trace of the HTTP request that made it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2_grpc
from nudge.campaigns.v1 import campaigns_pb2_grpc
from nudge.contacts.v1 import contacts_pb2_grpc, imports_pb2_grpc
from nudge.delivery.v1 import delivery_pb2_grpc
from nudge.segmentation.v1 import segmentation_pb2_grpc
from nudge.shop.v1 import shop_pb2_grpc
from nudge.triggers.v1 import triggers_pb2_grpc

from services.common.grpc_client import channel
from services.gateway.config import Settings


@dataclass
class Backends:
    contacts: contacts_pb2_grpc.ContactServiceStub
    consents: contacts_pb2_grpc.ConsentServiceStub
    workspaces: contacts_pb2_grpc.WorkspaceServiceStub
    imports: imports_pb2_grpc.ImportServiceStub
    privacy: contacts_pb2_grpc.PrivacyServiceStub
    shop_events: shop_pb2_grpc.ShopEventServiceStub
    segments: segmentation_pb2_grpc.SegmentServiceStub
    campaigns: campaigns_pb2_grpc.CampaignServiceStub
    delivery: delivery_pb2_grpc.DeliveryServiceStub
    workflows: triggers_pb2_grpc.WorkflowServiceStub
    # grpc.health.v1 of every service the gateway depends on, by service name.
    health: dict[str, health_pb2_grpc.HealthStub]
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    # The console's manager accounts (issue 18); None in unit tests that do not need them.
    managers: contacts_pb2_grpc.ManagerServiceStub | None = None

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels))


def open_backends(settings: Settings) -> Backends:
    addresses = {
        "contacts": settings.contacts_addr,
        "segmentation": settings.segmentation_addr,
        "campaigns": settings.campaigns_addr,
        "triggers": settings.triggers_addr,
        "delivery": settings.delivery_addr,
    }
    channels = {name: channel(address) for name, address in addresses.items()}
    return Backends(
        contacts=contacts_pb2_grpc.ContactServiceStub(channels["contacts"]),
        consents=contacts_pb2_grpc.ConsentServiceStub(channels["contacts"]),
        workspaces=contacts_pb2_grpc.WorkspaceServiceStub(channels["contacts"]),
        imports=imports_pb2_grpc.ImportServiceStub(channels["contacts"]),
        privacy=contacts_pb2_grpc.PrivacyServiceStub(channels["contacts"]),
        shop_events=shop_pb2_grpc.ShopEventServiceStub(channels["contacts"]),
        segments=segmentation_pb2_grpc.SegmentServiceStub(channels["segmentation"]),
        campaigns=campaigns_pb2_grpc.CampaignServiceStub(channels["campaigns"]),
        delivery=delivery_pb2_grpc.DeliveryServiceStub(channels["delivery"]),
        workflows=triggers_pb2_grpc.WorkflowServiceStub(channels["triggers"]),
        health={name: health_pb2_grpc.HealthStub(ch) for name, ch in channels.items()},
        channels=list(channels.values()),
        managers=contacts_pb2_grpc.ManagerServiceStub(channels["contacts"]),
    )
