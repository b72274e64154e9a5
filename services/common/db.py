"""PostgreSQL: one asyncpg pool per service, bound to the service's own schema, and a
plain-SQL migration runner.

Each service owns one schema (``contacts``, ``delivery``...) and never reads another's.
Migrations are ``NNNN_name.sql`` files applied in order, each in its own transaction, under
an advisory lock so that replicas starting together apply them once. The shared tables every
service needs (outbox, processed events) come from ``services/common/migrations`` and are
applied into each schema first.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Iterable
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

COMMON_MIGRATIONS = Path(__file__).parent / "migrations"
_SCHEMA_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


async def create_pool(
    database_url: str, schema: str, *, min_size: int = 1, max_size: int = 10
) -> asyncpg.Pool:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"bad schema name {schema!r}")
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": schema, "application_name": f"nudge-{schema}"},
    )
    assert pool is not None
    return pool


def _migration_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.sql") if re.match(r"^\d{4}_", p.name))


async def migrate(database_url: str, schema: str, service_dir: Path | None) -> list[str]:
    """Apply the common and the service's migrations to ``schema``; returns what was applied."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"bad schema name {schema!r}")
    sources = [("common", _migration_files(COMMON_MIGRATIONS))]
    if service_dir is not None:
        sources.append((schema, _migration_files(service_dir)))
    applied: list[str] = []
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", zlib.crc32(f"migrate:{schema}".encode()))
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            await conn.execute(f"SET search_path TO {schema}")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for prefix, files in sources:
                for path in files:
                    version = f"{prefix}/{path.stem}"
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(path.read_text())
                        await conn.execute(
                            "INSERT INTO schema_migrations (version) VALUES ($1)", version
                        )
                    log.info("applied migration %s to schema %s", version, schema)
                    applied.append(version)
        finally:
            await conn.execute(
                "SELECT pg_advisory_unlock($1)", zlib.crc32(f"migrate:{schema}".encode())
            )
    finally:
        await conn.close()
    return applied


def id_array(values: Iterable[object]) -> str:
    """Ids or numbers as one text parameter, ``a,b,NULL``, for a statement that reads it with
    the common migrations' ``uuids($1)``, ``ints($1)`` or ``bigints($1)`` (0003_id_lists.sql):
    ``unnest(uuids($1))``.

    asyncpg encodes a list parameter element by element, and checks each element twice
    against ``collections.abc`` classes first (is it an array itself?): for the trigger
    engine's rounds, eighty elements an event, that was a tenth of its CPU (bench/
    RESULTS.md, issue 16). PostgreSQL splits this text and casts the pieces in ~0.6 µs a
    UUID, where an array literal's input took ~1.0 (issue 15). Only for values whose text
    holds no comma (UUIDs, integers), and never the text ``NULL`` itself."""
    values = list(values)
    try:
        return ",".join(values)  # type: ignore[arg-type]  # str, the usual case
    except TypeError:
        return ",".join("NULL" if v is None else str(v) for v in values)
