"""The segmentation service, started in-process once for this package's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.conftest import RunningService, run_in_process
from tests.support import free_port


@pytest.fixture(scope="session")
async def segmentation_service(contacts_service: RunningService) -> AsyncIterator[RunningService]:
    from services.segmentation.bootstrap import serve
    from services.segmentation.config import Settings

    port = free_port()
    async with run_in_process(serve, Settings(grpc_port=port), port) as running:
        yield running
