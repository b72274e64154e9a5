"""Fixtures of the consent tests: a pool on the contacts schema, beside the running service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.common.db import create_pool
from tests.integration.conftest import RunningService


@pytest.fixture
async def pool(
    infra: dict[str, str], contacts_service: RunningService
) -> AsyncIterator[asyncpg.Pool]:
    """The contacts schema, migrated by the running service."""
    p = await create_pool(infra["DATABASE_URL"], "contacts", max_size=4)
    yield p
    await p.close()
