"""The common migrations' ``uuids()``, ``ints()`` and ``bigints()`` read back, in order,
what ``id_array`` wrote (services/common/db.py, migrations/0003_id_lists.sql)."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from services.common.db import id_array


async def test_lists_are_read_back_in_order_with_their_nulls(
    schema: tuple[asyncpg.Pool, str],
) -> None:
    pool, _ = schema
    ids = [str(uuid.uuid4()) for _ in range(1000)]
    rows = await pool.fetch(
        "SELECT n, u::text, i, b FROM unnest(uuids($1), ints($2), bigints($3))"
        " WITH ORDINALITY AS q(u, i, b, n) ORDER BY n",
        id_array([*ids, None]),
        id_array([*range(1000), None]),
        id_array([*(2**40 + k for k in range(1000)), None]),
    )
    assert [(r["u"], r["i"], r["b"]) for r in rows] == [
        *((u, k, 2**40 + k) for k, u in enumerate(ids)),
        (None, None, None),
    ]
    assert await pool.fetchval("SELECT cardinality(uuids($1))", id_array([])) == 0


async def test_a_malformed_id_fails_the_statement(schema: tuple[asyncpg.Pool, str]) -> None:
    pool, _ = schema
    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await pool.fetch("SELECT unnest(uuids($1))", id_array([str(uuid.uuid4()), "nope"]))
