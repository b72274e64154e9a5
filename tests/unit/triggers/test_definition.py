"""definition.parse, warnings and export: every violation with the exact path the API reports."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.triggers.domain import definition as D
from services.triggers.domain.model import Definition, EventName
from services.triggers.domain.templates import TEMPLATES


def send(step_id: str = "mail", **message: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "send",
        "message": {
            "subject": "News from {{ workspace.name }}",
            "body_text": 'Hi {{ contact.first_name | default("there") }}',
            **message,
        },
    }


def doc(**fields: Any) -> dict[str, Any]:
    """A valid definition, with ``fields`` replaced."""
    base: dict[str, Any] = {
        "format": "nudge.workflow/v1",
        "name": "Test",
        "trigger": {"event": "signed_up"},
        "steps": [{"id": "wait", "type": "wait", "duration": "PT1H"}, send()],
    }
    base.update(fields)
    return base


def violations(document: Any) -> dict[str, str]:
    with pytest.raises(D.DefinitionInvalid) as caught:
        D.parse(document)
    return {v.field: v.description for v in caught.value.violations}


def test_a_valid_definition_parses_from_text_bytes_and_a_dict() -> None:
    text = json.dumps(doc())
    assert D.parse(text) == D.parse(text.encode()) == D.parse(doc())
    assert isinstance(D.parse(doc()), Definition)


# ---------------------------------------------------------------- malformed and oversized


def test_malformed_json_says_where() -> None:
    found = violations('{\n  "name": "x",\n  "steps": [,]\n}')
    assert list(found) == ["definition"]
    assert "line 3, column 13" in found["definition"]


def test_a_key_given_twice_is_refused_rather_than_one_silently_dropped() -> None:
    text = '{"name": "a", "trigger": {"event": "signed_up", "event": "searched"}, "steps": []}'
    assert violations(text) == {"definition": "the key 'event' appears twice in one object"}


def test_a_json_list_is_not_a_definition() -> None:
    assert violations("[1, 2]") == {"definition": "a JSON object is expected, not a list"}


def test_more_than_256_kib_is_refused_before_reading() -> None:
    big = json.dumps(doc(description="x" * (256 * 1024)))
    found = violations(big)
    assert list(found) == ["definition"]
    assert "at most 262144" in found["definition"]


def test_deeply_nested_json_is_refused_before_the_models_recurse() -> None:
    deep = '{"a": ' * 200 + "1" + "}" * 200
    assert violations(deep) == {"definition": "nested more than 100 levels deep"}
    deeper = "[" * 20_000 + "]" * 20_000  # past Python's own recursion limit
    assert violations(deeper) == {"definition": "nested too deeply"}


# ---------------------------------------------------------------- shape errors


def test_a_duration_that_is_not_iso_8601_names_the_form() -> None:
    found = violations(doc(steps=[{"id": "w", "type": "wait", "duration": "3 hours"}]))
    assert list(found) == ["definition.steps[0].duration"]
    assert '"PT3H"' in found["definition.steps[0].duration"]
    assert '"P1D"' in found["definition.steps[0].duration"]


def test_paths_inside_branches_use_else_and_drop_the_type_tags() -> None:
    branch = {
        "id": "b",
        "type": "branch",
        "condition": {"type": "not", "condition": {"type": "has_tag"}},
        "then": [send("t")],
        "else": [{"id": "w", "type": "wait", "duration": "soon"}],
    }
    found = violations(doc(steps=[send("first"), branch]))
    assert set(found) == {
        "definition.steps[1].condition.condition.tag",
        "definition.steps[1].else[0].duration",
    }
    assert found["definition.steps[1].condition.condition.tag"] == "required"


def test_an_unknown_step_type_lists_the_allowed_ones() -> None:
    found = violations(doc(steps=[{"id": "x", "type": "sms"}]))
    assert found == {
        "definition.steps[0]": "unknown step type 'sms': use one of wait, wait_until, "
        "branch, send, tag, score, exit"
    }


def test_an_unknown_condition_type_lists_the_condition_types() -> None:
    branch = {
        "id": "b",
        "type": "branch",
        "condition": {"type": "any", "conditions": [{"type": "wait"}]},
    }
    found = violations(doc(steps=[branch]))
    description = found["definition.steps[0].condition.conditions[0]"]
    assert "unknown condition type 'wait'" in description
    assert "in_segment" in description


def test_a_step_without_type_says_so() -> None:
    found = violations(doc(steps=[{"id": "x"}, ["wait"], 3]))
    assert found["definition.steps[0]"].startswith('the step has no "type"')
    assert found["definition.steps[1]"] == "must be an object"
    assert found["definition.steps[2]"] == "must be an object"


def test_wrong_types_and_unknown_fields_each_have_their_path() -> None:
    found = violations(
        doc(
            steps=[
                {"id": "w", "type": "wait_until", "at": "25:00"},
                send("m", kind="sms", subject=3),
                {"id": "s", "type": "score", "delta": "ten"},
            ],
            colour="blue",
        )
    )
    assert found == {
        "definition.steps[0].at": 'not a time of day: write "HH:MM", e.g. "10:00"',
        "definition.steps[1].message.kind": "must be one of 'marketing' or 'transactional'",
        "definition.steps[1].message.subject": "must be a string",
        "definition.steps[2].delta": "must be a whole number",
        "definition.colour": "unknown field 'colour' (not part of nudge.workflow/v1)",
    }


def test_a_bad_step_id_and_no_steps() -> None:
    assert "letters, digits" in violations(doc(steps=[send("no spaces")]))["definition.steps[0].id"]
    assert violations(doc(steps=[])) == {"definition.steps": "at least 1 item(s)"}


# ---------------------------------------------------------------- limits


def test_duplicate_step_ids_anywhere_in_the_tree() -> None:
    branch = {"id": "b", "type": "branch", "condition": {"type": "has_tag", "tag": "x"}}
    branch["else"] = [send("mail")]
    found = violations(doc(steps=[send("mail"), branch]))
    assert found == {
        "definition.steps[1].else[0].id": "step id 'mail' is used twice "
        "(also at definition.steps[0].id)"
    }


def test_a_name_is_at_most_200_characters() -> None:
    assert violations(doc(name="n" * 201)) == {"definition.name": "at most 200 characters"}
    D.parse(doc(name="n" * 200))


def test_tags_scores_and_step_names_limits() -> None:
    found = violations(
        doc(
            steps=[
                {"id": "t", "type": "tag", "add": ["x" * 65, ""], "remove": []},
                {"id": "empty", "type": "tag"},
                {"id": "s", "type": "score", "delta": 0},
                {"id": "n", "type": "exit", "name": "n" * 201},
            ],
        )
    )
    assert found == {
        "definition.steps[0].add[0]": "a tag is 1 to 64 characters",
        "definition.steps[0].add[1]": "a tag is 1 to 64 characters",
        "definition.steps[1]": 'nothing to do: give "add" or "remove" (or both)',
        "definition.steps[2].delta": "must not be 0",
        "definition.steps[3].name": "at most 200 characters",
    }


@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        ("PT0S", "must be longer than zero"),
        ("-PT1H", "must be longer than zero"),
        ("P366D", "at most 365 days"),
    ],
)
def test_durations_are_positive_and_at_most_a_year(duration: str, expected: str) -> None:
    found = violations(doc(steps=[{"id": "w", "type": "wait", "duration": duration}]))
    assert found["definition.steps[0].duration"].startswith(expected)


def test_a_year_is_the_longest_wait() -> None:
    parsed = D.parse(doc(steps=[{"id": "w", "type": "wait", "duration": "P365D"}, send()]))
    assert parsed.steps[0].duration == timedelta(days=365)  # type: ignore[union-attr]


def test_day_offset_is_0_to_7() -> None:
    found = violations(
        doc(steps=[{"id": "w", "type": "wait_until", "at": "10:00", "day_offset": 8}])
    )
    assert list(found) == ["definition.steps[0].day_offset"]
    D.parse(doc(steps=[{"id": "w", "type": "wait_until", "at": "10:00", "day_offset": 7}, send()]))


def test_subject_and_body_lengths() -> None:
    found = violations(
        doc(
            steps=[
                send("a", subject="s" * 256),
                send("b", body_text="b" * 100_001),
                send("c", body_html="<p>" + "h" * 100_000 + "</p>"),
                send("d", body_text="  "),
            ]
        )
    )
    assert found == {
        "definition.steps[0].message.subject": "at most 255 characters",
        "definition.steps[1].message.body_text": "at most 100,000 characters",
        "definition.steps[2].message.body_html": "at most 100,000 characters",
        "definition.steps[3].message.body_text": "must not be empty: every mail has a text body",
    }


def test_at_most_200_steps_in_all() -> None:
    many = [{"id": f"s{i}", "type": "score", "delta": 1} for i in range(199)]
    branch = {"id": "b", "type": "branch", "condition": {"type": "has_tag", "tag": "x"}}
    D.parse(doc(steps=[*many, branch]))  # 200
    branch["then"] = [{"id": "one_more", "type": "exit"}]
    assert violations(doc(steps=[*many, branch])) == {
        "definition.steps": "201 steps in all: at most 200"
    }


def nested_branches(depth: int) -> dict[str, Any]:
    step: dict[str, Any] = {"id": "leaf", "type": "exit"}
    for level in range(depth):
        step = {
            "id": f"b{level}",
            "type": "branch",
            "condition": {"type": "has_tag", "tag": "x"},
            "then": [step],
        }
    return step


def test_branches_nest_at_most_10_deep() -> None:
    D.parse(doc(steps=[nested_branches(10)]))
    found = violations(doc(steps=[nested_branches(11)]))
    deepest = "definition.steps[0]" + ".then[0]" * 10
    assert found == {deepest: "branches nested more than 10 deep"}


def test_conditions_nest_at_most_10_deep() -> None:
    condition: dict[str, Any] = {"type": "has_tag", "tag": "x"}
    for _ in range(10):
        condition = {"type": "not", "condition": condition}
    found = violations(doc(steps=[{"id": "b", "type": "branch", "condition": condition}]))
    assert found == {
        "definition.steps[0].condition" + ".condition" * 10: "conditions nested more than 10 deep"
    }


# ---------------------------------------------------------------- the trigger


def test_segment_id_is_required_for_segment_events_and_only_there() -> None:
    assert list(violations(doc(trigger={"event": "segment_entered"}))) == [
        "definition.trigger.segment_id"
    ]
    assert violations(doc(trigger={"event": "signed_up", "segment_id": "vip"})) == {
        "definition.trigger.segment_id": "only for segment_entered and segment_exited"
    }
    D.parse(doc(trigger={"event": "segment_exited", "segment_id": "vip"}))


@pytest.mark.parametrize("field", ["birthday", "signed_up_at", "attributes.renewal_date"])
def test_date_fields_that_exist(field: str) -> None:
    parsed = D.parse(doc(trigger={"event": "date_reached", "date_field": field, "at": "09:00"}))
    assert parsed.trigger.date_field == field


def test_date_reached_needs_a_known_date_field() -> None:
    assert (
        "required for date_reached"
        in violations(doc(trigger={"event": "date_reached"}))["definition.trigger.date_field"]
    )
    bad = violations(doc(trigger={"event": "date_reached", "date_field": "anniversary"}))
    assert "'anniversary' is not a date field" in bad["definition.trigger.date_field"]
    assert violations(
        doc(trigger={"event": "signed_up", "date_field": "birthday", "at": "10:00"})
    ) == {
        "definition.trigger.date_field": "only for date_reached",
        "definition.trigger.at": "only for date_reached (the time of day it fires)",
    }


def test_value_crossed_needs_a_positive_threshold_and_a_currency() -> None:
    found = violations(
        doc(trigger={"event": "value_crossed", "threshold_minor": 0, "currency": "eur"})
    )
    assert set(found) == {"definition.trigger.threshold_minor", "definition.trigger.currency"}
    assert violations(doc(trigger={"event": "signed_up", "currency": "EUR"})) == {
        "definition.trigger.currency": "only for value_crossed"
    }
    D.parse(doc(trigger={"event": "value_crossed", "threshold_minor": 1, "currency": "EUR"}))


def test_inactive_needs_inactive_for_and_activities_are_only_for_it() -> None:
    assert list(violations(doc(trigger={"event": "inactive"}))) == [
        "definition.trigger.inactive_for"
    ]
    found = violations(doc(trigger={"event": "inactive", "inactive_for": "P400D"}))
    assert found == {"definition.trigger.inactive_for": 'at most 365 days ("P365D")'}
    assert violations(doc(trigger={"event": "signed_up", "activities": ["searched"]})) == {
        "definition.trigger.activities": "only for inactive"
    }


@pytest.mark.parametrize(
    ("event", "flt", "field"),
    [
        ("page_viewed", {"min_items": 1}, "min_items"),
        ("signed_up", {"max_items": 0}, "max_items"),
        ("searched", {"category": "tea"}, "category"),
        ("login_failed", {"product_id": "p1"}, "product_id"),
        ("cart_updated", {"query_contains": "tea"}, "query_contains"),
        ("searched", {"has_product": True}, "has_product"),
        ("page_viewed", {"min_total_minor": 100}, "min_total_minor"),
    ],
)
def test_a_filter_field_must_fit_the_event(event: str, flt: dict[str, Any], field: str) -> None:
    found = violations(doc(trigger={"event": event, "filter": flt}))
    assert list(found) == [f"definition.trigger.filter.{field}"]
    assert found[f"definition.trigger.filter.{field}"].startswith(f"not for {event}: only for")


def test_filters_of_exit_rules_and_conditions_are_checked_too() -> None:
    happened = {"type": "happened", "event": "signed_up", "filter": {"min_items": 1}}
    found = violations(
        doc(
            exit_on=[{"event": "searched", "filter": {"category": "tea"}}],
            steps=[
                {"id": "b", "type": "branch", "condition": {"type": "not", "condition": happened}}
            ],
        )
    )
    assert set(found) == {
        "definition.exit_on[0].filter.category",
        "definition.steps[0].condition.condition.filter.min_items",
    }


def test_an_attribute_condition_needs_a_value_to_compare_with() -> None:
    def branch(condition: dict[str, Any]) -> dict[str, Any]:
        return doc(steps=[{"id": "b", "type": "branch", "condition": condition}])

    found = violations(branch({"type": "attribute", "attribute": "plan", "op": "gt"}))
    assert found == {
        "definition.steps[0].condition.value": 'required with op "gt": what to compare with'
    }
    D.parse(branch({"type": "attribute", "attribute": "plan", "op": "exists"}))
    assert list(violations(branch({"type": "attribute", "attribute": " ", "op": "exists"}))) == [
        "definition.steps[0].condition.attribute"
    ]


def test_filter_values_are_sane() -> None:
    found = violations(
        doc(
            trigger={"event": "cart_updated", "filter": {"min_items": 3, "max_items": 1}},
            exit_on=[{"event": "order_placed"}],
        )
    )
    assert found == {
        "definition.trigger.filter.max_items": "smaller than min_items: nothing would match"
    }


# ---------------------------------------------------------------- entry and exit


def cart(**fields: Any) -> dict[str, Any]:
    fields.setdefault("exit_on", [{"event": "order_placed"}])
    return doc(trigger={"event": "cart_updated"}, **fields)


def test_per_key_needs_a_key_and_a_key_needs_per_key() -> None:
    assert (
        "required with concurrency"
        in violations(cart(entry={"concurrency": "per_key"}))["definition.entry.key"]
    )
    assert violations(cart(entry={"key": "cart_id"})) == {
        "definition.entry.key": 'only with concurrency "per_key"'
    }
    D.parse(cart(entry={"concurrency": "per_key", "key": "cart_id"}))


def test_the_entry_key_must_be_carried_by_the_trigger_event() -> None:
    assert violations(cart(entry={"concurrency": "per_key", "key": "order_id"})) == {
        "definition.entry.key": "cart_updated carries no order_id: only order_placed or "
        "order_cancelled or order_refunded does"
    }
    found = violations(doc(entry={"concurrency": "per_key", "key": "cart_id"}))
    assert found["definition.entry.key"].startswith("signed_up carries no cart_id")


def test_same_key_needs_an_entry_key_that_the_event_carries() -> None:
    rule = {"event": "cart_updated", "filter": {"max_items": 0}, "same_key": True}
    found = violations(cart(exit_on=[{"event": "order_placed"}, rule]))
    assert found == {
        "definition.exit_on[1].same_key": 'needs an entry key (entry.concurrency "per_key" '
        "with entry.key)"
    }
    keyed = {"concurrency": "per_key", "key": "cart_id"}
    wrong = {"event": "searched", "same_key": True}
    assert violations(cart(entry=keyed, exit_on=[{"event": "order_placed"}, wrong])) == {
        "definition.exit_on[1].same_key": "searched carries no cart_id"
    }
    D.parse(cart(entry=keyed, exit_on=[{"event": "order_placed"}, rule]))


def test_entry_rules_that_contradict_each_other() -> None:
    found = violations(
        doc(
            entry={
                "concurrency": "unlimited",
                "on_retrigger": "restart",
                "reentry": "once",
                "reentry_after": "P1D",
            }
        )
    )
    assert set(found) == {"definition.entry.on_retrigger", "definition.entry.reentry_after"}


# ---------------------------------------------------------------- messages


def test_a_message_may_print_only_the_vars_its_trigger_sets() -> None:
    found = violations(cart(steps=[send(body_text="{{ vars.order_total }} {{ vars.cart_url }}")]))
    assert found == {
        "definition.steps[0].message.body_text": "vars.order_total is not set by this trigger "
        "(it sets vars.cart_id, vars.cart_url, vars.cart_items, vars.cart_total, vars.item_count)"
    }
    D.parse(cart(steps=[send(body_text="{{ vars['cart_items'] }} {{ vars.cart_url }}")]))


def test_a_message_may_print_only_contact_fields_that_exist() -> None:
    found = violations(doc(steps=[send(subject="{{ contact.nickname }} {{ shop }}")]))
    assert found == {
        "definition.steps[0].message.subject": "contact.nickname does not exist (there is "
        "contact.first_name, contact.last_name, contact.email, contact.locale); 'shop' does "
        "not exist: use contact, workspace or vars"
    }


def test_names_a_template_defines_itself_are_fine() -> None:
    body = (
        "{% set n = contact.first_name | default('you') %}"
        "{% for c in 'ab' %}{{ c }}{% endfor %}{{ n }}"
    )
    parsed = D.parse(doc(steps=[send(body_text=body, body_html="<p>{{ links.preferences }}</p>")]))
    assert parsed.steps[0].message.body_text == body  # type: ignore[union-attr]


def test_templates_must_compile_and_render() -> None:
    found = violations(
        doc(steps=[send("a", body_text="{% if %}"), send("b", body_html="<p>{{ 1 / 0 }}</p>")])
    )
    assert found["definition.steps[0].message.body_text"].startswith("not a valid template:")
    assert found["definition.steps[1].message.body_html"].startswith(
        "fails to render: ZeroDivisionError"
    )


def test_the_sandbox_limits_apply() -> None:
    found = violations(
        doc(
            steps=[
                send(
                    body_text="{% for i in range(40000) %}{% for j in range(2) %}"
                    "{% endfor %}{% endfor %}"
                )
            ]
        )
    )
    assert "LimitExceeded" in found["definition.steps[0].message.body_text"]


def test_transactional_mail_only_for_what_the_customer_asked_for() -> None:
    found = violations(cart(steps=[send(kind="transactional")]))
    assert list(found) == ["definition.steps[0].message.kind"]
    assert (
        "a mail started by cart_updated is marketing" in found["definition.steps[0].message.kind"]
    )
    for event in ("order_placed", "login_failed", "signed_up"):
        D.parse(doc(trigger={"event": event}, steps=[send(kind="transactional")]))


def test_every_violation_is_reported_at_once() -> None:
    found = violations(
        cart(
            name=" ",
            entry={"concurrency": "per_key"},
            steps=[send("a", kind="transactional"), {"id": "a", "type": "score", "delta": 0}],
        )
    )
    assert set(found) == {
        "definition.name",
        "definition.entry.key",
        "definition.steps[0].message.kind",
        "definition.steps[1].id",
        "definition.steps[1].delta",
    }


# ---------------------------------------------------------------- warnings


def warned(document: dict[str, Any]) -> dict[str, str]:
    return {w.field: w.description for w in D.warnings(D.parse(document))}


def test_no_warnings_for_a_careful_workflow() -> None:
    assert warned(doc()) == {}


def test_a_cart_flow_without_an_order_exit_is_warned() -> None:
    found = warned(doc(trigger={"event": "cart_updated"}))
    assert list(found) == ["definition.exit_on"]
    assert "order_placed" in found["definition.exit_on"]


@pytest.mark.parametrize("event", ["cart_updated", "page_viewed", "searched"])
def test_a_marketing_mail_at_once_after_browsing_is_warned(event: str) -> None:
    branch = {
        "id": "b",
        "type": "branch",
        "condition": {"type": "has_tag", "tag": "x"},
        "then": [send("in_branch")],
        "else": [{"id": "w2", "type": "wait", "duration": "PT1H"}],
    }
    steps = [
        branch,
        send("at_once"),
        {"id": "w", "type": "wait", "duration": "PT1H"},
        send("later"),
    ]
    found = warned(doc(trigger={"event": event}, exit_on=[{"event": "order_placed"}], steps=steps))
    assert set(found) == {"definition.steps[0].then[0]", "definition.steps[1]"}


def test_a_transactional_mail_or_another_trigger_is_not_warned_for_sending_at_once() -> None:
    assert warned(doc(trigger={"event": "order_placed"}, steps=[send()])) == {}


def test_a_subject_without_the_workspace_name_is_warned() -> None:
    found = warned(doc(steps=[send(subject="Hello")]))
    assert list(found) == ["definition.steps[0].message.subject"]


def test_more_than_four_lines_of_text_is_warned() -> None:
    assert warned(doc(steps=[send(body_text="1\n2\n\n3\n4\n")])) == {}
    found = warned(doc(steps=[send(body_text="1\n2\n3\n4\n5")]))
    assert list(found) == ["definition.steps[0].message.body_text"]


def tag(step_id: str, **change: list[str]) -> dict[str, Any]:
    return {"id": step_id, "type": "tag", **change}


def test_a_tag_its_conditions_read_changed_after_a_mail_that_may_wait_is_warned() -> None:
    """Seed 002 as first written: the second order's run removed first_purchase, then waited
    for the window to thank, then added repeat_customer; a third order at night read
    neither tag and was thanked as a first purchase."""
    steps = [
        {
            "id": "b",
            "type": "branch",
            "condition": {"type": "not", "condition": {"type": "has_tag", "tag": "repeat"}},
            "then": [tag("before", remove=["first"]), send("thanks"), tag("after", add=["repeat"])],
            "else": [send("again"), tag("other", add=["unrelated"])],
        },
        tag("last", remove=["repeat"]),
    ]
    found = warned(doc(trigger={"event": "order_placed"}, steps=steps))
    assert set(found) == {"definition.steps[0].then[2]", "definition.steps[1]"}
    assert "'repeat'" in found["definition.steps[1]"]
    assert "08:00" in found["definition.steps[1]"]


def test_a_tag_after_a_mail_that_does_not_wait_for_the_window_is_not_warned() -> None:
    condition = {"type": "has_tag", "tag": "t"}
    for message in ({"kind": "transactional"}, {"respect_send_window": False}):
        steps = [
            {"id": "b", "type": "branch", "condition": condition, "then": [send(**message)]},
            tag("t", add=["t"]),
        ]
        assert warned(doc(trigger={"event": "order_placed"}, steps=steps)) == {}
    # Nothing reads the tag: changing it late harms nobody.
    assert warned(doc(steps=[send(), tag("t", add=["t"])])) == {}


# ---------------------------------------------------------------- export


def full() -> dict[str, Any]:
    """A definition that sets every field away from its default."""
    return {
        "format": "nudge.workflow/v1",
        "name": "Every field",
        "description": "d",
        "trigger": {
            "event": "cart_updated",
            "filter": {
                "min_items": 1,
                "max_items": 9,
                "category": "tea",
                "product_id": "p",
                "min_total_minor": 5,
                "has_product": True,
            },
        },
        "entry": {
            "concurrency": "per_key",
            "key": "cart_id",
            "on_retrigger": "restart",
            "reentry_after": "P1DT2H30M",
        },
        "exit_on": [
            {"event": "order_placed", "filter": {"min_items": 1}},
            {"event": "cart_updated", "filter": {"max_items": 0}, "same_key": True},
        ],
        "send_window": {"start": "22:00", "end": "06:30"},
        "steps": [
            {"id": "w", "type": "wait", "name": "n", "repeat": False, "duration": "PT90M"},
            {"id": "u", "type": "wait_until", "at": "10:15:30", "day_offset": 2},
            {
                "id": "b",
                "type": "branch",
                "condition": {
                    "type": "all",
                    "conditions": [
                        {"type": "in_segment", "segment_id": "s"},
                        {"type": "attribute", "attribute": "plan", "op": "gte", "value": "3"},
                        {
                            "type": "any",
                            "conditions": [
                                {
                                    "type": "happened",
                                    "event": "page_viewed",
                                    "filter": {"category": "tea"},
                                },
                                {"type": "happened", "event": "cart_updated", "same_key": True},
                            ],
                        },
                        {"type": "not", "condition": {"type": "has_tag", "tag": "vip"}},
                    ],
                },
                "then": [{"id": "t", "type": "tag", "add": ["a"], "remove": ["b"]}],
                "else": [{"id": "s", "type": "score", "delta": -5}, {"id": "x", "type": "exit"}],
            },
            send("m", body_html="<p>{{ workspace.name }}</p>", respect_frequency_cap=False),
        ],
    }


def test_export_round_trips_every_field() -> None:
    parsed = D.parse(full())
    text = D.export(parsed)
    assert D.parse(text) == parsed
    assert D.export(D.parse(text)) == text


def test_export_is_canonical() -> None:
    text = D.export(D.parse(full()))
    out = json.loads(text)
    assert text.endswith("}\n") and text.startswith('{\n  "format": "nudge.workflow/v1",\n')
    assert list(out) == [
        "format",
        "name",
        "description",
        "trigger",
        "entry",
        "exit_on",
        "send_window",
        "steps",
    ]
    assert [list(s)[:2] for s in out["steps"]] == [["id", "type"]] * 4
    assert out["steps"][0]["duration"] == "PT1H30M"
    assert out["entry"]["reentry_after"] == "P1DT2H30M"
    assert out["steps"][1]["at"] == "10:15:30"
    assert out["send_window"] == {"start": "22:00", "end": "06:30"}
    assert list(out["steps"][2]["condition"]["conditions"][0]) == ["type", "segment_id"]
    assert "else" in out["steps"][2] and "otherwise" not in out["steps"][2]


def test_export_leaves_defaults_out_but_keeps_format_and_type() -> None:
    out = json.loads(D.export(D.parse(doc())))
    assert out == {
        "format": "nudge.workflow/v1",
        "name": "Test",
        "trigger": {"event": "signed_up"},
        "steps": [
            {"id": "wait", "type": "wait", "duration": "PT1H"},
            {"id": "mail", "type": "send", "message": copy.deepcopy(send()["message"])},
        ],
    }


# ---------------------------------------------------------------- any input


ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["PT1H", "P1D", "10:00", "{{", "{{ vars.x }}", "wait", "branch", "tag"]),
    st.lists(st.text(max_size=5), max_size=2),
    st.fixed_dictionaries({"type": st.sampled_from(["wait", "not", "send", "x"])}),
)


def mutated(data: st.DataObject, node: Any) -> Any:
    """``node`` with one value somewhere inside replaced by an odd one."""
    if isinstance(node, dict) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node)))
        return {**node, key: mutated(data, node[key])}
    if isinstance(node, list) and node and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(node) - 1))
        return [*node[:i], mutated(data, node[i]), *node[i + 1 :]]
    return data.draw(ODD_VALUES)


@settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.data())
def test_any_changed_template_is_refused_with_violations_or_round_trips(
    data: st.DataObject,
) -> None:
    """Whatever a manager sends, parse answers with violations (each with a path under
    "definition") or a definition that exports and imports unchanged: never a crash."""
    info = data.draw(st.sampled_from(TEMPLATES))
    document = json.loads(D.export(info.definition))
    for _ in range(data.draw(st.integers(1, 3))):
        document = mutated(data, document)
    try:
        parsed = D.parse(json.dumps(document))
    except D.DefinitionInvalid as err:
        assert err.violations
        assert all(v.field.startswith("definition") and v.description for v in err.violations)
        return
    D.warnings(parsed)
    assert D.parse(D.export(parsed)) == parsed


def test_every_event_has_its_run_vars_listed() -> None:
    """A new event in the model must say which vars its runs carry, or every message of a
    workflow it starts would be refused for naming unknown vars."""
    assert set(D.RUN_VARS) == set(get_args(EventName))
    assert set(D.TRANSACTIONAL_TRIGGERS) <= set(get_args(EventName))
