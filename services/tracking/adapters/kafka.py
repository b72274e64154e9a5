"""Kafka for the tracking service: the publisher of tracking.events.v1, and whether it is
connected (the health check asks the brokers for metadata over a client of its own)."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.client import AIOKafkaClient
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.kafka import KafkaPublisher, supports_idempotence


class KafkaTrackingPublisher:
    def __init__(self, bootstrap_servers: str, kafka_kind: str) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._publisher = KafkaPublisher(
            bootstrap_servers, "nudge-tracking", idempotent=supports_idempotence(kafka_kind)
        )
        self._probe: AIOKafkaClient | None = None
        self._started = False

    async def start(self) -> None:
        await self._publisher.start()
        self._started = True

    async def stop(self) -> None:
        self._started = False
        await self._close_probe()
        await self._publisher.stop()

    async def publish(self, topic: str, key: str, envelope: Envelope) -> None:
        await self._publisher.publish(topic, key, envelope)

    async def brokers(self) -> int:
        """How many brokers answer a metadata request; raises when none does."""
        if not self._started:
            raise ConnectionError("the Kafka producer is not started")
        try:
            if self._probe is None:
                self._probe = AIOKafkaClient(
                    bootstrap_servers=self._bootstrap_servers,
                    client_id="nudge-tracking-health",
                    request_timeout_ms=2000,
                )
                await self._probe.bootstrap()
            cluster = await self._probe.fetch_all_metadata()
            return len(cluster.brokers())
        except BaseException:
            # A broken client may hold dead connections: start afresh next time.
            await self._close_probe()
            raise

    async def _close_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await probe.close()
