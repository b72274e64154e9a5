"""How a service process starts and stops: logging, tracing, uvloop, signals.

``run_service(name, settings, main)`` sets up logs and traces, then runs ``main(stop)`` until
SIGTERM or SIGINT sets ``stop``; ``main`` should return once it has shut down cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from datetime import timedelta

from services.common import clock
from services.common.config import BaseServiceSettings
from services.common.logs import setup_logging
from services.common.tracing import setup_tracing

log = logging.getLogger(__name__)


def configure(name: str, settings: BaseServiceSettings) -> None:
    setup_logging(name, settings.log_level, settings.log_format)
    setup_tracing(name, settings.otlp_endpoint, settings.traces_dir)
    if settings.clock_offset_s:
        clock.set_clock(clock.SystemClock(timedelta(seconds=settings.clock_offset_s)))


async def until_stopped(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Wait for ``stop``, or for a background task (consumer, relay) to end on its own: a
    service whose consumer died must exit so the supervisor restarts it, not look healthy."""
    waiting = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    for task in done:
        if task is not waiting:
            log.error(
                "background task %s ended; stopping", task.get_name(), exc_info=task.exception()
            )


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def run_service(
    name: str, settings: BaseServiceSettings, main: Callable[[asyncio.Event], Awaitable[None]]
) -> None:
    configure(name, settings)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("starting %s", name)
        await main(stop)
        log.info("%s stopped", name)

    try:
        import uvloop

        uvloop.run(runner())
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional in spirit
        asyncio.run(runner())
