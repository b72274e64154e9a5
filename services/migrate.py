"""Apply every service's migrations: ``python -m services.migrate``.

Each service also applies its own at start-up (under an advisory lock, so this is safe to run
beside them); this entry point lets an operator migrate before a rolling deploy. A service's
schema is named after its package, and its migrations live in ``services/<name>/migrations``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from services.common.config import DatabaseSettings, KafkaSettings
from services.common.db import migrate
from services.common.logs import setup_logging

log = logging.getLogger(__name__)
SERVICES_DIR = Path(__file__).parent


class Settings(DatabaseSettings, KafkaSettings):
    """What the one-shot set-up reads (docker compose's ``init``): the topics step needs
    Kafka, the migrations PostgreSQL."""


def service_schemas() -> list[tuple[str, Path]]:
    return sorted(
        (d.name, d / "migrations")
        for d in SERVICES_DIR.iterdir()
        if (d / "migrations").is_dir() and d.name != "common"
    )


async def migrate_all(database_url: str) -> dict[str, list[str]]:
    return {
        schema: await migrate(database_url, schema, directory)
        for schema, directory in service_schemas()
    }


def main() -> None:
    settings = Settings()
    setup_logging("migrate", settings.log_level, settings.log_format)
    for schema, applied in asyncio.run(migrate_all(settings.database_url)).items():
        log.info("schema %s: %d migration(s) applied", schema, len(applied))


if __name__ == "__main__":
    main()
