"""The imports' tables and the set-based upsert of a batch, in PostgreSQL.

A batch is one transaction: lock the import's row (two calls with the same key take turns,
and the second skips what the first applied), COPY the rows into a temporary staging table,
refuse the rows whose other identity belongs to another contact, update the matched
contacts that change (version + 1) and insert the new ones (version 1) in one statement
each, apply the consent columns that change something (version + 1 each), write every
event into the outbox with one COPY, store the rejected rows, and move the import's line.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.contacts.v1 import contacts_pb2, events_pb2, imports_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from services.common.topics import CONTACTS_EVENTS
from services.common.tracing import current_traceparent
from services.contacts.imports.parsing import Rejected
from services.contacts.imports.rows import Plan, Row

MAX_STORED_ERRORS = 100_000

_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS import_stage (
    line bigint PRIMARY KEY, email text NOT NULL, external_id text, first_name text,
    last_name text, locale text, time_zone text, birthday_year smallint,
    birthday_month smallint, birthday_day smallint, signed_up_at timestamptz,
    attributes jsonb NOT NULL, vip boolean, tags text[] NOT NULL, score bigint,
    consents smallint[] NOT NULL
) ON COMMIT DELETE ROWS
"""
_STAGE_COLUMNS = (
    "line", "email", "external_id", "first_name", "last_name", "locale", "time_zone",
    "birthday_year", "birthday_month", "birthday_day", "signed_up_at", "attributes", "vip",
    "tags", "score", "consents",
)  # fmt: skip

# How a staged row finds its contact, per ImportMatch.
_MATCH: dict[int, str] = {
    imports_pb2.IMPORT_MATCH_EMAIL: "lower(o.email) = lower(s.email)",
    imports_pb2.IMPORT_MATCH_EXTERNAL_ID: "o.external_id = s.external_id",
}
# A row whose other identity is another contact's is refused, not merged into it.
_CONFLICT: dict[int, tuple[str, str, str]] = {
    imports_pb2.IMPORT_MATCH_EMAIL: (
        "s.external_id IS NOT NULL AND o.external_id = s.external_id"
        " AND lower(o.email) <> lower(s.email)",
        "external_id",
        "belongs to another contact (with another e-mail)",
    ),
    imports_pb2.IMPORT_MATCH_EXTERNAL_ID: (
        "lower(o.email) = lower(s.email) AND o.external_id IS DISTINCT FROM s.external_id",
        "email",
        "belongs to another contact (with another external_id)",
    ),
}

_CHANGED = """array_remove(ARRAY[
    CASE WHEN s.email <> o.email AND {email_updates} THEN 'email' END,
    CASE WHEN s.external_id IS NOT NULL AND s.external_id IS DISTINCT FROM o.external_id
         THEN 'external_id' END,
    CASE WHEN s.first_name IS NOT NULL AND s.first_name <> o.first_name THEN 'first_name' END,
    CASE WHEN s.last_name IS NOT NULL AND s.last_name <> o.last_name THEN 'last_name' END,
    CASE WHEN s.locale IS NOT NULL AND s.locale <> o.locale THEN 'locale' END,
    CASE WHEN s.time_zone IS NOT NULL AND s.time_zone <> o.time_zone THEN 'time_zone' END,
    CASE WHEN s.birthday_month IS NOT NULL AND (s.birthday_year, s.birthday_month,
         s.birthday_day) IS DISTINCT FROM (o.birthday_year, o.birthday_month, o.birthday_day)
         THEN 'birthday' END,
    CASE WHEN s.signed_up_at IS NOT NULL AND s.signed_up_at IS DISTINCT FROM o.signed_up_at
         THEN 'signed_up_at' END,
    CASE WHEN s.vip IS NOT NULL AND s.vip <> o.vip THEN 'vip' END,
    CASE WHEN s.score IS NOT NULL AND s.score <> o.score THEN 'score' END,
    CASE WHEN NOT o.tags @> s.tags THEN 'tags' END,
    CASE WHEN NOT o.attributes @> s.attributes THEN 'attributes' END
], NULL)"""

_RETURNING = (
    "c.id, c.workspace_id, c.email, c.external_id, c.first_name, c.last_name, c.locale,"
    " c.time_zone, c.birthday_year, c.birthday_month, c.birthday_day, c.signed_up_at,"
    " c.attributes, c.vip, c.tags, c.score, c.created_at, c.updated_at, c.version"
)


