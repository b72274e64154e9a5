"""The "every link clicked at once" rule: link scanners follow every link of a mail within a
second or two, a reader clicks one (or a few, minutes apart). Redis keeps, per mail, the
links clicked recently (a sorted set: link -> time of its last click, with a TTL of the
window), so that every tracking process sees the clicks of the others.

Runs in the Kafka drain (services/tracking/adapters/kafka.py), after the redirect was
answered: clicks are recorded as they arrive (one pipeline per batch), and every hit is held
``window_s`` before it is published, so that a click is classified knowing the clicks after
it too: a click is flagged ``link_burst`` when ``links`` distinct links of its mail were
clicked within ``window_s`` of it, before or after. So every click of a scanner's burst is
flagged, the first included; the price is that opens and clicks reach Kafka ``window_s``
later (all of them, so that one reader's events keep their order). Redis down or slow: the
rule is skipped for the batch, nothing is lost.
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


# Record a click: the link's latest click time in the mail's sorted set, and the set's TTL.
_RECORD = """
for i = 1, #ARGV - 1, 2 do
  redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[#ARGV])
return 0
"""


class BurstDetector:
    """Clicks are recorded as they arrive and classified ``hold_s`` (the window) later, when
    the clicks that followed each one are known too: every click of a burst is flagged, the
    first ones included, not only those after the burst became visible."""

    def __init__(self, redis: Redis, *, links: int, window_s: float, timeout_s: float) -> None:
        self._redis = redis
        self._links = links
        self._window_s = window_s
        self._timeout_s = timeout_s
        self.hold_s = window_s
        # Long enough for a click to be classified after its hold, on a slow day too.
        self._ttl = max(2, math.ceil(window_s * 3 + 10))
        self._record = redis.register_script(_RECORD)

    async def record(self, arrivals: list[Pending]) -> None:
        by_key: dict[str, list[str]] = {}
        for item in arrivals:
            if item.burst is not None:
                key, link = item.burst
                by_key.setdefault(key, []).extend((link, repr(item.at)))
        if not by_key:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key, args in by_key.items():
            await self._record(keys=[key], args=[*args, self._ttl], client=pipe)
        await asyncio.wait_for(pipe.execute(), self._timeout_s)

    async def classify(self, batch: list[Pending]) -> None:
        """A click is a burst's when ``links`` distinct links of its mail (itself included)
        were clicked within ``window_s`` of it, before or after."""
        clicks = [item for item in batch if item.burst is not None]
        if not clicks:
            return
        pipe = self._redis.pipeline(transaction=False)
        for item in clicks:
            assert item.burst is not None
            pipe.zcount(item.burst[0], item.at - self._window_s, item.at + self._window_s)
        answers = await asyncio.wait_for(pipe.execute(), self._timeout_s)
        for item, distinct in zip(clicks, answers, strict=True):
            clicked = item.envelope.link_clicked
            if int(distinct) >= self._links and not clicked.machine_click:
                clicked.machine_click = True
                clicked.machine_reason = LINK_BURST
