"""A campaign's report over time (CampaignService.GetCampaignTimeline), for the console's
charts: cumulative unique counts by the end of equal intervals.

The report (services/campaigns/stats.py) keeps each outcome as the first time it happened on
the recipient's row (`delivered_at`, `first_human_open_at`, ...), so a time series is a
count of those timestamps per interval, summed up: no table of its own, and it agrees with
the report (delivered means not bounced since, as there). The interval is the smallest of
:data:`STEPS` that spans the campaign's events in at most :data:`MAX_INTERVALS`, else whole
days: a chart of an hour-old campaign shows minutes, one of a month shows days, and the
answer never grows past 49 points whatever the campaign's size.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
from nudge.campaigns.v1 import campaigns_pb2

from services.campaigns.stats import _campaign, campaign_key

MAX_INTERVALS = 48
STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400)
SERIES = ("delivered", "opened_human", "opened_machine", "clicked_human", "clicked_machine")

# Each series' event: the time a contact first reached it (one row per contact).
_EVENTS = """
SELECT 'delivered' AS series, delivered_at AS at FROM recipients
    WHERE workspace_id = $1 AND campaign_id = $2 AND delivered_at IS NOT NULL
    AND bounced_at IS NULL
UNION ALL SELECT 'opened_human', LEAST(first_human_open_at, first_human_click_at)
    FROM recipients WHERE workspace_id = $1 AND campaign_id = $2
    AND (first_human_open_at IS NOT NULL OR first_human_click_at IS NOT NULL)
UNION ALL SELECT 'opened_machine', first_machine_open_at FROM recipients
    WHERE workspace_id = $1 AND campaign_id = $2 AND first_machine_open_at IS NOT NULL
UNION ALL SELECT 'clicked_human', first_human_click_at FROM recipients
    WHERE workspace_id = $1 AND campaign_id = $2 AND first_human_click_at IS NOT NULL
UNION ALL SELECT 'clicked_machine', first_machine_click_at FROM recipients
    WHERE workspace_id = $1 AND campaign_id = $2 AND first_machine_click_at IS NOT NULL
"""
_SPAN = f"SELECT min(at) AS first, max(at) AS last FROM ({_EVENTS}) e"
# Whole intervals counted from the Unix epoch, so that a point's time does not move as
# events arrive: floor(epoch / interval).
_BINS = f"""
SELECT series, floor(extract(epoch FROM at) / $3)::bigint AS bin, count(*) AS n
FROM ({_EVENTS}) e GROUP BY series, bin
"""


def interval_for(span: timedelta) -> int:
    """Seconds per interval: the smallest step giving at most MAX_INTERVALS, else days."""
    seconds = max(span.total_seconds(), 0.0)
    for step in STEPS:
        if seconds / step <= MAX_INTERVALS:
            return step
    return 86400 * math.ceil(seconds / 86400 / MAX_INTERVALS)


def points(
    rows: Sequence[tuple[str, int, int]], first_bin: int, last_bin: int, interval: int
) -> list[campaigns_pb2.CampaignTimelinePoint]:
    """Cumulative counts at the end of each interval from first_bin to last_bin."""
    per_bin: dict[int, dict[str, int]] = {}
    for series, bin_, n in rows:
        per_bin.setdefault(bin_, dict.fromkeys(SERIES, 0))[series] += n
    totals = dict.fromkeys(SERIES, 0)
    out = []
    for bin_ in range(first_bin, last_bin + 1):
        for series, n in per_bin.get(bin_, {}).items():
            totals[series] += n
        point = campaigns_pb2.CampaignTimelinePoint(
            delivered=totals["delivered"],
            opened_human=totals["opened_human"],
            opened_machine=totals["opened_machine"],
            clicked_human=totals["clicked_human"],
            clicked_machine=totals["clicked_machine"],
        )
        point.at.FromDatetime(datetime.fromtimestamp((bin_ + 1) * interval, UTC))
        out.append(point)
    return out


async def campaign_timeline(
    pool: asyncpg.Pool, workspace_id: str, campaign_id: str
) -> campaigns_pb2.CampaignTimeline:
    """One of the workspace's campaigns over time, from one snapshot of the database."""
    key = campaign_key(campaign_id)
    ws = uuid.UUID(workspace_id)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        await _campaign(conn, workspace_id, key)  # NOT_FOUND for another workspace's
        span = await conn.fetchrow(_SPAN, ws, key)
        if span is None or span["first"] is None:
            return campaigns_pb2.CampaignTimeline()
        interval = interval_for(span["last"] - span["first"])
        rows = await conn.fetch(_BINS, ws, key, interval)
    binned = [(str(r["series"]), int(r["bin"]), int(r["n"])) for r in rows]
    bins = [b for _, b, _ in binned]
    answer = campaigns_pb2.CampaignTimeline(points=points(binned, min(bins), max(bins), interval))
    answer.interval.FromSeconds(interval)
    return answer