def _update_sql(match: int) -> str:
    email_updates = "true" if match == imports_pb2.IMPORT_MATCH_EXTERNAL_ID else "false"
    return f"""
WITH matched AS (
    SELECT s.line, o.id, {_CHANGED.format(email_updates=email_updates)} AS changed
    FROM import_stage s JOIN contacts o ON o.workspace_id = $1 AND {_MATCH[match]}
)
UPDATE contacts c SET
    email = CASE WHEN {email_updates} THEN s.email ELSE c.email END,
    external_id = COALESCE(s.external_id, c.external_id),
    first_name = COALESCE(s.first_name, c.first_name),
    last_name = COALESCE(s.last_name, c.last_name),
    locale = COALESCE(s.locale, c.locale),
    time_zone = COALESCE(s.time_zone, c.time_zone),
    birthday_year = CASE WHEN s.birthday_month IS NULL THEN c.birthday_year
                         ELSE s.birthday_year END,
    birthday_month = COALESCE(s.birthday_month, c.birthday_month),
    birthday_day = COALESCE(s.birthday_day, c.birthday_day),
    signed_up_at = COALESCE(s.signed_up_at, c.signed_up_at),
    vip = COALESCE(s.vip, c.vip),
    score = COALESCE(s.score, c.score),
    tags = c.tags || ARRAY(SELECT t FROM unnest(s.tags) t WHERE t <> ALL(c.tags)),
    attributes = c.attributes || s.attributes,
    version = c.version + 1,
    updated_at = $2
FROM matched m JOIN import_stage s ON s.line = m.line
WHERE c.workspace_id = $1 AND c.id = m.id AND cardinality(m.changed) > 0
RETURNING {_RETURNING}, m.changed
"""


def _insert_sql(match: int) -> str:
    return f"""
INSERT INTO contacts AS c (id, workspace_id, email, external_id, first_name, last_name, locale,
    time_zone, birthday_year, birthday_month, birthday_day, signed_up_at, attributes, vip,
    tags, score, version, created_at, updated_at)
SELECT gen_random_uuid(), $1, s.email, s.external_id, COALESCE(s.first_name, ''),
    COALESCE(s.last_name, ''), COALESCE(s.locale, ''), COALESCE(s.time_zone, ''),
    s.birthday_year, s.birthday_month, s.birthday_day, s.signed_up_at, s.attributes,
    COALESCE(s.vip, false), s.tags, COALESCE(s.score, 0),
    1 + cardinality(array_remove(s.consents, 0::smallint)), $2, $2
FROM import_stage s
WHERE NOT EXISTS (SELECT 1 FROM contacts o WHERE o.workspace_id = $1 AND {_MATCH[match]})
ORDER BY s.line
ON CONFLICT DO NOTHING
RETURNING {_RETURNING}
"""


def _consent_sql(match: int) -> str:
    return f"""
SELECT o.id, k.ord::int - 1 AS k, k.status
FROM import_stage s
JOIN contacts o ON o.workspace_id = $1 AND {_MATCH[match]}
CROSS JOIN LATERAL unnest(s.consents) WITH ORDINALITY AS k(status, ord)
LEFT JOIN consents cur ON cur.workspace_id = $1 AND cur.contact_id = o.id
    AND cur.purpose = ($2::smallint[])[k.ord]
WHERE k.status <> 0 AND cur.status IS DISTINCT FROM k.status
ORDER BY s.line, k.ord
"""


@dataclass(frozen=True)
class Progress:
    import_id: uuid.UUID
    committed_line: int
    resumed: bool


@dataclass
class BatchResult:
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0


