"""Kafka for the tracking service: the publisher of tracking.events.v1, and whether it is
connected (the health check asks the brokers for metadata over a client of its own)."""

from __future__ import annotations

from nudge.events.v1.envelope_pb2 import Envelope

from services.common.kafka import KafkaPublisher, supports_idempotence
from services.common.kafka_probe import BrokerProbe


class KafkaTrackingPublisher:
    def __init__(self, bootstrap_servers: str, kafka_kind: str, *, health_timeout_s: float) -> None:
        self._publisher = KafkaPublisher(
            bootstrap_servers, "nudge-tracking", idempotent=supports_idempotence(kafka_kind)
        )
        self._probe = BrokerProbe(bootstrap_servers, "nudge-tracking-health", health_timeout_s)
        self._started = False

    async def start(self) -> None:
        await self._publisher.start()
        self._started = True

    async def stop(self) -> None:
        self._started = False
        await self._probe.close()
        await self._publisher.stop()

    async def publish(self, topic: str, key: str, envelope: Envelope) -> None:
        await self._publisher.publish(topic, key, envelope)

    async def brokers(self) -> int:
        """How many brokers answer a metadata request; raises when none does."""
        if not self._started:
            raise ConnectionError("the Kafka producer is not started")
        return await self._probe.broker_count()
