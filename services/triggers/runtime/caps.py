"""The workspace's frequency cap for marketing mail: at most N messages per contact per D days.

The truth is campaigns' workspace settings (``CampaignService.GetCampaignSettings``, the
same cap campaigns apply), asked over gRPC with the internal token and cached per
workspace for :data:`TTL_S` seconds: a changed cap reaches the engine within a minute.
When campaigns cannot answer, the documented default (1 per 30 days) applies and is
cached briefly, so an outage of campaigns never stops workflows, and never lets them mail
more than the default would.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import grpc
from nudge.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc

from services.common.auth import internal_metadata

log = logging.getLogger(__name__)

TTL_S = 60.0
FALLBACK_TTL_S = 10.0
CALL_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Cap:
    messages: int = 1
    days: int = 30


DEFAULT = Cap()


class FrequencyCaps:
    """The cap of each workspace, cached; ``stub`` None means the default always (tests of
    the engine alone, a deployment without campaigns)."""

    def __init__(
        self, stub: campaigns_pb2_grpc.CampaignServiceStub | None, internal_token: str
    ) -> None:
        self._stub = stub
        self._token = internal_token
        self._cache: dict[str, tuple[float, Cap]] = {}

    async def cap(self, workspace_id: str) -> Cap:
        hit = self._cache.get(workspace_id)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        if self._stub is None:
            return DEFAULT
        try:
            settings: campaigns_pb2.CampaignSettings = await self._stub.GetCampaignSettings(
                campaigns_pb2.GetCampaignSettingsRequest(),
                metadata=internal_metadata(self._token, workspace_id),
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as err:
            log.warning(
                "campaign settings of %s unavailable (%s); frequency cap %s per %s days",
                workspace_id,
                err.code(),
                DEFAULT.messages,
                DEFAULT.days,
            )
            self._cache[workspace_id] = (now + FALLBACK_TTL_S, DEFAULT)
            return DEFAULT
        cap = Cap(
            messages=settings.frequency_cap_messages or DEFAULT.messages,
            days=settings.frequency_cap_days or DEFAULT.days,
        )
        self._cache[workspace_id] = (now + TTL_S, cap)
        return cap