async def begin(
    pool: asyncpg.Pool, workspace_id: str, plan: Plan, key: str, now: datetime
) -> Progress:
    """The import of ``key`` (new, or the one sent before with the same options), running."""
    ws = uuid.UUID(workspace_id)
    async with pool.acquire() as conn, conn.transaction():
        new_id = await conn.fetchval(
            "INSERT INTO imports (workspace_id, id, import_key, options_hash, file_name, state,"
            " started_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (workspace_id, import_key) DO NOTHING RETURNING id",
            ws,
            uuid.uuid4(),
            key,
            plan.options_hash,
            plan.file_name,
            imports_pb2.IMPORT_STATE_RUNNING,
            now,
        )
        if new_id is not None:
            return Progress(new_id, 0, resumed=False)
        row = await conn.fetchrow(
            "SELECT id, options_hash, committed_line FROM imports"
            " WHERE workspace_id = $1 AND import_key = $2 FOR UPDATE",
            ws,
            key,
        )
        assert row is not None
        if bytes(row["options_hash"]) != plan.options_hash:
            raise FailedPrecondition(
                f"import_key {key!r} was used for an import with other options:"
                " send them unchanged to resume it, or use a new key"
            )
        await conn.execute(
            "UPDATE imports SET state = $3, finished_at = NULL WHERE workspace_id = $1 AND id = $2",
            ws,
            row["id"],
            imports_pb2.IMPORT_STATE_RUNNING,
        )
        return Progress(row["id"], row["committed_line"], resumed=True)


async def apply_batch(
    pool: asyncpg.Pool,
    workspace_id: str,
    import_id: uuid.UUID,
    plan: Plan,
    rows: Sequence[Row],
    rejected: Sequence[Rejected],
    end_line: int,
    now: datetime,
) -> BatchResult:
    """Apply the rows of one batch (lines up to ``end_line``) and record the rejected ones,
    unless an earlier call with the same key applied them already."""
    ws = uuid.UUID(workspace_id)
    async with pool.acquire() as conn, conn.transaction():
        state = await conn.fetchrow(
            "SELECT committed_line, errors_stored FROM imports"
            " WHERE workspace_id = $1 AND id = $2 FOR UPDATE",
            ws,
            import_id,
        )
        assert state is not None
        done = state["committed_line"]
        if end_line <= done:
            return BatchResult()
        rows = [r for r in rows if r.line > done]
        rejected = [r for r in rejected if r.line > done]
        errors = list(rejected)
        result = BatchResult(rows=len(rows) + len({r.line for r in rejected}))
        events: list[tuple[str, bytes]] = []
        if rows:
            await conn.execute(_STAGE)
            await conn.copy_records_to_table(
                "import_stage", records=[r.record() for r in rows], columns=_STAGE_COLUMNS
            )
            sql, field, reason = _CONFLICT[plan.match]
            for line in await conn.fetch(
                f"DELETE FROM import_stage s USING contacts o WHERE o.workspace_id = $1 AND {sql}"
                " RETURNING s.line",
                ws,
            ):
                errors.append(Rejected(line["line"], field, reason))
                result.rows += 0
            conflicts = len(errors) - len(rejected)
            updated = await conn.fetch(_update_sql(plan.match), ws, now)
            stamp = Timestamp()
            stamp.FromDatetime(now)
            for row in updated:
                contact = _contact(row, stamp, now)
                payload = events_pb2.ContactUpdated(contact=contact, changed_fields=row["changed"])
                events.append((contact.id, _envelope(workspace_id, payload, stamp)))
            inserted = await conn.fetch(_insert_sql(plan.match), ws, now)
            for row in inserted:
                contact = _contact(row, stamp, now)
                contact.version = 1  # the row's may be higher already: its consent events
                payload_c = events_pb2.ContactCreated(contact=contact)
                events.append((contact.id, _envelope(workspace_id, payload_c, stamp)))
            result.created = len(inserted)
            result.updated = len(updated)
            result.unchanged = len(rows) - conflicts - len(inserted) - len(updated)
            if plan.consents:
                created = {row["id"] for row in inserted}
                events.extend(await _apply_consents(conn, workspace_id, plan, now, created))
        result.rejected = len({r.line for r in errors})
        if events:
            headers = json.dumps(current_traceparent())
            await conn.copy_records_to_table(
                "outbox",
                records=[(CONTACTS_EVENTS, key.encode(), value, headers) for key, value in events],
                columns=("topic", "key", "value", "headers"),
            )
        room = max(0, MAX_STORED_ERRORS - state["errors_stored"])
        stored = _numbered(errors)[:room]
        if stored:
            await conn.copy_records_to_table(
                "import_errors",
                records=[(ws, import_id, *e) for e in stored],
                columns=("workspace_id", "import_id", "line", "seq", "field", "reason"),
            )
        await conn.execute(
            "UPDATE imports SET committed_line = $3, rows = rows + $4, created = created + $5,"
            " updated = updated + $6, unchanged = unchanged + $7, rejected = rejected + $8,"
            " errors_stored = errors_stored + $9 WHERE workspace_id = $1 AND id = $2",
            ws,
            import_id,
            end_line,
            result.rows,
            result.created,
            result.updated,
            result.unchanged,
            result.rejected,
            len(stored),
        )
        return result


