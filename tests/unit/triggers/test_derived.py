"""The pure parts of the derived triggers (services/triggers/derived.py): when a date comes
round in a contact's zone (29 February, DST gaps and folds, zones ahead of UTC), which
dates count, when a total crosses a threshold, how amounts read, and that ids are
deterministic."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest

from services.triggers.derived import (
    ContactFacts,
    anniversary,
    crossed,
    date_trigger_id,
    format_money,
    inactive_trigger_id,
    next_occurrence,
    parse_date_value,
    plan_date,
    value_trigger_id,
    years_since,
)
from services.triggers.domain.model import Trigger

ROME = ZoneInfo("Europe/Rome")
NEW_YORK = ZoneInfo("America/New_York")
NINE = time(9, 0)


def test_29_february_falls_on_28_february_in_years_without_it() -> None:
    leapling = date(2000, 2, 29)
    assert anniversary(leapling, 2027) == date(2027, 2, 28)
    assert anniversary(leapling, 2028) == date(2028, 2, 29)
    assert anniversary(date(1990, 3, 14), 2027) == date(2027, 3, 14)


def test_leapling_occurrence_in_a_common_year_is_28_february_at_local_time() -> None:
    after = datetime(2027, 1, 10, tzinfo=UTC)
    occurrence = next_occurrence(date(2000, 2, 29), NINE, ROME, after)
    assert occurrence.day == date(2027, 2, 28)
    assert occurrence.due_at == datetime(2027, 2, 28, 8, 0, tzinfo=UTC)  # 09:00 CET
    assert occurrence.years == 27


def test_birthday_still_ahead_today_is_today_else_next_year() -> None:
    birthday = date(1990, 3, 14)
    before_nine = datetime(2026, 3, 14, 7, 59, tzinfo=UTC)  # 08:59 in Rome
    assert next_occurrence(birthday, NINE, ROME, before_nine).day == date(2026, 3, 14)
    at_nine = datetime(2026, 3, 14, 8, 0, tzinfo=UTC)  # 09:00 in Rome: no longer after
    later = next_occurrence(birthday, NINE, ROME, at_nine)
    assert later.day == date(2027, 3, 14)
    assert later.years == 37


def test_occurrence_is_at_local_time_across_summer_time() -> None:
    birthday = date(1990, 7, 1)
    after = datetime(2026, 1, 1, tzinfo=UTC)
    # 09:00 CEST is 07:00 UTC in July (08:00 UTC in winter).
    assert next_occurrence(birthday, NINE, ROME, after).due_at == datetime(
        2026, 7, 1, 7, 0, tzinfo=UTC
    )


def test_zone_ahead_of_utc_fires_on_the_local_day_already_begun() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    # 2026-03-13 23:30 UTC is already 14 March, 08:30, in Tokyo: 09:00 there is half an hour on.
    after = datetime(2026, 3, 13, 23, 30, tzinfo=UTC)
    occurrence = next_occurrence(date(1990, 3, 14), NINE, tokyo, after)
    assert occurrence.due_at == datetime(2026, 3, 14, 0, 0, tzinfo=UTC)
    # And at 31 December 23:30 UTC it is New Year's morning in Tokyo: this year's 1 January.
    new_year = next_occurrence(
        date(1990, 1, 1), NINE, tokyo, datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    )
    assert new_year.due_at == datetime(2027, 1, 1, 0, 0, tzinfo=UTC)


def test_zone_behind_utc_fires_on_the_local_day_not_yet_over() -> None:
    honolulu = ZoneInfo("Pacific/Honolulu")
    # 1 January 2027, 03:00 UTC is still 31 December 2026, 17:00, in Honolulu: this year's
    # 18:00 there is an hour on, not next year's.
    occurrence = next_occurrence(
        date(1990, 12, 31), time(18, 0), honolulu, datetime(2027, 1, 1, 3, 0, tzinfo=UTC)
    )
    assert occurrence.day == date(2026, 12, 31)
    assert occurrence.due_at == datetime(2027, 1, 1, 4, 0, tzinfo=UTC)


def test_time_skipped_by_dst_happens_just_after_the_jump() -> None:
    # New York jumps from 02:00 EST to 03:00 EDT on 8 March 2026: 02:30 does not exist that
    # day; it is read with the offset before the jump (07:30 UTC = 03:30 EDT).
    occurrence = next_occurrence(
        date(1980, 3, 8), time(2, 30), NEW_YORK, datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert occurrence.due_at == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)


def test_time_repeated_by_dst_happens_the_first_time() -> None:
    # 1 November 2026, 01:30 happens twice in New York: first in EDT (05:30 UTC).
    occurrence = next_occurrence(
        date(1980, 11, 1), time(1, 30), NEW_YORK, datetime(2026, 10, 1, tzinfo=UTC)
    )
    assert occurrence.due_at == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)


def test_signup_anniversaries_start_one_year_on() -> None:
    trigger = Trigger(event="date_reached", date_field="signed_up_at")
    signed_up = datetime(2026, 5, 4, 6, 0, tzinfo=UTC)  # 08:00 in Rome, before 09:00
    plan = plan_date(
        trigger, ContactFacts(time_zone="Europe/Rome", signed_up_at=signed_up), signed_up
    )
    assert plan is not None
    assert plan.occurrence.day == date(2027, 5, 4)
    assert plan.occurrence.years == 1


def test_signup_day_is_the_day_in_the_contacts_zone() -> None:
    trigger = Trigger(event="date_reached", date_field="signed_up_at")
    # 23:30 UTC on 4 May is already 5 May in Rome.
    facts = ContactFacts(
        time_zone="Europe/Rome", signed_up_at=datetime(2025, 5, 4, 23, 30, tzinfo=UTC)
    )
    plan = plan_date(trigger, facts, datetime(2026, 1, 1, tzinfo=UTC))
    assert plan is not None
    assert plan.occurrence.day == date(2026, 5, 5)


def test_date_attribute_fires_on_the_day_itself_when_ahead() -> None:
    trigger = Trigger(event="date_reached", date_field="attributes.renewal_on", at=time(10, 0))
    facts = ContactFacts(attributes={"renewal_on": "2026-09-30"})
    plan = plan_date(trigger, facts, datetime(2026, 6, 1, tzinfo=UTC))
    assert plan is not None
    assert plan.occurrence.due_at == datetime(2026, 9, 30, 10, 0, tzinfo=UTC)  # no zone: UTC
    assert plan.occurrence.years == 0


def test_contact_without_the_date_or_with_a_bad_one_has_no_plan() -> None:
    after = datetime(2026, 1, 1, tzinfo=UTC)
    assert (
        plan_date(Trigger(event="date_reached", date_field="birthday"), ContactFacts(), after)
        is None
    )
    bad = ContactFacts(attributes={"renewal_on": "next tuesday"})
    trigger = Trigger(event="date_reached", date_field="attributes.renewal_on")
    assert plan_date(trigger, bad, after) is None


def test_unknown_zone_counts_as_utc() -> None:
    trigger = Trigger(event="date_reached", date_field="birthday")
    facts = ContactFacts(time_zone="Mars/Olympus", birthday=date(1990, 3, 14))
    plan = plan_date(trigger, facts, datetime(2026, 1, 1, tzinfo=UTC))
    assert plan is not None
    assert plan.occurrence.due_at == datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
    assert plan.basis.endswith("|UTC")


def test_basis_changes_with_date_zone_and_hour_only() -> None:
    after = datetime(2026, 1, 1, tzinfo=UTC)
    trigger = Trigger(event="date_reached", date_field="birthday")
    facts = ContactFacts(time_zone="Europe/Rome", birthday=date(1990, 3, 14))
    plan = plan_date(trigger, facts, after)
    assert plan is not None
    same = plan_date(
        trigger,
        ContactFacts(time_zone="Europe/Rome", birthday=date(1990, 3, 14), total_spent_minor=5),
        after,
    )
    assert same is not None and same.basis == plan.basis
    for other_trigger, other_facts in (
        (trigger, ContactFacts(time_zone="Europe/Rome", birthday=date(1990, 3, 15))),
        (trigger, ContactFacts(time_zone="Asia/Tokyo", birthday=date(1990, 3, 14))),
        (Trigger(event="date_reached", date_field="birthday", at=time(10, 0)), facts),
    ):
        other = plan_date(other_trigger, other_facts, after)
        assert other is not None and other.basis != plan.basis


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2020-05-01", date(2020, 5, 1)),
        (" 2020-05-01 ", date(2020, 5, 1)),
        ("2020-05-01T23:30:00Z", date(2020, 5, 2)),  # already 2 May in Rome
        ("2020-05-01T10:00:00", date(2020, 5, 1)),
        ("", None),
        ("01/05/2020", None),
        (20200501, None),
        (None, None),
    ],
)
def test_date_attribute_values(value: object, expected: date | None) -> None:
    assert parse_date_value(value, ROME) == expected


def test_birthday_without_a_year_counts_no_years() -> None:
    occurrence = next_occurrence(date(4, 3, 14), NINE, ROME, datetime(2026, 1, 1, tzinfo=UTC))
    assert occurrence.day == date(2026, 3, 14)
    assert years_since(4, occurrence) == 0
    assert (
        years_since(
            1990, next_occurrence(date(1990, 3, 14), NINE, ROME, datetime(2026, 1, 1, tzinfo=UTC))
        )
        == 36
    )


@pytest.mark.parametrize(
    ("before", "before_currency", "after", "after_currency", "expected"),
    [
        (90_000, "EUR", 110_000, "EUR", True),
        (90_000, "EUR", 100_000, "EUR", True),  # reaching the threshold crosses it
        (100_000, "EUR", 120_000, "EUR", False),  # already at it before
        (0, "", 150_000, "EUR", True),  # a first order above it
        (90_000, "EUR", 95_000, "EUR", False),
        (90_000, "eur", 110_000, "EUR", True),  # codes compare without case
        (90_000, "USD", 110_000, "EUR", False),  # no conversion between currencies
        (90_000, "USD", 110_000, "USD", False),  # the workflow's threshold is in EUR
        (120_000, "EUR", 80_000, "EUR", False),  # a refund going down
    ],
)
def test_crossing_a_threshold(
    before: int, before_currency: str, after: int, after_currency: str, expected: bool
) -> None:
    assert crossed(before, before_currency, after, after_currency, 100_000, "EUR") is expected


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (100_000, "EUR", "1,000.00 EUR"),
        (2_400, "eur", "24.00 EUR"),
        (5, "USD", "0.05 USD"),
        (150_000, "JPY", "150,000 JPY"),
        (1_234_567, "KWD", "1,234.567 KWD"),
        (-2_400, "EUR", "-24.00 EUR"),
    ],
)
def test_amounts_read_in_major_units(minor: int, currency: str, text: str) -> None:
    assert format_money(minor, currency) == text


def test_trigger_ids_are_deterministic_and_tell_occurrences_apart() -> None:
    ws, wf, contact = "w", "f", "c"
    assert date_trigger_id(ws, wf, contact, date(2026, 3, 14)) == date_trigger_id(
        ws, wf, contact, date(2026, 3, 14)
    )
    assert date_trigger_id(ws, wf, contact, date(2026, 3, 14)) != date_trigger_id(
        ws, wf, contact, date(2027, 3, 14)
    )
    at = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)
    assert inactive_trigger_id(ws, wf, contact, at) == inactive_trigger_id(
        ws, wf, contact, at.astimezone(ROME)
    )
    assert value_trigger_id(ws, wf, contact, "eur", 100_000) == value_trigger_id(
        ws, wf, contact, "EUR", 100_000
    )
    assert value_trigger_id(ws, wf, contact, "EUR", 100_000) != value_trigger_id(
        ws, wf, contact, "EUR", 200_000
    )
