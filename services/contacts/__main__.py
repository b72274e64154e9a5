"""The contacts service.

    python -m services.contacts                      # serve gRPC (CONTACTS_GRPC_PORT, 50051)
    python -m services.contacts create-workspace --name "Demo shop" --slug demo [--if-missing]

``create-workspace`` talks to the database directly (an operator's tool) and prints JSON
``{"workspace_id": ..., "api_key": ...}``; the key is shown only here, only its hash is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys

from services.common.db import create_pool, migrate
from services.common.errors import AlreadyExists
from services.common.runtime import configure, run_service
from services.contacts import handlers
from services.contacts.adapters.postgres import SCHEMA, find_workspace_by_slug
from services.contacts.bootstrap import MIGRATIONS, start
from services.contacts.config import Settings


async def _create_workspace(settings: Settings, args: argparse.Namespace) -> int:
    await migrate(settings.database_url, SCHEMA, MIGRATIONS)
    pool = await create_pool(settings.database_url, SCHEMA)
    try:
        try:
            workspace_id, api_key = await handlers.create_workspace(
                pool, args.name, args.slug, not args.no_consent_required
            )
        except AlreadyExists:
            if not args.if_missing:
                raise
            async with pool.acquire() as conn:
                row = await find_workspace_by_slug(conn, args.slug)
            assert row is not None
            sys.stdout.write(json.dumps({"workspace_id": str(row["id"]), "existed": True}) + "\n")
            return 0
        sys.stdout.write(json.dumps({"workspace_id": workspace_id, "api_key": api_key}) + "\n")
        return 0
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.contacts")
    sub = parser.add_subparsers(dest="command")
    create = sub.add_parser("create-workspace", help="create a workspace and print its API key")
    create.add_argument("--name", required=True)
    create.add_argument("--slug", required=True)
    create.add_argument("--if-missing", action="store_true", help="succeed if the slug exists")
    create.add_argument("--no-consent-required", action="store_true")
    args = parser.parse_args()
    settings = Settings()
    if args.command == "create-workspace":
        configure("contacts", settings)
        sys.exit(asyncio.run(_create_workspace(settings, args)))
    run_service("contacts", settings, functools.partial(start, settings=settings))


if __name__ == "__main__":
    main()
