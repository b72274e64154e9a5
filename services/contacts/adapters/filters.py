"""ContactFilter -> SQL: which contacts of a workspace a filter selects, as one boolean
expression over ``contacts AS <alias>`` with numbered parameters.

One builder for every use (ListContacts, BulkModifyTags, CountEligible), so that "the
contacts this filter matches" means the same everywhere. Every condition given must hold;
an empty filter selects every contact of the workspace (the workspace condition is always
there). Values travel as parameters, never in the SQL text.

Consent states read ``consents`` (the current state per purpose): NEVER_ASKED is the
absence of a row. Attribute values compare by the type the workspace declared for the
attribute (``attribute_definitions``): numbers as numbers (``12.50`` = ``12.5``), the others
as their text; an undeclared attribute matches nobody.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC
from typing import Any

import asyncpg
from nudge.contacts.v1 import contacts_pb2

from services.common.contact_limits import MAX_ATTRIBUTE_VALUE, MAX_TAGS, TAG
from services.common.errors import Validator
from services.contacts.domain import attributes as attribute_rules

MAX_CONTACT_IDS = 10_000
MAX_QUERY = 254
CONSENT_PURPOSES = (
    contacts_pb2.CONSENT_PURPOSE_MARKETING,
    contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES,
    contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
)
# ConsentState -> the status number a ``consents`` row holds (NEVER_ASKED: no row).
_STATE_STATUS = {
    contacts_pb2.CONSENT_STATE_GRANTED: contacts_pb2.CONSENT_STATUS_GRANTED,
    contacts_pb2.CONSENT_STATE_WITHDRAWN: contacts_pb2.CONSENT_STATUS_WITHDRAWN,
    contacts_pb2.CONSENT_STATE_PENDING: contacts_pb2.CONSENT_STATUS_PENDING,
}


def validate_filter(v: Validator, f: contacts_pb2.ContactFilter, field: str = "filter") -> None:
    """Every violation of the filter's shape, named ``<field>.<its field>``. Whether its
    attributes are declared, and their values of the declared type, needs the workspace's
    definitions: :func:`check_attribute_types`."""
    for name in ("tags_all", "tags_any", "tags_none"):
        tags = getattr(f, name)
        v.check(len(tags) <= MAX_TAGS, f"{field}.{name}", f"more than {MAX_TAGS} tags")
        for i, tag in enumerate(tags[:MAX_TAGS]):
            v.check(
                TAG.match(tag) is not None, f"{field}.{name}[{i}]", "lower-case [a-z0-9_:-], 1-64"
            )
    v.check(len(f.attributes) <= 50, f"{field}.attributes", "more than 50 conditions")
    for name, value in sorted(f.attributes.items()):
        path = f"{field}.attributes.{name[:64]}"
        v.check(
            attribute_rules.NAME.match(name) is not None,
            path,
            "not an attribute name: [a-z][a-z0-9_]{0,63}",
        )
        v.check(
            len(value) <= MAX_ATTRIBUTE_VALUE and "\x00" not in value,
            path,
            f"value longer than {MAX_ATTRIBUTE_VALUE} or with NUL",
        )
    if f.HasField("consent"):
        v.check(
            f.consent.purpose in CONSENT_PURPOSES,
            f"{field}.consent.purpose",
            "must be MARKETING, TARGETED_MESSAGES or AUTOMATIONS",
        )
        v.check(
            f.consent.state in (*_STATE_STATUS, contacts_pb2.CONSENT_STATE_NEVER_ASKED),
            f"{field}.consent.state",
            "is required: GRANTED, WITHDRAWN, PENDING or NEVER_ASKED",
        )
    if f.HasField("created_since"):
        v.timestamp(f.created_since, f"{field}.created_since")
    if f.HasField("updated_since"):
        v.timestamp(f.updated_since, f"{field}.updated_since")
    v.check(len(f.query) <= MAX_QUERY, f"{field}.query", f"longer than {MAX_QUERY} characters")
    v.check("\x00" not in f.query, f"{field}.query", "contains a NUL character")
    count = len(f.contact_ids)
    v.check(
        count <= MAX_CONTACT_IDS, f"{field}.contact_ids", f"{count} ids: at most {MAX_CONTACT_IDS}"
    )
    if count <= MAX_CONTACT_IDS:
        for i, contact_id in enumerate(f.contact_ids):
            v.check(_is_uuid(contact_id), f"{field}.contact_ids[{i}]", "not a contact id")


async def check_attribute_types(
    conn: asyncpg.Connection,
    v: Validator,
    f: contacts_pb2.ContactFilter,
    workspace_id: uuid.UUID | str,
    field: str = "filter",
) -> None:
    """Each attribute the filter names must be declared in the workspace, and its value of
    the declared type (``filter.attributes.<name>``)."""
    if not f.attributes:
        return
    rows = await conn.fetch(
        "SELECT name, type FROM attribute_definitions WHERE workspace_id = $1 AND name = ANY($2)",
        uuid.UUID(str(workspace_id)),
        list(f.attributes),
    )
    attribute_rules.check_values(
        v, dict(f.attributes), {r["name"]: r["type"] for r in rows}, f"{field}.attributes"
    )


def where_clause(
    f: contacts_pb2.ContactFilter,
    workspace_id: uuid.UUID,
    *,
    alias: str = "c",
    first_param: int = 1,
) -> tuple[str, list[Any]]:
    """The SQL condition selecting the contacts of ``workspace_id`` that ``f`` matches, over
    ``contacts AS <alias>``, and its parameters (numbered from ``$<first_param>``). ``f``
    must have passed :func:`validate_filter`."""
    if not alias.isidentifier():
        raise ValueError(f"not an SQL alias: {alias!r}")
    c = alias
    params: list[Any] = []

    def p(value: Any) -> str:
        params.append(value)
        return f"${first_param + len(params) - 1}"

    conditions = [f"{c}.workspace_id = {p(uuid.UUID(str(workspace_id)))}::uuid"]
    if f.tags_all:
        conditions.append(f"{c}.tags @> {p(sorted(set(f.tags_all)))}::text[]")
    if f.tags_any:
        conditions.append(f"{c}.tags && {p(sorted(set(f.tags_any)))}::text[]")
    if f.tags_none:
        conditions.append(f"NOT ({c}.tags && {p(sorted(set(f.tags_none)))}::text[])")
    if f.HasField("vip"):
        conditions.append(f"{c}.vip = {p(f.vip)}::boolean")
    for name, value in sorted(f.attributes.items()):
        k = p(name)
        raw = p(value)
        number = attribute_rules.parse_number(value)
        num = p(number)
        conditions.append(
            "EXISTS (SELECT 1 FROM attribute_definitions ad"
            f" WHERE ad.workspace_id = {c}.workspace_id AND ad.name = {k}::text AND"
            f" CASE WHEN ad.type = {int(attribute_rules.AttributeType.NUMBER)} THEN"
            f" CASE WHEN {num}::numeric IS NOT NULL"
            f" AND pg_input_is_valid({c}.attributes ->> {k}::text, 'numeric')"
            f" THEN ({c}.attributes ->> {k}::text)::numeric = {num}::numeric ELSE false END"
            f" ELSE {c}.attributes ->> {k}::text = {raw}::text END)"
        )
    if f.HasField("consent"):
        purpose = p(int(f.consent.purpose))
        if f.consent.state == contacts_pb2.CONSENT_STATE_NEVER_ASKED:
            conditions.append(
                "NOT EXISTS (SELECT 1 FROM consents cs WHERE cs.workspace_id ="
                f" {c}.workspace_id AND cs.contact_id = {c}.id"
                f" AND cs.purpose = {purpose}::smallint)"
            )
        else:
            status = p(int(_STATE_STATUS[f.consent.state]))
            conditions.append(
                "EXISTS (SELECT 1 FROM consents cs WHERE cs.workspace_id = "
                f"{c}.workspace_id AND cs.contact_id = {c}.id AND cs.purpose = {purpose}::smallint"
                f" AND cs.status = {status}::smallint)"
            )
    if f.HasField("created_since"):
        conditions.append(f"{c}.created_at >= {p(f.created_since.ToDatetime(tzinfo=UTC))}")
    if f.HasField("updated_since"):
        conditions.append(f"{c}.updated_at >= {p(f.updated_since.ToDatetime(tzinfo=UTC))}")
    query = " ".join(f.query.split()).lower()
    if query:
        q = p(query)
        conditions.append(
            f"(starts_with(lower({c}.email), {q}::text)"
            f" OR starts_with(lower({c}.first_name), {q}::text)"
            f" OR starts_with(lower({c}.last_name), {q}::text)"
            f" OR starts_with(lower({c}.first_name || ' ' || {c}.last_name), {q}::text))"
        )
    if f.contact_ids:
        ids = sorted({uuid.UUID(i) for i in f.contact_ids})
        conditions.append(f"{c}.id = ANY({p(ids)}::uuid[])")
    return " AND ".join(conditions), params


def fingerprint(f: contacts_pb2.ContactFilter, workspace_id: uuid.UUID | str) -> str:
    """A short digest of a filter in a workspace: a page token carries it, so a token is
    refused with another filter (its position would mean nothing there)."""
    digest = hashlib.sha256(str(workspace_id).encode())
    digest.update(f.SerializeToString(deterministic=True))
    return digest.hexdigest()[:16]


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
