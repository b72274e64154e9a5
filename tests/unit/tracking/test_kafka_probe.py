"""The broker probe shared by tracking's and the gateway's /healthz, without a broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.common import kafka_probe
from services.common.kafka_probe import BrokerProbe
from services.tracking import bootstrap
from services.tracking.adapters import kafka as tracking_kafka
from services.tracking.config import Settings
from tests.support import free_port


async def test_a_probe_of_nothing_fails_and_starts_afresh_next_time() -> None:
    probe = BrokerProbe(f"127.0.0.1:{free_port()}", "unit-probe", timeout_s=0.5)
    for _ in range(2):
        with pytest.raises(Exception) as failure:
            await asyncio.wait_for(probe.broker_count(), 5)
        assert not isinstance(failure.value, TimeoutError)
        assert probe._client is None  # closed, not kept with dead connections
    await probe.close()


async def test_a_cluster_without_brokers_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoBrokers:
        def __init__(self, **options: Any) -> None:
            self.options = options

        async def bootstrap(self) -> None:
            pass

        async def fetch_all_metadata(self) -> Any:
            class Cluster:
                def brokers(self) -> set[int]:
                    return set()

            return Cluster()

        async def close(self) -> None:
            pass

    made: list[NoBrokers] = []

    def client(**options: Any) -> NoBrokers:
        made.append(NoBrokers(**options))
        return made[-1]

    monkeypatch.setattr(kafka_probe, "AIOKafkaClient", client)
    probe = BrokerProbe("kafka:9092", "unit-probe", timeout_s=1.5)
    with pytest.raises(ConnectionError, match="no broker"):
        await probe.broker_count()
    assert made[0].options["request_timeout_ms"] == 1500
    assert made[0].options["client_id"] == "unit-probe"


async def test_tracking_probes_with_its_health_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    probes: list[tuple[Any, ...]] = []
    publishers: list[dict[str, Any]] = []

    class Probe:
        def __init__(self, *args: Any) -> None:
            probes.append(args)

    class Publisher:
        def __init__(self, *args: Any, **options: Any) -> None:
            publishers.append(options)

        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            pass

    monkeypatch.setattr(tracking_kafka, "BrokerProbe", Probe)
    monkeypatch.setattr(bootstrap, "KafkaTrackingPublisher", Publisher)
    settings = Settings(kafka_bootstrap_servers="kafka:9092", health_timeout_s=0.75)
    app = bootstrap.create_app(settings)
    async with app.router.lifespan_context(app):
        pass
    assert publishers == [{"health_timeout_s": 0.75}]

    publisher = tracking_kafka.KafkaTrackingPublisher(
        "kafka:9092", "tansu", health_timeout_s=settings.health_timeout_s
    )
    assert probes == [("kafka:9092", "nudge-tracking-health", 0.75)]
    with pytest.raises(ConnectionError, match="not started"):
        await publisher.brokers()
