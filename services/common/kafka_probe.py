"""Health probes of the Kafka cluster, and how a failed probe is told to a reader.

A :class:`BrokerProbe` asks the brokers for cluster metadata over a client of its own (not a
producer's or a consumer's, whose connections say nothing about a fresh one). The client is
opened on first use and kept; after any failure it is closed, so the next probe starts afresh
rather than on dead connections. The gateway's ``/healthz`` and tracking's use it.
"""

from __future__ import annotations

import contextlib

from aiokafka.client import AIOKafkaClient


class BrokerProbe:
    def __init__(self, bootstrap_servers: str, client_id: str, timeout_s: float) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._client_id = client_id
        self._timeout_ms = max(1, int(timeout_s * 1000))
        self._client: AIOKafkaClient | None = None

    async def broker_count(self) -> int:
        """How many brokers the cluster metadata names; raises when it cannot be had or
        names none. Callers still bound the wait (``asyncio.wait_for``): bootstrapping can
        try several servers, each within the timeout."""
        try:
            if self._client is None:
                self._client = AIOKafkaClient(
                    bootstrap_servers=self._bootstrap_servers,
                    client_id=self._client_id,
                    request_timeout_ms=self._timeout_ms,
                )
                await self._client.bootstrap()
            cluster = await self._client.fetch_all_metadata()
        except BaseException:
            await self.close()  # start afresh next time, not on dead connections
            raise
        brokers = len(cluster.brokers())
        if brokers == 0:
            raise ConnectionError("no broker in the cluster metadata")
        return brokers

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


def describe(err: BaseException) -> str:
    """A short reason for a failed health probe (Kafka, gRPC, SQL, HTTP...), without secrets:
    a gRPC error gives its status and details, anything else its type and message."""
    if isinstance(err, TimeoutError):
        return "timed out"
    code = getattr(err, "code", None)
    if callable(code):  # a gRPC error: its status says enough
        with contextlib.suppress(Exception):
            return f"{code().name}: {err.details()}"[:200]  # type: ignore[attr-defined]
    text = str(err) or type(err).__name__
    return f"{type(err).__name__}: {text}"[:200]
