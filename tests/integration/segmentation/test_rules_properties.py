"""Property-based (Hypothesis): generated rules full of hostile strings (SQL fragments,
quotes, backslashes, LIKE wildcards, unicode), huge numbers and nesting.

(a) The compiled SQL never contains an input value: every string or number leaf of the
    document longer than 3 characters is absent from the SQL text (values are bind
    parameters, names go through a whitelist).
(b) The SQL (real PostgreSQL) and the Python evaluator pick the same contacts out of a
    generated population with the same kind of strings in it, at a fixed evaluation time.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.db import create_pool, migrate
from services.segmentation.adapters import postgres as db
from services.segmentation.adapters.rule_sql import Params, next_transition_sql, predicate_sql
from services.segmentation.bootstrap import MIGRATIONS
from services.segmentation.domain import rules
from services.segmentation.domain.evaluate import (
    ActivityFact,
    Facts,
    OrderFact,
    evaluate,
    next_transition,
)
from services.segmentation.domain.rules import parse_rule
from tests.integration.segmentation.test_rules_boundaries import (
    add_categories,
    sql_members,
    sql_next,
    write,
)

AS_OF = datetime(2026, 5, 31, 12, 0, tzinfo=UTC)

FRAGMENTS = [
    "'; DROP TABLE profiles; --",
    '" OR 1=1 --',
    "x' OR 'x'='x",
    "$1::text",
    "%_\\%",
    "); SELECT pg_sleep(10); --",
    "\\'; DELETE FROM orders WHERE ''='",
    "Robert'); --",
    "ro.placed_at <= now()",
    "E'\\x41'",
    "ÉCLAIR é ß İ ﬃ",
    "日本語のテキスト",
    "emoji 🎉 ok",
    "ABC abc",
    "gold",
]
text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=0,
    max_size=12,
)
hostile = st.one_of(
    st.sampled_from(FRAGMENTS),
    st.builds(lambda a, b: a + b, st.sampled_from(FRAGMENTS), text),
    st.builds(lambda a, b: a + b, text, st.sampled_from(FRAGMENTS)),
)
big_int = st.one_of(
    st.integers(-3, 5),
    st.integers(-(2**53) + 1, 2**53 - 1),
    st.sampled_from([2**53 - 1, -(2**53) + 1]),
)
decimal = st.decimals(
    min_value=Decimal("-1e12"),
    max_value=Decimal("1e12"),
    places=3,
    allow_nan=False,
    allow_infinity=False,
).map(lambda d: float(d))
number = st.one_of(big_int, decimal)
duration = st.one_of(
    st.builds(lambda n: {"days": n}, st.integers(0, 800)),
    st.builds(lambda n: {"months": n}, st.integers(0, 26)),
    st.builds(lambda n: {"hours": n}, st.integers(0, 5000)),
)
instant = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.isoformat().replace("+00:00", "Z"))
time_value = st.one_of(st.builds(lambda d: {"ago": d}, duration), instant)
NUMBER_FIELDS = ["orders", "score", "cart_items"]
MONEY_FIELDS = ["total_spent", "average_order_value", "cart_value"]
TIME_FIELDS = [
    "signed_up_at",
    "created_at",
    "first_order_at",
    "last_order_at",
    "last_visit_at",
    "last_open_at",
    "last_click_at",
    "cart_updated_at",
]
STRING_FIELDS = ["email", "first_name", "last_name"]


def compare(
    op_values: dict[str, st.SearchStrategy[object]],
) -> st.SearchStrategy[dict[str, object]]:
    return st.sampled_from(sorted(op_values)).flatmap(
        lambda op: op_values[op].map(lambda v: {"op": op, "value": v})
    )


def ordered_pair(s: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(s, min_size=2, max_size=2).map(lambda v: sorted(v))  # type: ignore[type-var]


def number_ops() -> st.SearchStrategy[dict[str, object]]:
    return compare(
        {
            **{op: number for op in ("eq", "ne", "lt", "lte", "gt", "gte")},
            "between": ordered_pair(number),
            "in": st.lists(number, min_size=1, max_size=4),
            "not_in": st.lists(number, min_size=1, max_size=4),
        }
    )


def string_ops() -> st.SearchStrategy[dict[str, object]]:
    return compare(
        {
            **{
                op: hostile
                for op in (
                    "eq",
                    "ne",
                    "starts_with",
                    "contains",
                    "ci_eq",
                    "ci_contains",
                    "ci_starts_with",
                )
            },
            "in": st.lists(hostile, min_size=1, max_size=4),
            "not_in": st.lists(hostile, min_size=1, max_size=4),
        }
    )


def ordered_times(pair: tuple[object, object]) -> list[object]:
    """Two instants low to high (a rule with low above high is refused); a relative time
    and an instant in any order."""
    if all(isinstance(v, str) for v in pair):
        return sorted(pair, key=lambda v: datetime.fromisoformat(str(v).replace("Z", "+00:00")))
    return list(pair)


def time_ops() -> st.SearchStrategy[dict[str, object]]:
    return compare(
        {
            **{op: time_value for op in ("lt", "lte", "gt", "gte")},
            "between": st.tuples(time_value, time_value).map(ordered_times),
        }
    )


presence = st.sampled_from([{"op": "exists"}, {"op": "not_exists"}])
money = st.builds(
    lambda f, c, o: {"field": f, "currency": c, **o},
    st.sampled_from(MONEY_FIELDS),
    st.sampled_from(["EUR", "USD"]),
    st.one_of(number_ops(), presence),
)
leaves = st.one_of(
    st.builds(
        lambda f, o: {"field": f, **o},
        st.sampled_from(NUMBER_FIELDS),
        st.one_of(number_ops(), presence),
    ),
    money,
    st.builds(
        lambda f, o: {"field": f, **o},
        st.sampled_from(TIME_FIELDS),
        st.one_of(time_ops(), presence),
    ),
    st.builds(
        lambda f, o: {"field": f, **o},
        st.sampled_from(STRING_FIELDS),
        st.one_of(string_ops(), presence),
    ),
    st.builds(
        lambda f, v: {"field": f, "op": "eq", "value": v},
        st.sampled_from(["vip", "suppressed"]),
        st.booleans(),
    ),
    st.builds(lambda o: {"attribute": "plan", **o}, st.one_of(string_ops(), presence)),
    st.builds(lambda o: {"attribute": "points", **o}, number_ops()),
    st.builds(
        lambda op, d: {"attribute": "renews", "op": op, "value": {"date": d}},
        st.sampled_from(["eq", "ne", "lt", "lte", "gt", "gte"]),
        st.dates().map(lambda d: d.isoformat()).filter(lambda s: len(s) == 10),
    ),
    st.builds(lambda v: {"attribute": "beta", "op": "eq", "value": v}, st.booleans()),
    st.builds(lambda t: {"tag": t}, st.sampled_from(["newsletter", "vip", "a:b-c_1"])),
    st.builds(lambda c: {"consent": c}, st.sampled_from(list(rules.CONSENT_PURPOSES))),
    st.builds(
        lambda kind, where, within, count: {
            "events": kind,
            **({"where": where} if where else {}),
            **({"within": within} if within else {}),
            **({"count": count} if count else {}),
        },
        st.sampled_from(["order", "page_view", "search", "click", "open"]),
        st.just({}),
        st.none() | duration,
        st.none()
        | st.builds(
            lambda op, n: {"op": op, "value": n},
            st.sampled_from(["eq", "ne", "lt", "lte", "gt", "gte"]),
            st.integers(0, 3),
        ),
    ),
    st.builds(
        lambda q: {"events": "search", "where": {"query": q}, "within": {"days": 400}}, hostile
    ),
    st.builds(lambda c: {"events": "page_view", "where": {"category": c}}, hostile),
    st.builds(lambda u: {"events": "click", "where": {"url_prefix": u}}, hostile),
    st.builds(
        lambda c, m, w: {
            "events": "order",
            "where": {"category": c, "min_total_minor": m, "currency": "EUR"},
            "within": w,
        },
        hostile,
        st.integers(0, 5000),
        duration,
    ),
    st.builds(
        lambda s: {"segment": s}, st.sampled_from(["vip", "lost", "promising", "activation"])
    ),
)
rule_docs = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.builds(lambda c: {"all": c}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda c: {"any": c}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda c: {"not": c}, children),
    ),
    max_leaves=6,
)

VOCABULARY = {
    *rules.FIELDS,
    *rules.NODE_KINDS,
    *rules.CONSENT_PURPOSES,
    *rules.EVENT_WHERE,
    *(op for ops in rules.OPS.values() for op in ops),
    "days",
    "hours",
    "months",
    "count",
    "within",
    "where",
    "value",
    "date",
    "ago",
    "currency",
    "lost",
    "promising",
    "activation",
}


def leaf_values(doc: object) -> Iterator[str]:
    """Every string and number of the document that is input, not the language's words."""
    if isinstance(doc, dict):
        for value in doc.values():
            yield from leaf_values(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from leaf_values(value)
    elif isinstance(doc, str) and doc not in VOCABULARY:
        yield doc
    elif isinstance(doc, int | float) and not isinstance(doc, bool):
        yield str(doc)
        if isinstance(doc, float):
            yield repr(Decimal(repr(doc)))


def population() -> list[Facts]:
    """Contacts whose strings are drawn from the same hostile pool as the rules'."""
    rng = random.Random(13)
    pool = [*FRAGMENTS, "", "Gold", "GOLD", "gold ", "12.5", "1e3", "2026-06-01", "true", "false"]

    def moment() -> datetime:
        return AS_OF + timedelta(seconds=rng.randint(-500 * 86400, 40 * 86400))

    people = []
    for i in range(120):
        orders = tuple(
            OrderFact(
                f"o{i}-{k}",
                moment() if rng.random() > 0.05 else None,
                rng.choice(["completed", "completed", "completed", "cancelled", "refunded"]),
                rng.choice([None, 0, 100, 999, 2500, 10**12]),
                rng.choice(["EUR", "EUR", "USD", None]),
                tuple(rng.sample(pool, rng.randint(0, 2))),
            )
            for k in range(rng.choice([0, 0, 1, 2, 3, 5]))
        )
        orders = tuple(o for o in orders if o.placed_at is not None or o.status != "completed")
        activity = tuple(
            ActivityFact(
                rng.choice(["page_viewed", "searched", "message_opened", "link_clicked"]),
                rng.choice(pool),
                moment(),
            )
            for _ in range(rng.randint(0, 4))
        )
        people.append(
            Facts(
                contact_id=str(uuid.uuid4()),
                email=rng.choice([None, *pool]),
                first_name=rng.choice([None, *pool]),
                last_name=rng.choice([None, *pool]),
                vip=rng.random() < 0.2,
                score=rng.choice([0, 7, -3, 2**53 - 1, 10**15]),
                suppressed=rng.random() < 0.1,
                signed_up_at=rng.choice([None, moment()]),
                created_at=moment(),
                tags=tuple(rng.sample(["newsletter", "vip", "a:b-c_1"], rng.randint(0, 2))),
                attributes={
                    k: rng.choice(pool)
                    for k in rng.sample(["plan", "points", "renews", "beta"], rng.randint(0, 4))
                },
                consents={
                    p: {"state": rng.choice(["granted", "withdrawn"])}
                    for p in rng.sample(list(rules.CONSENT_PURPOSES), rng.randint(0, 3))
                },
                last_visit_at=rng.choice([None, moment()]),
                last_open_at=rng.choice([None, moment()]),
                last_click_at=rng.choice([None, moment()]),
                cart=rng.choice(
                    [
                        None,
                        {
                            "cart_id": "c",
                            "total_minor": rng.choice([0, 5000, 10**10]),
                            "currency": rng.choice(["EUR", "USD"]),
                            "items": rng.randint(0, 9),
                            "updated_at": moment().isoformat(),
                        },
                    ]
                ),
                orders=orders,
                activity=activity,
            )
        )
    return people


@pytest.fixture(scope="module")
async def pool(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    await migrate(os.environ["DATABASE_URL"], db.SCHEMA, MIGRATIONS)
    pool = await create_pool(os.environ["DATABASE_URL"], db.SCHEMA)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def world(pool: asyncpg.Pool) -> AsyncIterator[tuple[asyncpg.Pool, str, list[Facts]]]:
    workspace_id = str(uuid.uuid4())
    people = population()
    async with pool.acquire() as conn:
        await add_categories(conn)
        await write(conn, workspace_id, people)
    yield pool, workspace_id, people


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(doc=rule_docs)
async def test_generated_rules_never_put_input_in_sql_and_agree_with_python(
    world: tuple[asyncpg.Pool, str, list[Facts]], doc: object
) -> None:
    pool, workspace_id, people = world
    node = parse_rule(doc)
    params = Params(first=3)
    sql = predicate_sql(node, params, as_of="$2") + next_transition_sql(node, params, as_of="$2")
    for value in leaf_values(doc):
        if len(value) > 3:
            assert value not in sql, value
    async with pool.acquire() as conn:
        found = await sql_members(conn, workspace_id, node, AS_OF)
        expected = {f.contact_id for f in people if evaluate(node, f, AS_OF)}
        assert found == expected, (doc, found ^ expected)
        moments = await sql_next(conn, workspace_id, node, AS_OF)
        wanted = {f.contact_id: next_transition(node, f, AS_OF) for f in people}
        assert moments == wanted, (doc, {c for c in wanted if wanted[c] != moments[c]})
