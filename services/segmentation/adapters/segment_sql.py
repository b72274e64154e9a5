"""The built-in segment rules, each written once as a SQL predicate.

Each predicate reads one row of ``facts`` (see :data:`FACTS`): a contact's order aggregates
and profile as known at the evaluation time ``now``. Every time in ``facts`` is a UTC
``timestamp without time zone``, so ``interval '3 months'`` is a calendar-month step on UTC
wall time and ``interval '30 days'`` is exactly 30 x 24 hours, whatever the session's
``TimeZone`` (with ``timestamptz`` PostgreSQL would step days and months in that zone).

The pure Python twins of these rules are in :mod:`services.segmentation.domain.segments`;
a test requires both to agree on edge-case contacts. The predicates are constants, never
built from input, so composing them into the query text is safe.
"""

from __future__ import annotations

PREDICATES: dict[str, str] = {
    "activation": "signed_up_at >= now - interval '3 months' AND orders = 0",
    "reactivation": "orders >= 1 AND last_order_at < now - interval '3 months'",
    "vip": "vip",
    "new_customer": "first_order_at >= now - interval '30 days'",
    "promising": "orders BETWEEN 2 AND 3 AND last_order_at >= now - interval '60 days'",
    "loyal": "orders >= 4 AND last_order_at >= now - interval '90 days'",
    "passive": (
        "((orders = 1 AND last_order_at < now - interval '30 days')"
        " OR (orders BETWEEN 2 AND 3 AND last_order_at < now - interval '60 days'))"
        " AND last_order_at >= now - interval '90 days'"
    ),
    "lost": "orders BETWEEN 1 AND 3 AND last_order_at < now - interval '90 days'",
    "passive_loyal": (
        "orders >= 4 AND last_order_at < now - interval '90 days'"
        " AND last_order_at >= now - interval '365 days'"
    ),
    "lost_loyal": "orders >= 4 AND last_order_at < now - interval '365 days'",
    "first_time_buyer": "orders = 1",
    "repeat_buyer": "orders >= 2",
}

# $1: workspace id, $2: evaluation time (timestamptz). Today's rows, less what happened after
# $2: completed orders placed at or before it, and a signup that is not after it.
FACTS = """
WITH completed AS (
    SELECT contact_id,
           count(*)::int AS orders,
           min(placed_at) AS first_order_at,
           max(placed_at) AS last_order_at
    FROM orders
    WHERE workspace_id = $1 AND status = 'completed' AND placed_at <= $2
    GROUP BY contact_id
), facts AS (
    SELECT p.contact_id,
           p.vip,
           (CASE WHEN p.signed_up_at <= $2 THEN p.signed_up_at END) AT TIME ZONE 'UTC'
               AS signed_up_at,
           coalesce(c.orders, 0) AS orders,
           c.first_order_at AT TIME ZONE 'UTC' AS first_order_at,
           c.last_order_at AT TIME ZONE 'UTC' AS last_order_at,
           $2::timestamptz AT TIME ZONE 'UTC' AS now
    FROM profiles p
    LEFT JOIN completed c USING (contact_id)
    WHERE p.workspace_id = $1
)
"""


def count_query(segment_id: str) -> str:
    """SELECT of one row, the number of the workspace's contacts in the segment."""
    return f"{FACTS} SELECT count(*) FROM facts WHERE {PREDICATES[segment_id]}"
