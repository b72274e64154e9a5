"""Group commit of single shop events: TrackEvent calls that arrive together share one
transaction.

Each TrackEvent used to take its own connection and transaction (a contact lookup, a claim,
an outbox row and a NOTIFY, then a commit that waits for the disk): about five round trips
and one WAL flush per event, which held the service near 230 events/s. Here a call queues
its event and waits; a flusher takes everything queued (up to ``max_batch``) and ingests it
with :func:`handlers.track_events`, a few statements for the whole group. Nothing waits on
purpose: while up to ``max_in_flight`` groups are being written, newer events gather for
the next one, so a lone event is written at once and a busy service writes large groups.
Each event still gets its own answer (an invalid event fails its own call only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from nudge.shop.v1 import shop_pb2

from services.common.tracing import current_traceparent
from services.contacts import handlers

log = logging.getLogger(__name__)

Pending = tuple[handlers.SubmittedEvent, asyncio.Future[shop_pb2.TrackEventResult]]


class GroupCommit:
    """Queues single events and writes them in groups; :meth:`start` before use."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 500, max_in_flight: int = 4) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: list[Pending] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._run(), name="ingestion-group-commit")

    async def stop(self) -> None:
        """Stop taking groups; groups being written finish, queued events fail."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        for _, future in self._queue:
            if not future.done():
                future.set_exception(RuntimeError("ingestion stopped"))
        self._queue.clear()

    async def track(
        self, workspace_id: str, request: shop_pb2.TrackEventRequest
    ) -> shop_pb2.TrackEventResult:
        """The result of ingesting ``request``, once its group has committed."""
        if self._flusher is None:
            raise RuntimeError("GroupCommit.start() was not called")
        future: asyncio.Future[shop_pb2.TrackEventResult] = (
            asyncio.get_running_loop().create_future()
        )
        self._queue.append(
            (handlers.SubmittedEvent(workspace_id, request, current_traceparent()), future)
        )
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await self._slots.acquire()
            group, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            if not self._queue:
                self._wake.clear()
            if not group:
                self._slots.release()
                continue
            write = asyncio.create_task(self._write(group))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)

    async def _write(self, group: list[Pending]) -> None:
        try:
            results = await handlers.track_events(self._pool, [event for event, _ in group])
        except Exception as err:
            # The database is away or a bug: every caller of the group gets the error (their
            # calls fail as INTERNAL and may be retried with the same keys).
            log.exception("writing a group of %d shop events failed", len(group))
            for _, future in group:
                if not future.done():
                    future.set_exception(err)
        else:
            for (_, future), result in zip(group, results, strict=True):
                if not future.done():  # the caller may have gone (deadline, cancel)
                    future.set_result(result)
        finally:
            self._slots.release()
