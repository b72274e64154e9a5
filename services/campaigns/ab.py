"""The A/B test's decision: once a campaign's sample has been sent and ``decide_after_s`` has
passed, pick the winning subject and write it into the campaign's ``ab_test`` jsonb, where
the fan-out (which waits for it) picks it up and sends the winner to the rest.

The winner is the variant with the most unique human clicks, or the most attributed revenue
(WINNER_METRIC_REVENUE; compared in the currency the campaign earned most in, since amounts
of two currencies cannot be added), ties going to the lowest variant. The decision changes
no status, so it writes no ``transitions`` row: it is the ``winner`` and ``decided_at`` of
``ab_test`` (read back by GetCampaign and the report) and a log line. The update is a
compare-and-set on ``winner = -1`` so two instances of the loop cannot decide twice.

Started by bootstrap.py ``start_report`` (``decide_forever``); the clock is
services/common/clock.py's, so tests move time instead of waiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from nudge.campaigns.v1 import campaigns_pb2

from services.common import clock

log = logging.getLogger(__name__)

SENDING = campaigns_pb2.CAMPAIGN_STATUS_SENDING
REVENUE = campaigns_pb2.WINNER_METRIC_REVENUE
DECIDE_EVERY_S = 5.0

_DUE = """
SELECT workspace_id, id, ab_test FROM campaigns
WHERE status = $1 AND ab_test IS NOT NULL
  AND (ab_test->>'winner')::int = -1
  AND ab_test->>'sample_done_at' IS NOT NULL
  AND (ab_test->>'sample_done_at')::timestamptz
      + make_interval(secs => coalesce((ab_test->>'decide_after_s')::double precision, 0)) <= $2
ORDER BY workspace_id, id
LIMIT 100
"""

_CLICKS = """
SELECT variant, count(first_human_click_at) AS score FROM recipients
WHERE workspace_id = $1 AND campaign_id = $2 AND excluded IS NULL AND variant >= 0
GROUP BY variant
"""

_REVENUE = """
SELECT variant, currency, sum(amount_minor) AS score FROM attributions
WHERE workspace_id = $1 AND campaign_id = $2 AND NOT holdout AND voided_at IS NULL
  AND variant >= 0
GROUP BY variant, currency
"""

_DECIDE = """
UPDATE campaigns
SET ab_test = ab_test || jsonb_build_object('winner', $3::int, 'decided_at', $4::text),
    updated_at = $5
WHERE workspace_id = $1 AND id = $2 AND status = $6 AND (ab_test->>'winner')::int = -1
"""


@dataclass(frozen=True)
class Decision:
    workspace_id: str
    campaign_id: str
    winner: int
    scores: tuple[int, ...]


def pick_winner(scores: Mapping[int, int], variants: int) -> int:
    """The variant with the highest score; the lowest such variant on a tie (no score at all
    is a tie at 0: variant 0 wins)."""
    return max(range(variants), key=lambda v: (scores.get(v, 0), -v))


def revenue_scores(rows: list[Mapping[str, Any]]) -> dict[int, int]:
    """Per variant, the revenue in the currency the campaign earned most in (ties: the
    alphabetically first currency, so the choice does not depend on row order)."""
    by_currency: dict[str, int] = {}
    for row in rows:
        by_currency[row["currency"]] = by_currency.get(row["currency"], 0) + int(row["score"])
    if not by_currency:
        return {}
    main = min(by_currency, key=lambda c: (-by_currency[c], c))
    return {int(r["variant"]): int(r["score"]) for r in rows if r["currency"] == main}


def _ab(value: Any) -> dict[str, Any]:
    loaded = json.loads(value) if isinstance(value, str) else value
    return dict(loaded)


async def decide_due(pool: asyncpg.Pool, now: datetime | None = None) -> list[Decision]:
    """Decide every A/B test whose time has come; returns what was decided."""
    now = now or clock.now()
    decided: list[Decision] = []
    async with pool.acquire() as conn:
        due = await conn.fetch(_DUE, SENDING, now)
        for row in due:
            ab = _ab(row["ab_test"])
            variants = len(ab.get("subjects", []))
            if variants < 1:
                continue
            keys = (row["workspace_id"], row["id"])
            if int(ab.get("metric", 0)) == REVENUE:
                scores = revenue_scores(await conn.fetch(_REVENUE, *keys))
            else:
                scores = {
                    int(r["variant"]): int(r["score"]) for r in await conn.fetch(_CLICKS, *keys)
                }
            winner = pick_winner(scores, variants)
            status = await conn.execute(_DECIDE, *keys, winner, now.isoformat(), now, SENDING)
            if status.split()[-1] != "1":
                continue  # decided meanwhile, or no longer sending
            decision = Decision(
                str(row["workspace_id"]),
                str(row["id"]),
                winner,
                tuple(scores.get(v, 0) for v in range(variants)),
            )
            log.info(
                "A/B test of campaign %s (workspace %s): variant %s wins with scores %s",
                decision.campaign_id,
                decision.workspace_id,
                winner,
                decision.scores,
            )
            decided.append(decision)
    return decided


async def decide_forever(pool: asyncpg.Pool, every_s: float = DECIDE_EVERY_S) -> None:
    """Decide what is due now and every ``every_s``; a failed round (the database away) is
    logged and the next one tries again."""
    while True:
        try:
            await decide_due(pool)
        except Exception:
            log.exception("A/B decision round failed; trying again in %.1fs", every_s)
        await asyncio.sleep(every_s)


__all__ = ["Decision", "decide_due", "decide_forever", "pick_winner", "revenue_scores"]
