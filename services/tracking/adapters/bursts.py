"""The "every link clicked at once" rule: link scanners follow every link of a mail within a
second or two, a reader clicks one (or a few, minutes apart). Redis keeps, per mail, the
links clicked recently (a sorted set: link -> time of its last click, with a TTL of the
window), so that every tracking process sees the clicks of the others.

Runs in the Kafka drain (services/tracking/adapters/kafka.py), after the redirect was
answered: one pipeline per batch of clicks, in the order they were clicked. A click is
flagged ``link_burst`` when, with it, ``links`` distinct links of its mail were clicked within
``window_s``; the clicks before it in the burst were published before the burst was known
(the other rules usually catch those: a scanner also gives itself away by its user agent,
network or speed). Redis down or slow: the rule is skipped for the batch, nothing is lost.
"""

from __future__ import annotations

import asyncio
import math

from redis.asyncio import Redis

from services.tracking.adapters.kafka import Pending
from services.tracking.domain.machine_opens import LINK_BURST

PREFIX = "nudge:tracking:clicks:"


def burst_key(workspace_id: str, message_id: str) -> str:
    return f"{PREFIX}{workspace_id}:{message_id}"


# One round trip's worth of work per click, on the server: record the link's click, forget
# clicks older than the window, count the distinct links clicked within it, renew the TTL.
_RECORD = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2] - ARGV[3])
local n = redis.call('ZCOUNT', KEYS[1], ARGV[2] - ARGV[3], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return n
"""


class BurstDetector:
    def __init__(self, redis: Redis, *, links: int, window_s: float, timeout_s: float) -> None:
        self._redis = redis
        self._links = links
        self._window_s = window_s
        self._timeout_s = timeout_s
        self._ttl = max(1, math.ceil(window_s))
        self._record = redis.register_script(_RECORD)

    async def __call__(self, batch: list[Pending]) -> None:
        clicks = [item for item in batch if item.burst is not None]
        if not clicks:
            return
        pipe = self._redis.pipeline(transaction=False)
        for item in clicks:
            assert item.burst is not None
            key, link = item.burst
            await self._record(
                keys=[key], args=[link, repr(item.at), repr(self._window_s), self._ttl], client=pipe
            )
        answers = await asyncio.wait_for(pipe.execute(), self._timeout_s)
        for item, distinct in zip(clicks, answers, strict=True):
            clicked = item.envelope.link_clicked
            if int(distinct) >= self._links and not clicked.machine_click:
                clicked.machine_click = True
                clicked.machine_reason = LINK_BURST
