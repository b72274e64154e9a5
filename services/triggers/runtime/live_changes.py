"""A workflow published, paused, resumed or archived reaches every worker's event path at
once: the change's transaction sends a PostgreSQL notification (:func:`announce`, delivered
when it commits), and each worker listens on its own connection and drops that workspace's
cached live workflows (:class:`ChangeListener`, ``Engine.forget``).

Before, the cache simply expired after ``live_workflows_ttl_s`` (2 s): a cart changed in the
two seconds after the abandoned-cart workflow was published could start no run. The expiry
stays as the bound should a notification be lost: while the listening connection is down
(PostgreSQL restarting, the network), and once it is back every cache is dropped, since
changes in between were not heard.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import asyncpg

from services.common.retrying import retrying

if TYPE_CHECKING:  # the store announces changes without the engine's imports
    from services.triggers.runtime.runs import Engine

log = logging.getLogger(__name__)

# PostgreSQL's channels are per database, not per schema: named for the service.
CHANNEL = "nudge_triggers_workflows"


async def announce(conn: asyncpg.Connection, workspace_id: str) -> None:
    """In the transaction that changes which workflows of ``workspace_id`` are live: every
    worker forgets its cached list when the transaction commits (and not if it rolls back)."""
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, workspace_id)


class ChangeListener:
    """Listens on :data:`CHANNEL` for the worker's lifetime (a supervised task: an outage is
    waited out and the connection made again; anything else stops the service)."""

    def __init__(self, database_url: str, engine: Engine) -> None:
        self._url = database_url
        self._engine = engine
        self.listening = asyncio.Event()  # set while notifications are heard (tests wait on it)
        self.backend_pid = 0  # the listening connection's PostgreSQL backend

    async def run(self) -> None:
        while True:
            await retrying(self._listen, "listening for workflow changes", log)

    async def _listen(self) -> None:
        """Until the connection is lost (then at once again; a connection that cannot be
        made is retried with backoff)."""
        conn = await asyncpg.connect(self._url)
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, self._heard)
            self.backend_pid = conn.get_server_pid()
            # What changed while nobody listened was not heard: start afresh.
            self._engine.forget()
            self.listening.set()
            await lost.wait()
        finally:
            self.listening.clear()
            if not conn.is_closed():
                await conn.close()
        log.warning("the connection listening for workflow changes was lost; listening again")

    def _heard(self, _conn: object, _pid: int, _channel: str, workspace_id: str) -> None:
        self._engine.forget(workspace_id)
