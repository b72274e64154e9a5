"""The campaigns service, started in-process with the segmentation service it asks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.conftest import RunningService, run_in_process
from tests.support import free_port


@pytest.fixture(scope="module")
async def segmentation_for_campaigns(
    contacts_service: RunningService,
) -> AsyncIterator[RunningService]:
    from services.segmentation.bootstrap import serve
    from services.segmentation.config import Settings

    port = free_port()
    async with run_in_process(serve, Settings(grpc_port=port), port) as running:
        yield running


@pytest.fixture(scope="module")
async def campaigns_service(
    segmentation_for_campaigns: RunningService,
) -> AsyncIterator[RunningService]:
    from services.campaigns.bootstrap import serve
    from services.campaigns.config import Settings

    port = free_port()
    # Code passes settings by field name; BaseServiceSettings maps them to their env names.
    settings = Settings(grpc_port=port, segmentation_addr=segmentation_for_campaigns.address)
    async with run_in_process(serve, settings, port) as running:
        yield running
