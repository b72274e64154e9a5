"""gRPC methods of the campaigns service's lifecycle part: decode, call a handler, encode.

Mixed into :class:`services.campaigns.entrypoints.grpc.CampaignServicer`, which holds
``self.ports`` (services/campaigns/ports.py)."""

from __future__ import annotations

from services.campaigns.ports import Ports


class LifecycleRpcs:
    ports: Ports
