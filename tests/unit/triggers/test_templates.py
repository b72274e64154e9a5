"""The workflow templates: each valid, warning-free, canonical, rendering with its run vars;
and the two with real logic walked through the interpreter to prove what they do."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from importlib import resources

import pytest

from services.common import templating
from services.triggers.domain import definition as D
from services.triggers.domain.engine import (
    AdjustScore,
    Advance,
    Facts,
    ModifyTags,
    RunState,
    SeenEvent,
    SendMail,
    advance,
    compile_definition,
    matches,
)
from services.triggers.domain.model import Send
from services.triggers.domain.templates import TEMPLATES, TemplateInfo, template

ISSUE_TEMPLATES = {
    "abandoned_cart",
    "welcome",
    "post_purchase",
    "order_details",
    "browse_abandonment",
    "search_follow_up",
    "win_back",
    "birthday",
    "signup_anniversary",
    "password_reminder",
    "value_threshold",
}
BY_ID = {t.id: t for t in TEMPLATES}


def test_every_template_of_the_issue_is_there_and_found_by_id() -> None:
    assert set(BY_ID) == ISSUE_TEMPLATES
    assert template("abandoned_cart") is BY_ID["abandoned_cart"]
    assert template("no_such_template") is None


@pytest.mark.parametrize("info", TEMPLATES, ids=lambda t: t.id)
def test_a_template_is_valid_without_warnings_and_described(info: TemplateInfo) -> None:
    text = resources.files("services.triggers").joinpath(f"templates/{info.id}.json").read_text()
    parsed = D.parse(text)
    assert D.warnings(parsed) == []
    assert info.name == parsed.name and len(info.description) > 20
    assert info.description == parsed.description


@pytest.mark.parametrize("info", TEMPLATES, ids=lambda t: t.id)
def test_a_template_file_is_canonical_and_round_trips(info: TemplateInfo) -> None:
    text = resources.files("services.triggers").joinpath(f"templates/{info.id}.json").read_text()
    assert D.export(info.definition) == text
    assert D.parse(D.export(info.definition)) == info.definition


def sends(info: TemplateInfo) -> list[Send]:
    program = compile_definition(info.definition)
    return [step for step, _ in program.steps.values() if isinstance(step, Send)]


@pytest.mark.parametrize("info", TEMPLATES, ids=lambda t: t.id)
def test_every_mail_renders_with_its_run_vars_and_no_contact_data(info: TemplateInfo) -> None:
    run_vars = D.RUN_VARS[info.definition.trigger.event]
    context = {
        "contact": {"first_name": "", "last_name": "", "email": "a@example.com", "locale": ""},
        "workspace": {"name": "Tea House"},
        "vars": {name: f"<{name}>" for name in run_vars},
    }
    for step in sends(info):
        m = step.message
        subject = templating.render(templating.compiled(m.subject, False), context)
        body = templating.render(templating.compiled(m.body_text, False), context)
        assert "Tea House" in subject
        assert "None" not in body and "{{" not in body
        assert "Hi ," not in body
        if "contact.first_name" in m.subject + m.body_text:
            assert "there" in subject + body  # the default, for a contact with no name


def render_body(info: TemplateInfo, step_id: str, **run_vars: str) -> str:
    step = compile_definition(info.definition).steps[step_id][0]
    assert isinstance(step, Send)
    context = {
        "contact": {"first_name": "Ada", "last_name": "", "email": "", "locale": ""},
        "workspace": {"name": "Tea House"},
        "vars": run_vars,
    }
    subject = templating.render(templating.compiled(step.message.subject, False), context)
    return (
        subject
        + "\n"
        + templating.render(templating.compiled(step.message.body_text, False), context)
    )


def test_signup_anniversary_counts_the_years() -> None:
    info = BY_ID["signup_anniversary"]
    assert render_body(info, "anniversary", years="1").startswith("One year with Tea House\n")
    assert "a year ago today" in render_body(info, "anniversary", years="1")
    assert render_body(info, "anniversary", years="3").startswith("3 years with Tea House\n")


def test_the_password_reminder_gives_the_shops_reset_link_when_the_event_has_one() -> None:
    info = BY_ID["password_reminder"]
    link = "https://tea.example/reset?token=abc"
    with_link = render_body(info, "password_help", reset_url=link)
    assert f"Choose a new password here: {link}\n" in with_link
    assert "Forgot password" not in with_link
    without = render_body(info, "password_help", reset_url="")
    assert 'Choose a new one with "Forgot password" on the sign-in page.\n' in without
    assert "Choose a new password here" not in without


def test_nudges_respect_the_frequency_cap_answers_and_occasions_do_not() -> None:
    """A reminder, an offer, a win-back are held back by the workspace's cap (one a month by
    default); a mail that answers what the customer did (the welcome, an order's thank-yous)
    or marks a personal occasion at most yearly is not, nor counted: under the default cap a
    cart reminder would otherwise cost a customer their birthday wishes."""
    marketing = {
        info.id: {s.message.respect_frequency_cap for s in sends(info)}
        for info in TEMPLATES
        if any(s.message.kind == "marketing" for s in sends(info))
    }
    assert marketing == {
        "abandoned_cart": {True},
        "browse_abandonment": {True},
        "search_follow_up": {True},
        "win_back": {True},
        "order_details": {True},  # the cross-sell; the order's details are transactional
        "welcome": {False},
        "post_purchase": {False},
        "birthday": {False},
        "signup_anniversary": {False},
        "value_threshold": {False},
    }


def test_the_triggers_and_entry_rules_the_issue_asks_for() -> None:
    cart = BY_ID["abandoned_cart"].definition
    assert (cart.trigger.event, cart.trigger.filter.min_items) == ("cart_updated", 1)
    assert (cart.entry.concurrency, cart.entry.key, cart.entry.on_retrigger) == (
        "per_key",
        "cart_id",
        "restart",
    )
    assert [(r.event, r.filter.max_items, r.same_key) for r in cart.exit_on] == [
        ("order_placed", None, False),
        ("cart_updated", 0, True),
    ]
    assert BY_ID["welcome"].definition.entry.reentry == "once"
    assert BY_ID["post_purchase"].definition.entry.concurrency == "unlimited"
    win_back = BY_ID["win_back"].definition.trigger
    assert (win_back.event, win_back.inactive_for) == ("inactive", timedelta(days=90))
    assert set(win_back.activities) == {"order_placed", "page_viewed", "message_opened"}
    for tid, field in (("birthday", "birthday"), ("signup_anniversary", "signed_up_at")):
        trigger = BY_ID[tid].definition.trigger
        assert (trigger.event, trigger.date_field, trigger.at) == ("date_reached", field, time(9))
    password = BY_ID["password_reminder"].definition
    assert password.trigger.event == "login_failed"
    assert password.entry.reentry_after == timedelta(hours=1)
    assert [s.message.kind for s in sends(BY_ID["password_reminder"])] == ["transactional"]
    value = BY_ID["value_threshold"].definition
    assert (value.trigger.threshold_minor, value.trigger.currency) == (100_000, "EUR")
    assert value.entry.reentry == "once"
    browse = BY_ID["browse_abandonment"].definition.trigger
    assert (browse.event, browse.filter.has_product) == ("page_viewed", True)
    assert BY_ID["search_follow_up"].definition.trigger.event == "searched"
    post_purchase = compile_definition(BY_ID["post_purchase"].definition).steps.values()
    assert all(step.repeat for step, _ in post_purchase)  # seed 002: "run multiple times"


# ---------------------------------------------------------------- walks through the interpreter

NOON = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)  # 13:00 in Rome: inside the send window


def state(run_id: str, position: str | None = None, started: datetime = NOON) -> RunState:
    return RunState(
        run_id=run_id,
        workspace_id="ws",
        contact_id="c1",
        started_at=started,
        position=position,
        key="cart-1",
    )


def walk(tid: str, st: RunState, facts: Facts, now: datetime = NOON) -> Advance:
    return advance(compile_definition(BY_ID[tid].definition), st, facts, now)


def summary(result: Advance) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for effect in result.effects:
        match effect:
            case SendMail(step_id=step_id):
                out.append(("send", step_id))
            case ModifyTags(add=add, remove=remove):
                out.append(("tags", (add, remove)))
            case AdjustScore(delta=delta):
                out.append(("score", delta))
    return out


def test_post_purchase_first_purchase_tags_first_purchase_and_thanks() -> None:
    result = walk("post_purchase", state("r1"), Facts(tags=frozenset()))
    assert summary(result) == [("tags", (("first_purchase",), ())), ("send", "thank_you_first")]
    assert result.end_reason == "completed"


def test_post_purchase_second_purchase_swaps_the_tags_and_thanks_for_coming_back() -> None:
    facts = Facts(
        tags=frozenset({"first_purchase"}),
        done_in_earlier_runs=frozenset({"is_repeat_customer", "is_second_purchase"}),
    )
    result = walk("post_purchase", state("r2"), facts)
    # One change, not two: contacts publishes a version per change, and the engine applying
    # the in-between one (no tag at all) took the next order for a first purchase.
    assert summary(result) == [
        ("tags", (("repeat_customer",), ("first_purchase",))),
        ("send", "thank_you_for_coming_back"),
    ]
    assert result.end_reason == "completed"


@pytest.mark.parametrize("run", ["r3", "r4"])
def test_post_purchase_every_later_purchase_thanks_and_adds_10_to_the_score(run: str) -> None:
    # Every step may run again (seed 002's "run multiple times"): the third and the fourth
    # purchase go through the same steps as the runs before them.
    earlier = frozenset(compile_definition(BY_ID["post_purchase"].definition).steps)
    facts = Facts(tags=frozenset({"repeat_customer"}), done_in_earlier_runs=earlier)
    result = walk("post_purchase", state(run), facts)
    assert summary(result) == [("score", 10), ("send", "thank_you_again")]
    assert result.end_reason == "completed"


ROME = Facts(time_zone="Europe/Rome")


def test_abandoned_cart_waits_3_hours_then_reminds_with_the_cart() -> None:
    first = walk("abandoned_cart", state("c"), ROME)
    assert (first.effects, first.position, first.wake_at) == (
        (),
        "reminder",
        NOON + timedelta(hours=3),
    )
    woke = walk("abandoned_cart", state("c", first.position), ROME, NOON + timedelta(hours=3))
    assert summary(woke) == [("send", "reminder")]
    # the next day at 10:00 in Rome (CET, UTC+1): 09:00 UTC
    assert woke.wake_at == datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
    assert woke.position == "still_no_order"
    body = render_body(
        BY_ID["abandoned_cart"],
        "reminder",
        cart_items="2 x Blue mug (12.00 EUR)",
        cart_url="https://tea.example/cart/1",
    )
    assert "2 x Blue mug (12.00 EUR)" in body and "https://tea.example/cart/1" in body


def test_abandoned_cart_second_reminder_is_the_next_day_even_after_a_morning_reminder() -> None:
    morning = datetime(2026, 1, 14, 7, 30, tzinfo=UTC)  # 08:30 in Rome, before 10:00
    woke = walk("abandoned_cart", state("c", "reminder"), ROME, morning)
    assert summary(woke) == [("send", "reminder")]
    assert woke.wake_at == datetime(2026, 1, 15, 9, 0, tzinfo=UTC)  # not today at 10:00


def test_abandoned_cart_sends_the_offer_the_next_day_only_without_an_order() -> None:
    next_day = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
    no_order = walk("abandoned_cart", state("c", "still_no_order"), ROME, next_day)
    assert summary(no_order) == [("send", "offer")]
    assert no_order.end_reason == "completed"
    ordered = Facts(
        time_zone="Europe/Rome",
        events_since_start=(SeenEvent("order_placed", NOON + timedelta(hours=5), key="o1"),),
    )
    with_order = walk("abandoned_cart", state("c", "still_no_order"), ordered, next_day)
    assert summary(with_order) == []
    assert with_order.end_reason == "completed"
    assert "offer" in render_body(BY_ID["abandoned_cart"], "offer", cart_items="x", cart_url="u")


def test_abandoned_cart_starts_on_a_filled_cart_and_ends_on_an_order_or_an_emptied_cart() -> None:
    cart = BY_ID["abandoned_cart"].definition
    filled = SeenEvent("cart_updated", NOON, key="cart-1", items=2)
    emptied = SeenEvent("cart_updated", NOON, key="cart-1", items=0)
    assert matches(cart.trigger.filter, filled) and not matches(cart.trigger.filter, emptied)
    order_rule, emptied_rule = cart.exit_on
    assert matches(order_rule.filter, SeenEvent("order_placed", NOON, key="o1", items=1))
    assert matches(emptied_rule.filter, emptied) and not matches(emptied_rule.filter, filled)


def test_order_details_are_sent_at_once_and_the_cross_sell_two_to_three_days_later() -> None:
    late = datetime(2026, 1, 14, 19, 30, tzinfo=UTC)  # 20:30 in Rome
    first = walk("order_details", state("o"), ROME, late)
    assert summary(first) == [("send", "order_details")]
    assert first.wake_at == late + timedelta(days=2)
    second = walk("order_details", state("o", first.position), ROME, late + timedelta(days=2))
    assert second.effects == ()
    assert second.wake_at == datetime(2026, 1, 17, 9, 0, tzinfo=UTC)  # 10:00 in Rome, day 3
    third = walk("order_details", state("o", second.position), ROME, second.wake_at)
    assert summary(third) == [("send", "cross_sell")]
    assert "tea, cups" in render_body(BY_ID["order_details"], "cross_sell", categories="tea, cups")


def test_the_welcome_letter_goes_at_once_even_at_night() -> None:
    """The contact just signed up: a welcome held until 08:00 the next day would read as a
    delay (and README's first path, run at night, would show no mail)."""
    definition = BY_ID["welcome"].definition
    night = datetime(2026, 1, 14, 3, 0, tzinfo=UTC)
    state = RunState(run_id="r", workspace_id="w", contact_id="c", started_at=night, position=None)
    result = advance(compile_definition(definition), state, Facts(time_zone="UTC"), night)
    assert [e.step_id for e in result.effects if isinstance(e, SendMail)] == ["welcome"]
    assert result.end_reason == "completed"
