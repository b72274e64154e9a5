"""The rule language's validator: every kind of violation with its path, the limits, the
normalized document, and hostile input refused or made harmless."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from services.segmentation.domain import rules
from services.segmentation.domain.builtins import BUILT_IN
from services.segmentation.domain.rules import (
    Ago,
    AllOf,
    Compare,
    Duration,
    Events,
    RuleError,
    SegmentRef,
    Tag,
    normalized,
    parse_rule,
    parse_rule_text,
    referenced_segments,
)


def violations(doc: object, **kw: object) -> list[tuple[str, str]]:
    with pytest.raises(RuleError) as err:
        parse_rule(doc, **kw)  # type: ignore[arg-type]
    return err.value.violations


def text_violations(text: str) -> list[tuple[str, str]]:
    with pytest.raises(RuleError) as err:
        parse_rule_text(text)
    return err.value.violations


def orders(op: str, value: object) -> dict[str, object]:
    return {"field": "orders", "op": op, "value": value}


SEED = {
    "all": [
        {"events": "order", "within": {"days": 60}, "count": {"op": "gte", "value": 2}},
        {"tag": "newsletter"},
    ]
}


def test_the_seed_example_parses_into_its_tree() -> None:
    node = parse_rule(SEED)
    assert node == AllOf(
        "rule",
        (
            Events("rule.all[0]", "order", Duration("days", 60), "gte", 2),
            Tag("rule.all[1]", "newsletter"),
        ),
    )


def test_time_values_instants_and_relative() -> None:
    node = parse_rule(
        {
            "field": "last_order_at",
            "op": "between",
            "value": ["2026-01-01T01:00:00+01:00", {"ago": {"months": 3}}],
        }
    )
    assert isinstance(node, Compare)
    assert node.value == (datetime(2026, 1, 1, tzinfo=UTC), Ago(Duration("months", 3)))


def test_attribute_value_type_chooses_the_comparison() -> None:
    def attr(value: object, op: str = "eq") -> Compare:
        node = parse_rule({"attribute": "plan", "op": op, "value": value})
        assert isinstance(node, Compare)
        return node

    assert attr("gold").type == "string"
    assert attr(3).type == "number"
    assert attr(True).type == "boolean"
    assert attr({"date": "2026-02-28"}, "lt").type == "date"
    assert attr({"date": "2026-02-28"}, "lt").value == date(2026, 2, 28)
    assert attr([1, 2], "in").value == (1, 2)


@pytest.mark.parametrize(
    ("doc", "path", "fragment"),
    [
        ([], "rule", "must be an object"),
        ({}, "rule", "must have one of the keys"),
        ({"tag": "a", "all": [{"tag": "b"}]}, "rule", "more than one node kind"),
        ({"tagg": "a"}, "rule", "did you mean 'tag'"),
        ({"tag": "a", "op": "eq"}, "rule.op", "unknown key 'op' in a 'tag' node"),
        ({"all": []}, "rule.all", "1 to 50"),
        ({"all": {"tag": "a"}}, "rule.all", "must be a list"),
        ({"any": [{"tag": "a"}, 3]}, "rule.any[1]", "must be an object"),
        ({"not": [{"tag": "a"}]}, "rule.not", "must be an object"),
        ({"field": "total_spend", "op": "gte", "value": 5}, "rule.field", "'total_spent'"),
        ({"field": "orders", "op": "gt", "value": "1"}, "rule.value", "must be a number"),
        ({"field": "orders", "op": "gte", "value": True}, "rule.value", "not a boolean"),
        ({"field": "orders", "op": "starts_with", "value": 1}, "rule.op", "unknown operator"),
        ({"field": "orders", "op": "gte"}, "rule.value", "is required"),
        ({"field": "orders", "value": 1}, "rule.op", "is required"),
        ({"field": "orders", "op": "exists", "value": 1}, "rule.value", "takes no value"),
        ({"field": "orders", "op": "between", "value": [3, 2]}, "rule.value", "low must"),
        ({"field": "orders", "op": "between", "value": [1]}, "rule.value", "[low, high]"),
        ({"field": "orders", "op": "in", "value": []}, "rule.value", "1 to 100"),
        ({"field": "orders", "op": "in", "value": [1, "2"]}, "rule.value[1]", "a number"),
        ({"field": "vip", "op": "eq", "value": 1}, "rule.value", "true or false"),
        ({"field": "vip", "op": "ne", "value": True}, "rule.op", "for a boolean"),
        ({"field": "email", "op": "lt", "value": "a"}, "rule.op", "for a string"),
        ({"field": "last_order_at", "op": "eq", "value": "x"}, "rule.op", "for a time"),
        (
            {"field": "last_order_at", "op": "lt", "value": "2026-01-01T00:00:00"},
            "rule.value",
            "with an offset",
        ),
        (
            {"field": "last_order_at", "op": "lt", "value": "2026-02-30T00:00:00Z"},
            "rule.value",
            "not a valid instant",
        ),
        (
            {"field": "last_order_at", "op": "lt", "value": {"ago": {"weeks": 2}}},
            "rule.value.ago",
            "unknown unit",
        ),
        (
            {"field": "last_order_at", "op": "lt", "value": {"ago": {"days": 2, "hours": 1}}},
            "rule.value.ago",
            "one unit",
        ),
        (
            {"field": "last_order_at", "op": "lt", "value": {"ago": {"days": 36501}}},
            "rule.value.ago.days",
            "between 0 and 36500",
        ),
        (
            {"field": "last_order_at", "op": "lt", "value": {"ago": {"months": 1.5}}},
            "rule.value.ago.months",
            "an integer",
        ),
        ({"field": "total_spent", "op": "gte", "value": 1}, "rule.currency", "is required"),
        (
            {"field": "total_spent", "op": "gte", "value": 1, "currency": "eur"},
            "rule.currency",
            "ISO 4217",
        ),
        (
            {"field": "orders", "op": "gte", "value": 1, "currency": "EUR"},
            "rule.currency",
            "only money fields",
        ),
        ({"attribute": "Plan", "op": "eq", "value": "a"}, "rule.attribute", "attribute name"),
        ({"attribute": "plan", "op": "eq", "value": None}, "rule.value", "not null"),
        ({"attribute": "plan", "op": "eq", "value": {"date": "2026-2-1"}}, "rule.value.date", ""),
        ({"attribute": "plan", "op": "lt", "value": "a"}, "rule.op", "for a string"),
        ({"tag": "News"}, "rule.tag", "must be a tag"),
        ({"tag": 3}, "rule.tag", "must be a string"),
        ({"consent": "marketting"}, "rule.consent", "did you mean 'marketing'"),
        ({"events": "orders"}, "rule.events", "did you mean 'order'"),
        ({"events": "open", "where": {"url_prefix": "x"}}, "rule.where.url_prefix", "take none"),
        ({"events": "order", "where": {"currency": "EUR"}}, "rule.where", "go together"),
        ({"events": "order", "count": {"op": "gte"}}, "rule.count.value", "is required"),
        ({"events": "order", "count": {"op": "exists"}}, "rule.count.op", "must be one of"),
        ({"events": "order", "count": {"op": "gte", "value": 1, "x": 1}}, "rule.count", ""),
        ({"events": "click", "within": {"days": -1}}, "rule.within.days", "between 0"),
        ({"segment": "nope"}, "rule.segment", "unknown segment 'nope'"),
        ({"segment": "a b"}, "rule.segment", "must be a segment id"),
    ],
)
def test_each_violation_names_its_node(doc: object, path: str, fragment: str) -> None:
    found = violations(doc)
    assert len(found) == 1, found
    assert found[0][0] == path
    assert fragment in found[0][1]


def test_every_violation_is_reported_at_once() -> None:
    found = violations(
        {"all": [{"tag": "ok"}, {"tag": "BAD"}, {"not": {"field": "x"}}, orders("gte", "1")]}
    )
    assert [p for p, _ in found] == [
        "rule.all[1].tag",
        "rule.all[2].not.field",
        "rule.all[3].value",
    ]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (2**53, "2^53-1"),
        (-(2**53), "2^53-1"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (Decimal("1.0000000000000001"), "significant digits"),
        (Decimal("1e-40"), "significant digits"),
        (Decimal("1.5e40"), "2^53-1"),
    ],
)
def test_numbers_out_of_range_are_refused(value: object, fragment: str) -> None:
    (found,) = violations(orders("gte", value))
    assert found[0] == "rule.value"
    assert fragment in found[1]


def test_numbers_within_range_are_exact() -> None:
    node = parse_rule(orders("gte", 2**53 - 1))
    assert isinstance(node, Compare) and node.value == 2**53 - 1
    node = parse_rule(orders("gte", 2.0))  # a protobuf Struct's integers are doubles
    assert isinstance(node, Compare) and node.value == 2 and isinstance(node.value, int)
    node = parse_rule(orders("gte", 0.1))
    assert isinstance(node, Compare) and node.value == Decimal("0.1")


def test_strings_are_bounded_and_free_of_nul() -> None:
    assert "longer than 500" in violations({"tag": "a" * 501})[0][1]
    (found,) = violations({"attribute": "plan", "op": "eq", "value": "a\x00b"})
    assert found == ("rule.value", "must not contain the NUL character")
    (found,) = violations({"attribute": "plan", "op": "eq", "value": "\ud800"})
    assert "lone surrogate" in found[1]
    parse_rule({"attribute": "plan", "op": "eq", "value": "x" * 500})


def test_depth_limit() -> None:
    doc: object = {"tag": "a"}
    for _ in range(9):
        doc = {"not": doc}
    parse_rule(doc)  # 10 levels
    (found,) = violations({"not": doc})
    assert found[0] == "rule" + ".not" * 10
    assert "deeper than 10" in found[1]


def test_node_limit() -> None:
    wide = {"all": [{"any": [{"tag": "a"}] * 49}] * 4}  # 1 + 4 * 50 = 201 nodes
    (found,) = violations(wide)
    assert "more than 200 nodes" in found[1]
    parse_rule({"all": [{"any": [{"tag": "a"}] * 49}] * 3 + [{"any": [{"tag": "a"}] * 48}]})


def test_children_limit() -> None:
    assert "1 to 50" in violations({"any": [{"tag": "a"}] * 51})[0][1]


def test_in_list_limit() -> None:
    parse_rule(orders("in", list(range(100))))
    assert "1 to 100" in violations(orders("in", list(range(101))))[0][1]


def test_text_limits_and_strict_json() -> None:
    assert "larger than 64 KiB" in text_violations(" " * (64 * 1024 + 1))[0][1]
    assert "larger than 64 KiB" in text_violations("x" * 10_000_000)[0][1]
    assert "NaN" in text_violations('{"field": "orders", "op": "gte", "value": NaN}')[0][1]
    assert (
        "Infinity" in text_violations('{"field": "orders", "op": "gte", "value": -Infinity}')[0][1]
    )
    assert "duplicate key 'tag'" in text_violations('{"tag": "a", "tag": "b"}')[0][1]
    assert "not valid JSON" in text_violations("{'tag': 'a'}")[0][1]
    assert "nested deeper" in text_violations("[" * 30_000)[0][1]
    assert (
        "2^53-1"
        in text_violations('{"field": "orders", "op": "gte", "value": 1' + "0" * 4000 + "}")[0][1]
    )
    assert (
        "not valid JSON"
        in text_violations('{"field": "orders", "op": "gte", "value": 1' + "0" * 5000 + "}")[0][1]
    )


def test_decimals_from_text_stay_exact() -> None:
    node, doc = parse_rule_text('{"field": "score", "op": "gt", "value": 0.1}')
    assert isinstance(node, Compare) and node.value == Decimal("0.1")
    assert doc == {"field": "score", "op": "gt", "value": 0.1}


def test_normalized_sorts_keys_and_makes_integral_numbers_ints() -> None:
    node, doc = parse_rule_text(
        '{"value": 2.0, "op": "gte", "field": "orders"}',
    )
    assert json.dumps(doc) == '{"field": "orders", "op": "gte", "value": 2}'
    assert normalized({"b": [1.5, {"d": 1, "c": 2}], "a": "x"}) == {
        "a": "x",
        "b": [1.5, {"c": 2, "d": 1}],
    }
    assert parse_rule(doc) == node


def test_sql_and_quotes_in_strings_are_just_strings() -> None:
    hostile = "x'); DROP TABLE profiles; --"
    node = parse_rule({"attribute": "plan", "op": "eq", "value": hostile})
    assert isinstance(node, Compare) and node.value == hostile


def test_segment_references_are_inlined_and_cycles_refused() -> None:
    docs: dict[str, object] = {
        "seg_a": {"all": [{"segment": "vip"}, {"segment": "seg_b"}]},
        "seg_b": {"tag": "newsletter"},
        "loop_1": {"not": {"segment": "loop_2"}},
        "loop_2": {"any": [{"tag": "x"}, {"segment": "loop_1"}]},
    }
    node = parse_rule({"segment": "seg_a"}, resolve=docs.get)
    assert isinstance(node, SegmentRef) and node.segment_id == "seg_a"
    assert isinstance(node.node, AllOf)
    assert referenced_segments(docs["seg_a"]) == {"vip", "seg_b"}
    (found,) = violations({"segment": "loop_1"}, resolve=docs.get)
    assert found[0] == "rule.segment"
    assert "cycle: loop_1 -> loop_2 -> loop_1" in found[1]
    (found,) = violations({"all": [{"tag": "a"}, {"segment": "seg_c"}]}, resolve=docs.get)
    assert found == ("rule.all[1].segment", "unknown segment 'seg_c'")


def test_inlined_limits_are_wider_but_bounded() -> None:
    deep: object = {"tag": "a"}
    for _ in range(9):
        deep = {"not": deep}
    docs = {"deep": deep, "deeper": {"not": {"not": {"segment": "deep"}}}}
    parse_rule({"not": {"segment": "deeper"}}, resolve=docs.get)  # 15 levels inlined
    docs["deepest"] = {"not": {"not": {"not": {"not": {"not": {"not": {"segment": "deeper"}}}}}}}
    (found,) = violations({"segment": "deepest"}, resolve=docs.get)
    assert "deeper than 20" in found[1]
    wide = {"all": [{"any": [{"tag": "a"}] * 49}] * 3}  # 151 nodes each
    docs = {"w1": wide, "w2": wide, "w3": wide, "w4": wide}
    parse_rule({"all": [{"segment": "w1"}, {"segment": "w2"}, {"segment": "w3"}]}, resolve=docs.get)
    (found,) = violations(
        {"all": [{"segment": s} for s in ("w1", "w2", "w3", "w4")]}, resolve=docs.get
    )
    assert "more than 500 nodes" in found[1]


def test_a_referenced_segment_with_a_bad_rule_is_reported_at_the_reference() -> None:
    (found,) = violations({"segment": "bad"}, resolve={"bad": {"tag": "BAD"}}.get)
    assert found[0] == "rule.segment"
    assert "segment 'bad' has an invalid rule: rule.segment.tag" in found[1]


def test_built_ins_are_documents_of_the_language() -> None:
    for segment in BUILT_IN:
        assert parse_rule(normalized(segment.rule)) == segment.node
        ref = parse_rule({"segment": segment.id})
        assert isinstance(ref, SegmentRef) and ref.segment_id == segment.id
        assert type(ref.node) is type(segment.node)


def test_limits_are_the_documented_ones() -> None:
    assert (rules.MAX_DEPTH, rules.MAX_DEPTH_INLINED) == (10, 20)
    assert (rules.MAX_NODES, rules.MAX_NODES_INLINED) == (200, 500)
    assert (rules.MAX_STRING, rules.MAX_LIST, rules.MAX_TEXT_BYTES) == (500, 100, 65536)
