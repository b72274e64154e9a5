"""The common start-up pattern (services/common/runtime.py) with stand-in resources: what
opens is closed in reverse, on a stop, on a failing start step and when a background task
dies; and the dependency monitor's health statuses."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest
from grpc_health.v1 import health_pb2
from pydantic import Field

from services.common import runtime
from services.common.config import BaseServiceSettings
from services.common.dependencies import DependencyMonitor

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Journal:
    def __init__(self) -> None:
        self.entries: list[str] = []

    def closer(self, name: str) -> Any:
        async def close() -> None:
            self.entries.append(f"close {name}")

        return close


async def test_a_stop_closes_everything_in_reverse_order_and_cancels_tasks() -> None:
    journal, stop = Journal(), asyncio.Event()
    started: list[asyncio.Task[None]] = []

    async def start(service: runtime.Service) -> None:
        service.push(journal.closer("pool"))
        started.append(service.spawn(asyncio.Event().wait(), "consumer"))  # type: ignore[arg-type]
        service.push(journal.closer("server"))
        stop.set()

    await runtime.serve("test", BaseServiceSettings(), stop, start)
    assert journal.entries == ["close server", "close pool"]
    assert started[0].cancelled()


async def test_a_failing_start_step_closes_what_the_earlier_ones_opened() -> None:
    journal = Journal()

    spawned: list[asyncio.Task[None]] = []

    async def start(service: runtime.Service) -> None:
        service.push(journal.closer("pool"))
        spawned.append(service.spawn(asyncio.Event().wait(), "relay"))  # type: ignore[arg-type]
        service.push(journal.closer("publisher"))
        raise OSError("port taken")

    before = asyncio.all_tasks()
    with pytest.raises(OSError, match="port taken"):
        await runtime.serve("test", BaseServiceSettings(), asyncio.Event(), start)
    assert journal.entries == ["close publisher", "close pool"]
    assert spawned[0].cancelled()
    # The event loop is shared by the whole session: a task another test left behind (an
    # asyncpg pool's shielded release) may start meanwhile. Only tasks that runtime or this
    # test created count.
    assert not [t for t in asyncio.all_tasks() - before if not t.done() and _ours(t)]


def _ours(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    filename = code.co_filename if code is not None else ""
    return filename in (__file__, runtime.__file__)


async def test_a_background_task_that_ends_stops_the_service() -> None:
    journal = Journal()

    async def dies() -> None:
        raise ConnectionError("broker gone")

    async def start(service: runtime.Service) -> None:
        service.push(journal.closer("pool"))
        service.spawn(dies(), "consumer")

    with pytest.raises(runtime.BackgroundTaskEnded, match="consumer"):
        await asyncio.wait_for(
            runtime.serve("test", BaseServiceSettings(), asyncio.Event(), start), timeout=10
        )
    assert journal.entries == ["close pool"]


async def test_started_runs_once_everything_has_started_and_before_the_stop() -> None:
    journal, stop = Journal(), asyncio.Event()

    async def start(service: runtime.Service) -> None:
        service.push(journal.closer("pool"))
        journal.entries.append("started the server")

    def started() -> None:
        journal.entries.append("settled")
        stop.set()

    await runtime.serve("test", BaseServiceSettings(), stop, start, started=started)
    assert journal.entries == ["started the server", "settled", "close pool"]


@pytest.fixture
def collector() -> Iterator[None]:
    """The collector's thresholds and frozen objects put back as they were."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_heap_freezes_what_start_up_left_and_collects_young_objects_less_often(
    collector: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NUDGE_GC_DEFAULTS", raising=False)
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    runtime.settle_heap()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (runtime.GC_YOUNG_THRESHOLD, 10, 10)


def test_settle_heap_leaves_pythons_defaults_when_told_to(
    collector: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NUDGE_GC_DEFAULTS", "1")
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    runtime.settle_heap()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (700, 10, 10)


def test_development_secrets_are_refused_unless_in_development_mode() -> None:
    class Settings(BaseServiceSettings):
        token: str = Field("dev-token-value", repr=False)

    with pytest.raises(runtime.InsecureSettings, match="NUDGE_DEV_MODE=1") as refused:
        runtime.refuse_insecure_secrets("test", Settings(dev_mode=False))
    assert "TOKEN is a known development value" in str(refused.value)
    assert "dev-token-value" not in str(refused.value)
    runtime.refuse_insecure_secrets("test", Settings(dev_mode=True))


class Health:
    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}

    async def set(self, service: str, status: Any) -> None:
        self.statuses[service] = status


async def test_a_dependency_down_marks_it_and_the_service_not_serving_until_it_is_back() -> None:
    database_up = True

    async def postgres() -> None:
        if not database_up:
            raise ConnectionError("refused")

    async def redis() -> None:
        pass

    health = Health()
    monitor = DependencyMonitor(
        {"postgres": postgres, "redis": redis},
        health,
        ["nudge.x.v1.XService"],
        interval_s=60,
        timeout_s=1,
    )
    assert await monitor.check_once() == {"postgres": None, "redis": None}
    assert set(health.statuses.values()) == {SERVING}
    database_up = False
    assert await monitor.check_once() == {"postgres": "ConnectionError: refused", "redis": None}
    assert health.statuses == {
        "dependency.postgres": NOT_SERVING,
        "dependency.redis": SERVING,
        "": NOT_SERVING,
        "nudge.x.v1.XService": NOT_SERVING,
    }
    database_up = True
    await monitor.check_once()
    assert set(health.statuses.values()) == {SERVING}


async def test_a_check_that_hangs_counts_as_down() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    health = Health()
    monitor = DependencyMonitor({"kafka": hangs}, health, [], interval_s=60, timeout_s=0.05)
    assert await monitor.check_once() == {"kafka": "timed out"}
    assert health.statuses[""] == NOT_SERVING
