"""The built-in segments of domain.md, written in the rule language.

They are definitions, not code: the same parser, SQL compiler and evaluator run them as
they run a workspace's custom segments, so what a built-in means is readable in
docs/segment-rules.md and a custom segment can reference one (``{"segment": "vip"}``).
Their boundaries (calendar months, 24-hour days, strict or not) are those of domain.md's
table; tests pin them a microsecond either side.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from services.segmentation.domain.rules import Node, parse_rule

if TYPE_CHECKING:
    from services.segmentation.domain.evaluate import Facts


def _orders(op: str, value: object) -> dict[str, Any]:
    return {"field": "orders", "op": op, "value": value}


def _last(op: str, unit: str, n: int) -> dict[str, Any]:
    return {"field": "last_order_at", "op": op, "value": {"ago": {unit: n}}}


ACTIVATION = {
    "all": [
        {"field": "signed_up_at", "op": "gte", "value": {"ago": {"months": 3}}},
        _orders("eq", 0),
    ]
}
REACTIVATION = {"all": [_orders("gte", 1), _last("lt", "months", 3)]}
VIP = {"field": "vip", "op": "eq", "value": True}
NEW_CUSTOMER = {"field": "first_order_at", "op": "gte", "value": {"ago": {"days": 30}}}
PROMISING = {"all": [_orders("between", [2, 3]), _last("gte", "days", 60)]}
LOYAL = {"all": [_orders("gte", 4), _last("gte", "days", 90)]}
PASSIVE = {
    "all": [
        {
            "any": [
                {"all": [_orders("eq", 1), _last("lt", "days", 30)]},
                {"all": [_orders("between", [2, 3]), _last("lt", "days", 60)]},
            ]
        },
        _last("gte", "days", 90),
    ]
}
LOST = {"all": [_orders("between", [1, 3]), _last("lt", "days", 90)]}
PASSIVE_LOYAL = {"all": [_orders("gte", 4), _last("lt", "days", 90), _last("gte", "days", 365)]}
LOST_LOYAL = {"all": [_orders("gte", 4), _last("lt", "days", 365)]}
FIRST_TIME_BUYER = _orders("eq", 1)
REPEAT_BUYER = _orders("gte", 2)


@dataclass(frozen=True)
class BuiltIn:
    id: str  # also its name in the API: built-in segments are named by their id
    name: str
    description: str
    rule: dict[str, Any]  # the document, as a custom segment's is stored
    node: Node

    def contains(self, facts: Facts, as_of: datetime) -> bool:
        from services.segmentation.domain.evaluate import evaluate

        return evaluate(self.node, facts, as_of)


def _builtin(id_: str, name: str, description: str, rule: dict[str, Any]) -> BuiltIn:
    return BuiltIn(id_, name, description, rule, parse_rule(rule))


BUILT_IN: tuple[BuiltIn, ...] = (
    _builtin(
        "activation",
        "Activation",
        "Signed up in the last 3 months and has not ordered yet.",
        ACTIVATION,
    ),
    _builtin(
        "reactivation",
        "Reactivation",
        "Has ordered, but not in the last 3 months.",
        REACTIVATION,
    ),
    _builtin("vip", "VIP", "Starred by the manager.", VIP),
    _builtin("new_customer", "New customer", "First order in the last 30 days.", NEW_CUSTOMER),
    _builtin("promising", "Promising", "2-3 orders, the last one in the last 60 days.", PROMISING),
    _builtin("loyal", "Loyal", "4 or more orders, the last one in the last 90 days.", LOYAL),
    _builtin(
        "passive",
        "Passive",
        "1 order more than 30 days ago, or 2-3 orders with the last more than 60 days ago;"
        " in both cases the last order in the last 90 days.",
        PASSIVE,
    ),
    _builtin("lost", "Lost", "1-3 orders, the last one more than 90 days ago.", LOST),
    _builtin(
        "passive_loyal",
        "Passive loyal",
        "4 or more orders, the last one between 90 and 365 days ago.",
        PASSIVE_LOYAL,
    ),
    _builtin(
        "lost_loyal",
        "Lost loyal",
        "4 or more orders, the last one more than 365 days ago.",
        LOST_LOYAL,
    ),
    _builtin("first_time_buyer", "First-time buyer", "Exactly 1 order.", FIRST_TIME_BUYER),
    _builtin("repeat_buyer", "Repeat buyer", "2 or more orders.", REPEAT_BUYER),
)

BY_ID: dict[str, BuiltIn] = {s.id: s for s in BUILT_IN}
