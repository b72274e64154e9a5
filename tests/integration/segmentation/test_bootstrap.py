"""Start-up failures of the segmentation service leave nothing running behind them."""

from __future__ import annotations

import asyncio
import socket

import pytest

from services.segmentation.bootstrap import serve
from services.segmentation.config import Settings


async def test_when_the_grpc_port_is_taken_the_consumer_is_stopped_again(
    infra: dict[str, str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        before = asyncio.all_tasks()
        with pytest.raises(OSError, match="bind"):
            await asyncio.wait_for(serve(Settings(grpc_port=port), asyncio.Event()), 60)
    left = [t.get_name() for t in asyncio.all_tasks() - before if not t.done()]
    assert "read-model-consumer" not in left