def _numbered(errors: list[Rejected]) -> list[tuple[int, int, str, str]]:
    seq: dict[int, int] = defaultdict(int)
    out = []
    for e in sorted(errors, key=lambda e: e.line):
        out.append((e.line, seq[e.line], e.field, e.reason[:500]))
        seq[e.line] += 1
    return out


_ENVELOPE_FIELD = {
    events_pb2.ContactCreated.DESCRIPTOR.full_name: "contact_created",
    events_pb2.ContactUpdated.DESCRIPTOR.full_name: "contact_updated",
    events_pb2.ConsentChanged.DESCRIPTOR.full_name: "consent_changed",
}


def _envelope(
    workspace_id: str,
    payload: events_pb2.ContactCreated | events_pb2.ContactUpdated | events_pb2.ConsentChanged,
    at: Timestamp,
    event_id: str | None = None,
) -> bytes:
    """The envelope's bytes; what :func:`new_envelope` builds, without converting the same
    time once per row (a tenth of a batch's CPU)."""
    name = payload.DESCRIPTOR.full_name
    env = Envelope(event_id=event_id or str(uuid.uuid4()), workspace_id=workspace_id, type=name)
    env.occurred_at.CopyFrom(at)
    getattr(env, _ENVELOPE_FIELD[name]).CopyFrom(payload)
    return env.SerializeToString()


def _contact(row: asyncpg.Record, stamp: Timestamp, now: datetime) -> contacts_pb2.Contact:
    """The contact as the upsert returned it, with its version; ``stamp`` is ``now``."""
    c = contacts_pb2.Contact(
        id=str(row["id"]),
        workspace_id=str(row["workspace_id"]),
        email=row["email"],
        external_id=row["external_id"] or "",
        first_name=row["first_name"],
        last_name=row["last_name"],
        locale=row["locale"],
        time_zone=row["time_zone"],
        attributes=json.loads(row["attributes"]),
        vip=row["vip"],
        tags=row["tags"],
        score=row["score"],
        version=row["version"],
    )
    if row["birthday_month"]:
        c.birthday.year = row["birthday_year"] or 0
        c.birthday.month = row["birthday_month"]
        c.birthday.day = row["birthday_day"]
    if row["signed_up_at"]:
        c.signed_up_at.FromDatetime(row["signed_up_at"])
    if row["created_at"] == now:
        c.created_at.CopyFrom(stamp)
    else:
        c.created_at.FromDatetime(row["created_at"])
    c.updated_at.CopyFrom(stamp)  # every row returned was written now
    return c


