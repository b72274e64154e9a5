"""Which campaigns the fan-out's per-campaign series are served for (fanout.py
``FanoutDriver.progress``): a campaign that stopped sending while another process had it
leaves them at the next poll, so no stale series stays (nor a stalled-fan-out alert)."""

from __future__ import annotations

import uuid
from typing import Any

from services.campaigns.fanout import Checkpoint, FanoutDriver, _Progress
from services.common.clock import now


class Pool:
    """The driver's poll of SENDING campaigns, answering ``sending``."""

    def __init__(self, sending: list[uuid.UUID]) -> None:
        self.sending = sending

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        return [{"workspace_id": uuid.uuid4(), "id": c} for c in self.sending]


class Ports:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool


def progress(reached: int) -> _Progress:
    checkpoint = Checkpoint("all", now(), None, reached, reached, 0, 0, done=False)
    return _Progress(phases={"all": checkpoint})


async def test_a_campaign_no_longer_sending_leaves_the_series_at_the_next_poll() -> None:
    gone, still = uuid.uuid4(), uuid.uuid4()
    driver = FanoutDriver(Ports(Pool([still])), writer=None, concurrency=0)  # type: ignore[arg-type]
    driver.progress = {gone: progress(10), still: progress(20)}
    await driver.tick()
    assert set(driver.progress) == {still}
    served = {
        (labels.get("campaign_id"), labels.get("state")): value
        for family, labels, value in driver.metric_samples()
        if family == "nudge_campaign_fanout_recipients"
    }
    assert served[(str(still), "reached")] == 20
    assert (str(gone), "reached") not in served
