"""TEMPORARY stand-in for engineer RULES' interface (rules / builtins / rule_sql) until
branch issue13-rules lands; removed at the merge. Two built-ins only: vip and lost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Node = Any


class RuleError(Exception):
    def __init__(self, violations: list[tuple[str, str]]) -> None:
        super().__init__(violations)
        self.violations = violations


class Params:
    def __init__(self, first: int = 1) -> None:
        self.first = first
        self.values: list[object] = []

    def add(self, value: object, type_: str) -> str:
        self.values.append(value)
        return f"${self.first + len(self.values) - 1}::{type_}"


def parse_rule(
    doc: object, *, resolve: Callable[[str], object | None] | None = None, path: str = "rule"
) -> Node:
    return doc


def referenced_segments(doc: object) -> set[str]:
    return set()


def predicate_sql(node: Node, params: Params, *, as_of: str, alias: str = "p") -> str:
    if node == {"field": "vip", "op": "eq", "value": True}:
        return f"({alias}.vip = {params.add(True, 'boolean')})"
    if node == "lost":
        return (
            f"({alias}.orders_count BETWEEN 1 AND 3 AND "
            f"{alias}.last_order_at < {as_of} - interval '90 days')"
        )
    if isinstance(node, dict) and "tag" in node:
        return f"({params.add(node['tag'], 'text')} = ANY({alias}.tags))"
    raise NotImplementedError(node)


def next_transition_sql(node: Node, params: Params, *, as_of: str, alias: str = "p") -> str:
    if node == "lost":
        return (
            f"(CASE WHEN {alias}.last_order_at + interval '90 days' >= {as_of}"
            f" THEN {alias}.last_order_at + interval '90 days 0.000001 seconds' END)"
        )
    return "NULL::timestamptz"


@dataclass(frozen=True)
class BuiltIn:
    id: str
    node: Node


BUILT_IN = (BuiltIn("vip", {"field": "vip", "op": "eq", "value": True}), BuiltIn("lost", "lost"))
