"""Counting a segment: its rule compiled (:mod:`services.segmentation.adapters.rule_sql`)
into one query over the workspace's profiles. Built-ins and custom segments alike."""

from __future__ import annotations

from services.segmentation.adapters.rule_sql import Params, predicate_sql
from services.segmentation.domain.rules import Node

# A rule that does not read the time (vip) leaves $2 unused, and PostgreSQL cannot type an
# unused parameter: this names its type (and is folded away by the planner).
_TYPED = " AND $2::timestamptz IS NOT NULL"


def count_query(node: Node) -> tuple[str, list[object]]:
    """SELECT of one row, the number of the workspace's contacts the rule picks.
    Parameters: $1 the workspace id, $2 the evaluation time, then the rule's values."""
    params = Params(first=3)
    predicate = predicate_sql(node, params, as_of="$2::timestamptz", alias="p")
    return (
        f"SELECT count(*) FROM profiles p WHERE p.workspace_id = $1{_TYPED} AND {predicate}",
        params.values,
    )


def members_query(node: Node) -> tuple[str, list[object]]:
    """SELECT of the contact ids the rule picks ($1 workspace, $2 evaluation time)."""
    params = Params(first=3)
    predicate = predicate_sql(node, params, as_of="$2::timestamptz", alias="p")
    return (
        f"SELECT p.contact_id FROM profiles p WHERE p.workspace_id = $1{_TYPED} AND {predicate}",
        params.values,
    )
