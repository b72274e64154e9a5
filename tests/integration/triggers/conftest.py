"""Fixtures of the trigger engine's tests: a movable clock shared by every process, the
engine running in-process on real PostgreSQL and Kafka, and a producer of the events it
reads (tests/integration/triggers/support.py says how to drive it)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from services.common import clock
from tests.integration.conftest import RunningService, run_in_process
from tests.integration.triggers.support import EventProducer, MovableClock
from tests.support import free_port, unique


@pytest.fixture(scope="module")
def engine_clock(
    infra: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MovableClock]:
    """The clock of every component, in this process and in child processes started while
    the fixture lives (``NUDGE_CLOCK_FILE``)."""
    path = tmp_path_factory.mktemp("clock") / "offset"
    movable = MovableClock(path)
    saved_env = os.environ.get("NUDGE_CLOCK_FILE")
    os.environ["NUDGE_CLOCK_FILE"] = str(path)
    clock.set_clock(clock.FileOffsetClock(path))
    try:
        yield movable
    finally:
        clock.set_clock(clock.SystemClock())
        if saved_env is None:
            os.environ.pop("NUDGE_CLOCK_FILE", None)
        else:
            os.environ["NUDGE_CLOCK_FILE"] = saved_env


@pytest.fixture(scope="module")
async def triggers_engine(
    engine_clock: MovableClock, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningService]:
    """``services.triggers`` in-process, with a consumer group of its own."""
    from services.triggers.bootstrap import serve
    from services.triggers.config import Settings

    port = free_port()
    settings = Settings(
        grpc_port=port,
        app_id=unique("triggers-test"),
        data_dir=str(tmp_path_factory.mktemp("faust")),
        live_workflows_ttl_s=0.5,
    )
    async with run_in_process(serve, settings, port) as running:
        yield running


@pytest.fixture
async def producer(infra: dict[str, str]) -> AsyncIterator[EventProducer]:
    events = EventProducer(infra["KAFKA_BOOTSTRAP_SERVERS"])
    await events.start()
    try:
        yield events
    finally:
        await events.stop()
