"""The anti-spam guard's rules (seed 001): when a workspace's sending must be suspended.

Pure: the figures come in as hourly counts (``HourCount``), the verdict goes out as an
:class:`Assessment`. docs/anti-spam-guard.md explains every rule and its default; the
choices, briefly:

- **Rates over a rolling window** (default 7 days, in whole hours: the current hour and the
  167 before it). A week is long enough for a small workspace's weekly newsletter to reach
  the minimum volume, and short enough that a problem fixed a week ago no longer counts.
  Mailbox providers judge on the same order (Gmail's postmaster spam rate is daily, its
  0.3 % line is what a sender must stay under).
- **Rates are measured against mails handed to the SMTP server** (sent, or refused during
  the conversation), and only once the window holds ``min_volume`` of them (default 500):
  2 complaints among 40 mails say nothing about a sender. A limit is *passed* when the rate
  is strictly above it (0.3 % exactly is allowed).
- **A volume jump**: the last 24 hours hold more than ``jump_factor`` (10) times the median
  daily volume of the 14 days before, and more than ``jump_floor`` (5,000) mails. Only a
  workspace with an established history is judged: one that sent on at least
  ``jump_min_active_days`` (7) of those 14 days. A new workspace's first campaigns are
  therefore never a jump (the rate rules still watch them): a shop that imports 20,000
  customers and mails them on day one is what Nudge is for.
- **After a lift, the slate is clean.** Counts belong to a *generation* of the workspace,
  bumped by every lift; the rates and the last 24 hours count only the current
  generation, so the complaints that caused a suspension do not cause the next one the
  minute it is lifted. The history the jump is measured against counts every generation.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

RULE_COMPLAINTS = "complaint_rate"
RULE_HARD_BOUNCES = "hard_bounce_rate"
RULE_VOLUME_JUMP = "volume_jump"


@dataclass(frozen=True)
class Rules:
    window: timedelta = timedelta(days=7)
    min_volume: int = 500
    max_complaint_rate: float = 0.003
    max_hard_bounce_rate: float = 0.05
    jump_factor: float = 10.0
    jump_floor: int = 5000
    jump_history_days: int = 14
    jump_min_active_days: int = 7

    @property
    def window_hours(self) -> int:
        return max(1, int(self.window / HOUR))

    @property
    def lookback(self) -> timedelta:
        """How far back :func:`assess` looks: the window, or the day and the history."""
        return max(self.window_hours * HOUR, DAY * (1 + self.jump_history_days))


@dataclass(frozen=True)
class HourCount:
    """What one workspace did in one hour (``hour`` is its start, UTC). ``current``: counted
    since the last lift (the current generation)."""

    hour: datetime
    sent: int
    hard_bounces: int
    complaints: int
    current: bool = True


@dataclass(frozen=True)
class Figures:
    """The rolling window's counts, as GetSendingStatus shows them."""

    sent: int = 0
    hard_bounces: int = 0
    complaints: int = 0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sent if self.sent else 0.0

    @property
    def hard_bounce_rate(self) -> float:
        return self.hard_bounces / self.sent if self.sent else 0.0


@dataclass(frozen=True)
class Assessment:
    figures: Figures
    last_day_sent: int
    median_daily_sent: float
    active_days: int
    rule: str | None = None  # the rule that says suspend; None: sending may go on
    reason: str = ""

    @property
    def suspend(self) -> bool:
        return self.rule is not None


def hour_of(at: datetime) -> datetime:
    """The start of the hour ``at`` falls in: the bucket it is counted in."""
    return at.replace(minute=0, second=0, microsecond=0)


def hours_ago(count: HourCount, now: datetime) -> int:
    """0 for the current hour, 1 for the one before, ...; negative for a future hour."""
    return int((hour_of(now) - count.hour) / HOUR)


def window_figures(counts: Iterable[HourCount], now: datetime, rules: Rules) -> Figures:
    """The current generation's counts of the window's hours (the current one included)."""
    sent = bounces = complaints = 0
    for count in counts:
        if count.current and 0 <= hours_ago(count, now) < rules.window_hours:
            sent += count.sent
            bounces += count.hard_bounces
            complaints += count.complaints
    return Figures(sent, bounces, complaints)


