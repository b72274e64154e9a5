"""The interpreter (engine.advance): quiet hours in the contact's time zone, the frequency
cap, steps that may not repeat, test runs, daylight-saving days, deterministic effect ids."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.triggers.domain import definition as D
from services.triggers.domain.engine import (
    Advance,
    Facts,
    RunState,
    SeenEvent,
    SendMail,
    advance,
    compile_definition,
    holds,
    matches,
    next_local_time,
)
from services.triggers.domain.model import EventFilter, HappenedSinceStart

ROME = ZoneInfo("Europe/Rome")


def send(step_id: str, kind: str = "marketing", **extra: Any) -> dict[str, Any]:
    message = {"kind": kind, "subject": "{{ workspace.name }}", "body_text": "Hello", **extra}
    return {"id": step_id, "type": "send", "message": message}


def run(
    steps: list[dict[str, Any]],
    now: datetime,
    facts: Facts | None = None,
    *,
    test: bool = False,
    position: str | None = None,
    trigger: str = "order_placed",
) -> Advance:
    definition = D.parse({"name": "t", "trigger": {"event": trigger}, "steps": steps})
    st = RunState(
        run_id="run-1",
        workspace_id="ws",
        contact_id="c1",
        started_at=now,
        position=position,
        test=test,
    )
    return advance(compile_definition(definition), st, facts or Facts(), now)


def local(day: int, hour: int, minute: int = 0, month: int = 1) -> datetime:
    """A wall-clock time in Rome, as the UTC instant the engine is given."""
    return datetime(2026, month, day, hour, minute, tzinfo=ROME).astimezone(UTC)


IN_ROME = Facts(time_zone="Europe/Rome")


def test_a_marketing_mail_due_at_3_local_waits_for_the_window_at_8() -> None:
    result = run([send("m")], local(14, 3), IN_ROME)
    assert result.effects == ()
    assert result.position == "m"  # held at the send step
    assert result.wake_at == local(14, 8)
    assert result.end_reason is None
    later = run([send("m")], local(14, 8), IN_ROME, position="m")
    assert [e.step_id for e in later.effects if isinstance(e, SendMail)] == ["m"]


def test_the_window_is_the_contacts_local_time_not_utc() -> None:
    # 07:30 UTC is 08:30 in Rome: inside Rome's window although before 08:00 UTC.
    now = datetime(2026, 1, 14, 7, 30, tzinfo=UTC)
    assert len(run([send("m")], now, IN_ROME).effects) == 1
    held = run([send("m")], now, Facts(time_zone="America/New_York"))  # 02:30 there
    assert held.effects == ()
    assert held.wake_at == datetime(2026, 1, 14, 13, 0, tzinfo=UTC)  # 08:00 in New York


def test_a_transactional_mail_at_3_local_goes_at_once() -> None:
    result = run([send("t", kind="transactional")], local(14, 3), IN_ROME)
    assert [e.step_id for e in result.effects if isinstance(e, SendMail)] == ["t"]
    assert result.end_reason == "completed"


def test_a_marketing_mail_that_does_not_respect_the_window_goes_at_3_local() -> None:
    steps = [send("welcome", respect_send_window=False), send("later")]
    result = run(steps, local(14, 3), IN_ROME)
    assert [e.step_id for e in result.effects if isinstance(e, SendMail)] == ["welcome"]
    assert (result.position, result.wake_at) == ("later", local(14, 8))  # the next one waits


def test_the_frequency_cap_skips_a_marketing_mail_and_the_run_goes_on() -> None:
    capped = Facts(frequency_capped=True)
    steps = [send("m"), send("uncapped", respect_frequency_cap=False), send("t", "transactional")]
    result = run(steps, local(14, 12), capped)
    assert [e.step_id for e in result.effects if isinstance(e, SendMail)] == ["uncapped", "t"]
    assert [(s.step_id, s.outcome) for s in result.steps] == [
        ("m", "skipped:frequency_cap"),
        ("uncapped", "done"),
        ("t", "done"),
    ]
    assert result.end_reason == "completed"


def test_a_step_that_may_not_repeat_ends_a_later_run_there() -> None:
    steps = [
        {"id": "tag", "type": "tag", "add": ["x"]},
        {**send("once"), "repeat": False},
        send("after"),
    ]
    first = run(steps, local(14, 12))
    assert [type(e).__name__ for e in first.effects] == ["ModifyTags", "SendMail", "SendMail"]
    again = run(steps, local(14, 12), Facts(done_in_earlier_runs=frozenset({"tag", "once"})))
    assert [e.step_id for e in again.effects] == ["tag"]
    assert again.end_reason == "not_repeated"
    assert again.steps[-1].outcome == "skipped:not_repeated"


def test_a_test_run_skips_waits_quiet_hours_the_cap_and_repeat() -> None:
    steps = [
        {"id": "w", "type": "wait", "duration": "P2D"},
        {"id": "u", "type": "wait_until", "at": "10:00", "day_offset": 1},
        {**send("m"), "repeat": False},
    ]
    facts = Facts(
        time_zone="Europe/Rome", frequency_capped=True, done_in_earlier_runs=frozenset({"m"})
    )
    result = run(steps, local(14, 3), facts, test=True)
    assert [e.step_id for e in result.effects] == ["m"]
    assert result.end_reason == "completed" and result.wake_at is None
    real = run(steps, local(14, 3), facts)
    assert (real.effects, real.position, real.wake_at) == ((), "u", local(16, 3))


def test_wait_until_on_the_day_clocks_go_forward() -> None:
    # 29 March 2026: Rome goes from 02:00 CET to 03:00 CEST; a day is 23 hours long.
    saturday_noon = local(28, 12, month=3)
    monday = next_local_time(saturday_noon, time(10), ROME, day_offset=2)
    assert monday == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)  # 10:00 CEST
    sunday = next_local_time(saturday_noon, time(10), ROME, day_offset=1)
    assert sunday == datetime(2026, 3, 29, 8, 0, tzinfo=UTC)
    assert sunday - saturday_noon == timedelta(hours=21)  # not 22: the lost hour


def test_wait_until_on_the_day_clocks_go_back() -> None:
    # 25 October 2026: Rome goes from 03:00 CEST back to 02:00 CET; a day is 25 hours long.
    saturday_noon = local(24, 12, month=10)
    steps = [{"id": "u", "type": "wait_until", "at": "10:00", "day_offset": 1}, send("m")]
    result = run(steps, saturday_noon, IN_ROME)
    assert result.wake_at == datetime(2026, 10, 25, 9, 0, tzinfo=UTC)  # 10:00 CET
    assert result.wake_at - saturday_noon == timedelta(hours=23)


def test_the_send_window_opens_at_8_local_on_a_dst_morning() -> None:
    # At 01:30 CET on 29 March, the window opens at 08:00 CEST: 06:00 UTC, not 07:00.
    result = run([send("m")], datetime(2026, 3, 29, 0, 30, tzinfo=UTC), IN_ROME)
    assert result.wake_at == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)


def test_effect_ids_are_the_same_on_a_replay_and_differ_by_iteration() -> None:
    steps = [send("m"), {"id": "s", "type": "score", "delta": 3}]
    first = run(steps, local(14, 12))
    replay = run(steps, local(14, 12))
    assert first.effects == replay.effects
    ids = {getattr(e, "message_id", None) or getattr(e, "command_id", None) for e in first.effects}
    assert len(ids) == 2
    definition = D.parse({"name": "t", "trigger": {"event": "order_placed"}, "steps": steps})
    st = RunState("run-1", "ws", "c1", local(14, 12), None, executed={"m": 1, "s": 1})
    second = advance(compile_definition(definition), st, Facts(), local(14, 12))
    assert [e.iteration for e in second.effects] == [1, 1]
    assert not ids & {getattr(e, "message_id", None) for e in second.effects}


def test_waits_branches_and_exit() -> None:
    steps = [
        {
            "id": "b",
            "type": "branch",
            "condition": {"type": "has_tag", "tag": "vip"},
            "then": [{"id": "bye", "type": "exit"}],
        },
        {"id": "w", "type": "wait", "duration": "PT1H"},
    ]
    vip = run(steps, local(14, 12), Facts(tags=frozenset({"vip"})))
    assert (vip.end_reason, [s.outcome for s in vip.steps]) == ("exit_step", ["yes", "done"])
    other = run(steps, local(14, 12))
    # no "then" taken: on to the wait, which is the last step: nothing left to wait for
    assert (other.end_reason, [s.outcome for s in other.steps]) == ("completed", ["no", "done"])


def test_happened_counts_only_events_since_the_run_began_with_its_key() -> None:
    began = local(14, 12)
    st = RunState("r", "ws", "c", began, None, key="cart-1")
    before = SeenEvent("order_placed", began - timedelta(minutes=1), key="o1", items=1)
    after = SeenEvent("cart_updated", began + timedelta(minutes=1), key="cart-2", items=0)
    condition = HappenedSinceStart(event="order_placed")
    assert not holds(condition, st, Facts(events_since_start=(before,)))
    keyed = HappenedSinceStart(event="cart_updated", filter=EventFilter(max_items=0), same_key=True)
    assert not holds(keyed, st, Facts(events_since_start=(after,)))
    mine = SeenEvent("cart_updated", began + timedelta(minutes=1), key="cart-1", items=0)
    assert holds(keyed, st, Facts(events_since_start=(mine,)))


def test_filters_match_every_field_given() -> None:
    viewed = SeenEvent("page_viewed", local(14, 12), product_ids=("p1",), categories=("tea",))
    home = SeenEvent("page_viewed", local(14, 12))
    assert matches(EventFilter(has_product=True), viewed)
    assert not matches(EventFilter(has_product=True), home)
    assert matches(EventFilter(category="tea", product_id="p1"), viewed)
    assert not matches(EventFilter(category="cups"), viewed)
    search = SeenEvent("searched", local(14, 12), query="Green TEA pots")
    assert matches(EventFilter(query_contains="tea"), search)
    order = SeenEvent("order_placed", local(14, 12), items=3, total_minor=5_000)
    assert matches(EventFilter(min_items=3, max_items=3, min_total_minor=5_000), order)
    assert not matches(EventFilter(min_total_minor=5_001), order)


def test_a_send_window_across_midnight() -> None:
    definition = D.parse(
        {
            "name": "night owls",
            "trigger": {"event": "order_placed"},
            "send_window": {"start": "22:00", "end": "02:00"},
            "steps": [send("m")],
        }
    )
    program = compile_definition(definition)
    for hour, sent in ((23, True), (1, True), (12, False), (2, False)):
        st = RunState("r", "ws", "c", local(14, hour), None)
        result = advance(program, st, IN_ROME, local(14, hour))
        assert bool(result.effects) is sent, hour
