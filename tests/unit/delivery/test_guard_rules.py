"""The anti-spam guard's rules at their boundaries (services/delivery/domain/guard.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.delivery.domain.guard import (
    HOUR,
    RULE_COMPLAINTS,
    RULE_HARD_BOUNCES,
    RULE_VOLUME_JUMP,
    HourCount,
    Rules,
    assess,
    daily_volumes,
    hour_of,
    tallies,
    window_figures,
)

NOW = datetime(2026, 12, 1, 14, 30, tzinfo=UTC)
RULES = Rules()


def hour(ago: int, sent: int = 0, bounces: int = 0, complaints: int = 0, *, current: bool = True):
    return HourCount(hour_of(NOW) - ago * HOUR, sent, bounces, complaints, current)


@pytest.mark.parametrize(
    ("sent", "complaints", "suspended"),
    [
        (1000, 3, False),  # 0.30 % exactly: not above the limit
        (1000, 4, True),  # 0.40 %
        (999, 3, True),  # 0.3003 %: just above
        (499, 100, False),  # below the minimum volume: says nothing
        (500, 2, True),  # at the minimum volume, 0.40 %
    ],
)
def test_the_complaint_rate_suspends_only_above_the_limit_and_the_minimum_volume(
    sent: int, complaints: int, suspended: bool
) -> None:
    verdict = assess([hour(3, sent=sent, complaints=complaints)], NOW, RULES)
    assert verdict.suspend is suspended
    if suspended:
        assert verdict.rule == RULE_COMPLAINTS
        assert "complaint rate" in verdict.reason and "0.30 %" in verdict.reason


@pytest.mark.parametrize(
    ("sent", "bounces", "suspended"),
    [(1000, 50, False), (1000, 51, True), (499, 499, False), (500, 26, True)],
)
def test_the_hard_bounce_rate_suspends_only_above_five_percent(
    sent: int, bounces: int, suspended: bool
) -> None:
    verdict = assess([hour(0, sent=sent, bounces=bounces)], NOW, RULES)
    assert verdict.suspend is suspended
    if suspended:
        assert verdict.rule == RULE_HARD_BOUNCES
        assert "hard-bounce rate 5.10 %" in verdict.reason or "5.20 %" in verdict.reason


def test_the_window_holds_the_current_hour_and_the_167_before_it() -> None:
    counts = [
        hour(0, sent=100),
        hour(167, sent=400, complaints=5),
        hour(168, sent=10_000),  # eight days ago: out
        hour(-1, sent=10_000),  # a future hour (a clock ahead): not counted
    ]
    figures = window_figures(counts, NOW, RULES)
    assert (figures.sent, figures.complaints) == (500, 5)
    assert assess(counts, NOW, RULES).rule == RULE_COMPLAINTS
    # An hour later the 167-hour-old bucket leaves the window, complaints and all (and the
    # hour that was ahead is the current one).
    later = assess(counts, NOW + HOUR, RULES)
    assert (later.figures.sent, later.figures.complaints) == (10_100, 0)
    assert not later.suspend


def test_counts_from_before_a_lift_do_not_count_towards_the_rates() -> None:
    counts = [
        hour(2, sent=1000, complaints=50, current=False),
        hour(1, sent=600, complaints=1),
    ]
    verdict = assess(counts, NOW, RULES)
    assert (verdict.figures.sent, verdict.figures.complaints) == (600, 1)
    assert not verdict.suspend


def history(days_with_mail: int, per_day: int) -> list[HourCount]:
    """``per_day`` mails on each of the ``days_with_mail`` days before the last 24 hours."""
    return [hour(24 * (d + 1) + 5, sent=per_day) for d in range(days_with_mail)]


def test_a_volume_jump_needs_ten_times_the_median_and_the_floor() -> None:
    base = history(14, 1000)
    assert daily_volumes(base, NOW, 14) == [1000] * 14
    at_ten_times = assess([*base, hour(1, sent=10_000)], NOW, RULES)
    assert not at_ten_times.suspend  # 10x exactly is not "more than"
    jump = assess([*base, hour(1, sent=10_001)], NOW, RULES)
    assert jump.rule == RULE_VOLUME_JUMP
    assert "10001 mails in the last 24 hours" in jump.reason
    small = history(14, 100)
    # 50x the median, but under the floor of 5,000: not a jump.
    assert not assess([*small, hour(1, sent=5000)], NOW, RULES).suspend
    assert assess([*small, hour(1, sent=5001)], NOW, RULES).rule == RULE_VOLUME_JUMP


def test_a_new_workspace_first_campaign_is_not_a_jump() -> None:
    # Six days of history are not an established one; the seventh makes it one.
    six = history(6, 100)
    assert not assess([*six, hour(1, sent=200_000)], NOW, RULES).suspend
    assert not assess([hour(1, sent=200_000)], NOW, RULES).suspend
    seven = history(7, 100)
    verdict = assess([*seven, hour(1, sent=200_000)], NOW, RULES)
    # The median counts the seven days without mail as 0: the jump is above 10 x 0.
    assert verdict.rule == RULE_VOLUME_JUMP and verdict.active_days == 7


def test_the_last_day_after_a_lift_counts_only_the_current_generation() -> None:
    base = history(14, 100)
    before_lift = hour(3, sent=20_000, current=False)
    assert not assess([*base, before_lift, hour(1, sent=900)], NOW, RULES).suspend


def test_the_settings_change_the_limits() -> None:
    strict = Rules(min_volume=10, max_complaint_rate=0.1, window=timedelta(hours=2))
    assert assess([hour(1, sent=10, complaints=2)], NOW, strict).rule == RULE_COMPLAINTS
    assert not assess([hour(2, sent=10, complaints=2)], NOW, strict).suspend  # outside 2 h


def test_what_each_event_counts_and_under_which_key() -> None:
    at = NOW - timedelta(minutes=50)

    def keys(payload: str, **kw: object) -> list[tuple[str, int, int, int]]:
        found = tallies("ws", "ev", payload, "m1", occurred_at=at, now=NOW, **kw)  # type: ignore[arg-type]
        assert all(t.hour == hour_of(at) for t in found)
        return [(t.key, t.sent, t.hard_bounces, t.complaints) for t in found]

    assert keys("message_sent") == [("guard:sent:m1", 1, 0, 0)]
    # Refused during the SMTP conversation: handed over, and a hard bounce.
    assert keys("message_bounced", permanent=True, source="smtp") == [
        ("guard:sent:m1", 1, 0, 0),
        ("guard:hard:m1", 0, 1, 0),
    ]
    assert keys("message_bounced", permanent=False, source="") == [("guard:sent:m1", 1, 0, 0)]
    # A later DSN: the mail was counted when sent; only the hard bounce is new.
    assert keys("message_bounced", permanent=True, source="dsn") == [("guard:hard:m1", 0, 1, 0)]
    assert keys("message_bounced", permanent=False, source="dsn") == []
    assert keys("message_complained") == [("guard:complaint:m1", 0, 0, 1)]
    assert keys("message_skipped") == keys("message_deferred") == []


def test_an_event_from_the_future_counts_in_the_current_hour() -> None:
    found = tallies("ws", "ev", "message_sent", "", occurred_at=NOW + 5 * HOUR, now=NOW)
    assert found[0].hour == hour_of(NOW)
    assert found[0].key == "guard:sent:event:ev"  # no message id: the event stands for it
