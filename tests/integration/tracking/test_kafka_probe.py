"""The broker probe behind tracking's /healthz, against the session's real broker, a closed
port and a server that accepts connections and never answers (a hung broker)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from services.common.kafka_probe import BrokerProbe
from tests.support import free_port


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A listening socket that never reads nor answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


async def test_a_live_cluster_counts_its_broker_and_the_probe_can_be_asked_again(
    infra: dict[str, str],
) -> None:
    probe = BrokerProbe(infra["KAFKA_BOOTSTRAP_SERVERS"], "test-probe", timeout_s=5)
    try:
        assert await asyncio.wait_for(probe.broker_count(), 30) == 1
        assert await asyncio.wait_for(probe.broker_count(), 30) == 1
    finally:
        await probe.close()


async def test_nothing_listening_is_a_prompt_failure_every_time() -> None:
    probe = BrokerProbe(f"127.0.0.1:{free_port()}", "test-probe", timeout_s=5)
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(Exception) as failure:
                await asyncio.wait_for(probe.broker_count(), 20)
            assert not isinstance(failure.value, TimeoutError), failure.value
            assert time.monotonic() - started < 10
    finally:
        await probe.close()


async def test_a_broker_that_never_answers_fails_the_probe_within_its_timeout(
    silent_server: str,
) -> None:
    probe = BrokerProbe(silent_server, "test-probe", timeout_s=0.5)
    try:
        for _ in range(2):  # and again: a failed probe does not wedge the next one
            started = time.monotonic()
            with pytest.raises(Exception):  # noqa: B017 (any failure; the time is the point)
                # Far above the probe's own timeout: the probe must give up by itself.
                await asyncio.wait_for(probe.broker_count(), 30)
            assert time.monotonic() - started < 15
    finally:
        await probe.close()
