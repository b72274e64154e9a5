"""The ContactFilter -> SQL builder against real PostgreSQL: each condition selects exactly
the contacts it names, in its own workspace only."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from nudge.contacts.v1 import contacts_pb2

from services.common.errors import Validator
from services.contacts.adapters.filters import validate_filter, where_clause
from tests.integration.conftest import RunningService, Workspace

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GRANTED = contacts_pb2.CONSENT_STATUS_GRANTED
WITHDRAWN = contacts_pb2.CONSENT_STATUS_WITHDRAWN
MARKETING = contacts_pb2.CONSENT_PURPOSE_MARKETING


@pytest.fixture
async def conn(contacts_service: RunningService) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(os.environ["DATABASE_URL"])
    await connection.execute("SET search_path TO contacts")
    try:
        yield connection
    finally:
        await connection.close()


async def add(
    conn: asyncpg.Connection,
    ws: str,
    name: str,
    *,
    first: str = "",
    last: str = "",
    tags: tuple[str, ...] = (),
    vip: bool = False,
    attributes: dict[str, str] | None = None,
    age_days: int = 0,
    consent: int | None = None,
) -> uuid.UUID:
    contact_id = uuid.uuid4()
    at = T0 + timedelta(days=age_days)
    await conn.execute(
        "INSERT INTO contacts (workspace_id, id, email, first_name, last_name, tags, vip,"
        " attributes, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb,"
        " $9, $9)",
        uuid.UUID(ws),
        contact_id,
        f"{name}@example.com",
        first,
        last,
        sorted(tags),
        vip,
        json.dumps(attributes or {}),
        at,
    )
    if consent is not None:
        await conn.execute(
            "INSERT INTO consents (workspace_id, contact_id, purpose, status, updated_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            uuid.UUID(ws),
            contact_id,
            MARKETING,
            consent,
            at,
        )
    return contact_id


async def names(conn: asyncpg.Connection, ws: str, f: contacts_pb2.ContactFilter) -> list[str]:
    v = Validator()
    validate_filter(v, f)
    assert v.violations == []
    sql, params = where_clause(f, uuid.UUID(ws), alias="k", first_param=2)
    rows = await conn.fetch(
        f"SELECT split_part(k.email, '@', 1) AS n FROM contacts AS k WHERE $1::int = 1 AND {sql}"
        " ORDER BY 1",
        1,
        *params,
    )
    return [r["n"] for r in rows]


async def test_each_condition_selects_exactly_its_contacts(
    conn: asyncpg.Connection, workspace: Workspace, contacts_service: RunningService
) -> None:
    from tests.integration.contacts.test_contacts_grpc import _new_workspace

    ws = workspace.id
    other = await _new_workspace(contacts_service)
    await conn.execute(
        "INSERT INTO attribute_definitions (workspace_id, name, type, created_at) VALUES"
        " ($1, 'spent', 2, now()), ($1, 'city', 1, now()), ($1, 'member', 3, now())",
        uuid.UUID(ws),
    )
    ada = await add(
        conn, ws, "ada", first="Ada", last="Lovelace", tags=("a", "b"), vip=True,
        attributes={"spent": "12.50", "city": "Rome"}, consent=GRANTED,
    )  # fmt: skip
    await add(
        conn, ws, "bob", first="Bob", last="Ross", tags=("b",), age_days=10,
        attributes={"spent": "7", "city": "rome", "member": "true"}, consent=WITHDRAWN,
    )  # fmt: skip
    await add(conn, ws, "cy", first="Ada", last="Byron", tags=("c",), age_days=20)
    await add(conn, other.id, "ada-other", first="Ada", tags=("a", "b"), vip=True)
    f = contacts_pb2.ContactFilter

    assert await names(conn, ws, f()) == ["ada", "bob", "cy"]
    assert await names(conn, ws, f(tags_all=["a", "b"])) == ["ada"]
    assert await names(conn, ws, f(tags_any=["a", "c"])) == ["ada", "cy"]
    assert await names(conn, ws, f(tags_none=["b"])) == ["cy"]
    assert await names(conn, ws, f(vip=True)) == ["ada"]
    assert await names(conn, ws, f(vip=False)) == ["bob", "cy"]
    # Numbers compare as numbers, strings exactly, an undeclared attribute matches nobody.
    assert await names(conn, ws, f(attributes={"spent": "12.5"})) == ["ada"]
    assert await names(conn, ws, f(attributes={"spent": "7.000"})) == ["bob"]
    assert await names(conn, ws, f(attributes={"city": "Rome"})) == ["ada"]
    assert await names(conn, ws, f(attributes={"member": "true"})) == ["bob"]
    assert await names(conn, ws, f(attributes={"nope": "x"})) == []
    consent = contacts_pb2.ConsentFilter
    assert await names(conn, ws, f(consent=consent(purpose=MARKETING, state=1))) == ["ada"]
    assert await names(conn, ws, f(consent=consent(purpose=MARKETING, state=2))) == ["bob"]
    assert await names(conn, ws, f(consent=consent(purpose=MARKETING, state=4))) == ["cy"]
    since = f()
    since.created_since.FromDatetime(T0 + timedelta(days=5))
    assert await names(conn, ws, since) == ["bob", "cy"]
    since = f()
    since.updated_since.FromDatetime(T0 + timedelta(days=15))
    assert await names(conn, ws, since) == ["cy"]
    # Prefix of e-mail, first name, last name or "first last", any case; LIKE signs are text.
    assert await names(conn, ws, f(query="ADA")) == ["ada", "cy"]
    assert await names(conn, ws, f(query="ada l")) == ["ada"]
    assert await names(conn, ws, f(query="ross")) == ["bob"]
    assert await names(conn, ws, f(query="bob@")) == ["bob"]
    assert await names(conn, ws, f(query="%")) == []
    assert await names(conn, ws, f(contact_ids=[str(ada), str(uuid.uuid4())])) == ["ada"]
    # Conditions combine with AND.
    assert await names(conn, ws, f(tags_any=["b", "c"], query="ada")) == ["ada", "cy"]
    assert await names(conn, ws, f(tags_any=["b", "c"], vip=False, query="ada")) == ["cy"]


def test_malformed_filters_name_each_bad_field() -> None:
    f = contacts_pb2.ContactFilter(
        tags_all=["Bad Tag"],
        attributes={"Not-A-Name": "x"},
        consent=contacts_pb2.ConsentFilter(purpose=contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL),
        query="a\x00",
        contact_ids=["nope"],
    )
    v = Validator()
    validate_filter(v, f, "filter")
    assert [x.field for x in v.violations] == [
        "filter.tags_all[0]",
        "filter.attributes.Not-A-Name",
        "filter.consent.purpose",
        "filter.consent.state",
        "filter.query",
        "filter.contact_ids[0]",
    ]
    v = Validator()
    validate_filter(v, contacts_pb2.ContactFilter(contact_ids=[str(uuid.uuid4())] * 10_001))
    assert [x.field for x in v.violations] == ["filter.contact_ids"]