def daily_volumes(counts: Iterable[HourCount], now: datetime, days: int) -> list[int]:
    """Mails sent per rolling day before the last 24 hours, every generation: index 0 is
    24-48 hours ago, index ``days - 1`` the oldest. A day without mail counts as 0."""
    volumes = [0] * days
    for count in counts:
        day = hours_ago(count, now) // 24 - 1
        if 0 <= day < days:
            volumes[day] += count.sent
    return volumes


def last_day_volume(counts: Iterable[HourCount], now: datetime) -> int:
    return sum(c.sent for c in counts if c.current and 0 <= hours_ago(c, now) < 24)


def _percent(rate: float) -> str:
    return f"{rate * 100:.2f} %"


def assess(counts: Iterable[HourCount], now: datetime, rules: Rules) -> Assessment:
    """Whether the workspace's sending must be suspended now, and its figures."""
    counts = list(counts)
    figures = window_figures(counts, now, rules)
    history = daily_volumes(counts, now, rules.jump_history_days)
    median = float(statistics.median(history)) if history else 0.0
    active_days = sum(1 for v in history if v > 0)
    last_day = last_day_volume(counts, now)
    found = Assessment(figures, last_day, median, active_days)
    days = rules.window_hours / 24
    span = f"the last {days:g} days" if rules.window_hours % 24 == 0 else "the window"
    if figures.sent >= rules.min_volume:
        if figures.complaint_rate > rules.max_complaint_rate:
            reason = (
                f"complaint rate {_percent(figures.complaint_rate)} ({figures.complaints} spam"
                f" reports for {figures.sent} mails over {span}) is above the limit of"
                f" {_percent(rules.max_complaint_rate)}"
            )
            return _with(found, RULE_COMPLAINTS, reason)
        if figures.hard_bounce_rate > rules.max_hard_bounce_rate:
            reason = (
                f"hard-bounce rate {_percent(figures.hard_bounce_rate)} ({figures.hard_bounces}"
                f" addresses refused for good among {figures.sent} mails over {span}) is above"
                f" the limit of {_percent(rules.max_hard_bounce_rate)}: clean the list"
            )
            return _with(found, RULE_HARD_BOUNCES, reason)
    if (
        active_days >= rules.jump_min_active_days
        and last_day > rules.jump_floor
        and last_day > rules.jump_factor * median
    ):
        reason = (
            f"volume jump: {last_day} mails in the last 24 hours, more than"
            f" {rules.jump_factor:g} times the median day of the previous"
            f" {rules.jump_history_days} days ({median:g})"
        )
        return _with(found, RULE_VOLUME_JUMP, reason)
    return found


def _with(found: Assessment, rule: str, reason: str) -> Assessment:
    return Assessment(
        found.figures, found.last_day_sent, found.median_daily_sent, found.active_days, rule, reason
    )


@dataclass(frozen=True)
class Tally:
    """One thing to count for a workspace's hour. ``key`` makes it count once: a message
    counts at most once as handed over, once as a hard bounce and once as a complaint,
    however often its events are replayed or reported (two feedback-loop reports of one
    mail are one complaint)."""

    key: str
    workspace_id: str
    hour: datetime
    sent: int = 0
    hard_bounces: int = 0
    complaints: int = 0


def tallies(
    workspace_id: str,
    event_id: str,
    payload: str | None,
    message_id: str,
    *,
    permanent: bool = False,
    source: str = "",
    occurred_at: datetime,
    now: datetime,
) -> list[Tally]:
    """What a delivery.events.v1 event adds to the guard's counts.

    ``MessageSent`` and a bounce during the SMTP conversation (source "smtp", or none: the
    skeleton's) are mails handed to the server; a permanent bounce, from the conversation or
    a later DSN, is a hard bounce; ``MessageComplained`` a complaint. Anything else counts
    nothing. The hour is the event's own (replays land where the original did), never later
    than ``now``. Without a message id the event id stands for the message.
    """
    hour = hour_of(min(occurred_at, now))
    message = message_id or f"event:{event_id}"
    found: list[Tally] = []
    if payload == "message_sent" or (payload == "message_bounced" and source != "dsn"):
        found.append(Tally(f"guard:sent:{message}", workspace_id, hour, sent=1))
    if payload == "message_bounced" and permanent:
        found.append(Tally(f"guard:hard:{message}", workspace_id, hour, hard_bounces=1))
    if payload == "message_complained":
        found.append(Tally(f"guard:complaint:{message}", workspace_id, hour, complaints=1))
    return found
