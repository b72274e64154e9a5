"""Issue 12's erasure test, through the whole system: a contact who has mail (a welcome
mail handed to the real SMTP server), a profile (segmentation's read model) and a run
(triggers) is exported, erased through the gateway, and then their address is found nowhere
in PostgreSQL (every text, varchar, jsonb and bytea column of every table of every schema,
case-insensitively) and the export finds nothing left.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

import asyncpg
import httpx

from tests.e2e.conftest import System
from tests.e2e.test_welcome_path import new_workspace, platform_signup
from tests.support import eventually, fetchval, unique

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


def database_url(system: System) -> str:
    return system.env.get("DATABASE_URL") or os.environ["DATABASE_URL"]


async def places_holding(conn: asyncpg.Connection, needle: str) -> list[str]:
    """``schema.table.column`` of every column of every table in every schema that holds
    ``needle``, compared case-insensitively: text-like columns (text, varchar, char, json,
    jsonb, arrays of them) as text, bytea as its bytes read as text (protobuf payloads keep
    strings as UTF-8)."""
    columns = await conn.fetch(
        "SELECT c.table_schema, c.table_name, c.column_name, c.data_type, c.udt_name"
        " FROM information_schema.columns c JOIN information_schema.tables t"
        " ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
        " WHERE t.table_type = 'BASE TABLE' AND c.table_schema NOT IN ($1, $2, $3)"
        " AND (c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb',"
        " 'bytea') OR (c.data_type = 'ARRAY' AND c.udt_name IN"
        " ('_text', '_varchar', '_bpchar', '_json', '_jsonb', '_bytea')))",
        *SYSTEM_SCHEMAS,
    )
    assert len(columns) > 20, "the scan saw almost no columns: is it looking at the right database?"
    found = []
    for col in columns:
        table = f'"{col["table_schema"]}"."{col["table_name"]}"'
        name = f'"{col["column_name"]}"'
        if col["data_type"] == "bytea":
            # 'escape' keeps printable ASCII as is, so an address inside any payload shows.
            as_text = f"encode({name}, 'escape')"
        elif col["udt_name"] == "_bytea":
            as_text = (
                f"array_to_string(ARRAY(SELECT encode(x, 'escape') FROM unnest({name}) x), ' ')"
            )
        else:
            as_text = f"{name}::text"
        hit = await conn.fetchval(
            f"SELECT 1 FROM {table} WHERE strpos(lower({as_text}), lower($1)) > 0 LIMIT 1", needle
        )
        if hit:
            found.append(f"{col['table_schema']}.{col['table_name']}.{col['column_name']}")
    return found


async def export(client: httpx.AsyncClient, contact_id: str) -> dict[str, Any]:
    answer = await client.get(f"/v1/contacts/{contact_id}/export")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["content-disposition"].startswith("attachment;")
    body: dict[str, Any] = answer.json()
    return body


async def test_an_erased_contact_with_mail_a_profile_and_a_run_is_nowhere_in_postgresql(
    system: System,
) -> None:
    workspace_id, api_key = await new_workspace(system)
    welcome_id = str(
        await fetchval(
            database_url(system),
            "SELECT id FROM triggers.workflows WHERE workspace_id = $1::uuid",
            workspace_id,
        )
    )
    # Mixed case: the scan and the erasure must both ignore case.
    email = f"Erase.Me-{secrets.token_hex(6)}@Example.COM"
    contact_id = await platform_signup(system, api_key, email, unique("signup"))
    url = database_url(system)
    conn = await asyncpg.connect(url)
    client = httpx.AsyncClient(
        base_url=system.gateway, headers={"authorization": f"Bearer {api_key}"}, timeout=30
    )
    try:
        # Mail: the welcome letter reached the SMTP server. A run: triggers started it.
        # A profile: segmentation's read model holds the contact with its address.
        await eventually(
            lambda: any(email.lower() in str(m["To"]).lower() for m in system.mails()),
            timeout=90,
        )
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) FROM triggers.runs WHERE contact_id = $1::uuid",
                contact_id,
            ),
            timeout=30,
        )
        await eventually(
            lambda: conn.fetchval(
                "SELECT 1 FROM segmentation.profiles"
                " WHERE contact_id = $1::uuid AND email IS NOT NULL",
                contact_id,
            ),
            timeout=30,
        )
        sent = await eventually(
            lambda: conn.fetchval(
                "SELECT message_id FROM delivery.messages"
                " WHERE contact_id = $1::uuid AND status = 2",
                contact_id,
            ),
            timeout=30,
        )
        before = await places_holding(conn, email)
        assert "contacts.contacts.email" in before
        assert "segmentation.profiles.email" in before

        # The export before: every service answers, and says what it holds.
        document = await export(client, contact_id)
        assert document["complete"] is True, document["incomplete"]
        services = document["services"]
        assert set(services) == {"contacts", "segmentation", "delivery", "triggers", "campaigns"}
        assert services["contacts"]["contact"]["email"].lower() == email.lower()
        assert [m["message_id"] for m in services["delivery"]["messages"]] == [str(sent)]
        assert [r["workflow_id"] for r in services["triggers"]["runs"]] == [welcome_id]
        assert email.lower() in json.dumps(services["segmentation"]).lower()

        erased = await client.post(f"/v1/contacts/{contact_id}/erasure")
        assert erased.status_code == 200, erased.text
        assert erased.json()["contact_id"] == contact_id

        # Every service follows ContactErased: the ledger row is kept for the statistics but
        # no longer names the contact, the run is gone, the profile is gone.
        await eventually(
            lambda: conn.fetchval(
                "SELECT contact_id <> $2::uuid AND detail = 'erased' FROM delivery.messages"
                " WHERE message_id = $1",
                sent,
                contact_id,
            ),
            timeout=60,
        )
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) = 0 FROM triggers.runs WHERE contact_id = $1::uuid",
                contact_id,
            ),
            timeout=60,
        )

        async def nowhere() -> bool:
            assert await places_holding(conn, email) == []
            return True

        await eventually(nowhere, timeout=60, interval=0.5)
        # Counts for statistics survive the erasure.
        assert await conn.fetchval(
            "SELECT count(*) FROM delivery.messages WHERE message_id = $1 AND status = 2", sent
        )

        after = await export(client, contact_id)
        assert after["complete"] is True, after["incomplete"]
        assert email.lower() not in json.dumps(after).lower()
        assert set(after["services"]["contacts"]) == {"erasure"}
        for name in ("segmentation", "delivery", "triggers", "campaigns"):
            assert after["services"][name] == {}, name
        # Erasing again answers the same erasure.
        again = await client.post(f"/v1/contacts/{contact_id}/erasure")
        assert again.status_code == 200
        assert again.json() == erased.json()
        assert workspace_id
    finally:
        await client.aclose()
        await conn.close()