async def _apply_consents(
    conn: asyncpg.Connection,
    workspace_id: str,
    plan: Plan,
    now: datetime,
    created: set[uuid.UUID],
) -> list[tuple[str, bytes]]:
    """Each consent cell that changes the contact's state: history, current state, one
    version and one ConsentChanged each. A cell equal to the current state is a no-op.

    The contacts ``created`` by this batch were inserted with their consent versions
    already counted (version 1 + one per consent given, see :func:`_insert_sql`) and have
    no consent yet: they are neither written a second time (a second UPDATE of every new
    contact was a third of a batch's database time) nor upserted (a plain COPY)."""
    ws = uuid.UUID(workspace_id)
    changes = await conn.fetch(_consent_sql(plan.match), ws, [c.purpose for c in plan.consents])
    if not changes:
        return []
    per_contact: dict[uuid.UUID, int] = defaultdict(int)
    for change in changes:
        if change["id"] not in created:
            per_contact[change["id"]] += 1
    version = dict.fromkeys(created, 1)
    if per_contact:
        bumped = await conn.fetch(
            "UPDATE contacts c SET version = c.version + x.n, updated_at = $2"
            " FROM unnest($3::uuid[], $4::int[]) AS x(id, n)"
            " WHERE c.workspace_id = $1 AND c.id = x.id RETURNING c.id, c.version - x.n AS base",
            ws,
            now,
            list(per_contact),
            list(per_contact.values()),
        )
        version.update((r["id"], r["base"]) for r in bumped)
    history = []
    events = []
    stamp = Timestamp()
    stamp.FromDatetime(now)
    for change in changes:
        contact_id = change["id"]
        version[contact_id] += 1
        column = plan.consents[change["k"]]
        event_id = uuid.uuid4()
        history.append(
            (event_id, ws, contact_id, column.purpose, change["status"], column.source,
             column.wording, "import", now)
        )  # fmt: skip
        payload = events_pb2.ConsentChanged(
            contact_id=str(contact_id),
            purpose=column.purpose,
            status=change["status"],
            source=column.source,
            wording=column.wording,
            actor="import",
            version=version[contact_id],
        )
        events.append(
            (str(contact_id), _envelope(workspace_id, payload, stamp, event_id=str(event_id)))
        )
    await conn.copy_records_to_table(
        "consent_events",
        records=history,
        columns=("id", "workspace_id", "contact_id", "purpose", "status", "source", "wording",
                 "actor", "recorded_at"),
    )  # fmt: skip
    fresh = [(ws, h[2], h[3], h[4], now) for h in history if h[2] in created]
    if fresh:
        await conn.copy_records_to_table(
            "consents",
            records=fresh,
            columns=("workspace_id", "contact_id", "purpose", "status", "updated_at"),
        )
    known = [h for h in history if h[2] not in created]
    if known:
        await conn.execute(
            "INSERT INTO consents (workspace_id, contact_id, purpose, status, updated_at)"
            " SELECT $1, x.id, x.purpose, x.status, $2"
            " FROM unnest($3::uuid[], $4::smallint[], $5::smallint[]) AS x(id, purpose, status)"
            " ON CONFLICT (workspace_id, contact_id, purpose)"
            " DO UPDATE SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at",
            ws,
            now,
            [h[2] for h in known],
            [h[3] for h in known],
            [h[4] for h in known],
        )
    return events


async def finish(
    pool: asyncpg.Pool, workspace_id: str, import_id: uuid.UUID, state: int, now: datetime
) -> None:
    await pool.execute(
        "UPDATE imports SET state = $3, finished_at = $4 WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace_id),
        import_id,
        state,
        now,
    )


def _import_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as err:
        raise NotFound(f"import {value[:64]!r} not found") from err


async def get(
    pool: asyncpg.Pool, workspace_id: str, import_id: str, import_key: str = ""
) -> asyncpg.Record:
    """The import named by its id, or else by the caller's key."""
    if not import_id and not import_key:
        raise InvalidArgument(FieldViolation("import_id", "is required (or import_key)"))
    if import_id:
        row = await pool.fetchrow(
            "SELECT * FROM imports WHERE workspace_id = $1 AND id = $2",
            uuid.UUID(workspace_id),
            _import_id(import_id),
        )
    else:
        row = await pool.fetchrow(
            "SELECT * FROM imports WHERE workspace_id = $1 AND import_key = $2",
            uuid.UUID(workspace_id),
            import_key,
        )
    if row is None:
        raise NotFound(f"import {(import_id or import_key)[:200]!r} not found")
    return row


def summary(row: asyncpg.Record, *, resumed: bool = False) -> imports_pb2.ImportSummary:
    s = imports_pb2.ImportSummary(
        import_id=str(row["id"]),
        state=row["state"],
        rows=row["rows"],
        created=row["created"],
        updated=row["updated"],
        unchanged=row["unchanged"],
        rejected=row["rejected"],
        file_name=row["file_name"],
        resumed=resumed,
    )
    s.started_at.FromDatetime(row["started_at"])
    if row["finished_at"] is not None:
        s.finished_at.FromDatetime(row["finished_at"])
    return s


async def list_errors(
    pool: asyncpg.Pool, workspace_id: str, import_id: str, after: tuple[int, int], limit: int
) -> list[asyncpg.Record]:
    found = await get(pool, workspace_id, import_id)
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT line, seq, field, reason FROM import_errors"
        " WHERE workspace_id = $1 AND import_id = $2 AND (line, seq) > ($3, $4)"
        " ORDER BY line, seq LIMIT $5",
        uuid.UUID(workspace_id),
        found["id"],
        after[0],
        after[1],
        limit,
    )
    return rows
