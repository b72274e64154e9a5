"""``nudge``: the command line of Nudge (``[project.scripts]``). Subcommands:

    nudge contacts import FILE [--format csv|ndjson] [--match email|external-id]
        [--map COLUMN=FIELD ...] [--consent COLUMN=PURPOSE[:WORDING] ...] [--tag TAG ...]
        [--key KEY] [--addr HOST:PORT] [--api-key KEY]

    nudge trace TRACE_ID [--json] [--jaeger URL] [--traces-dir DIR]
    nudge trace --contact ID | --message ID
    nudge managers create|list|remove ...   (the web console's accounts: services/cli/managers.py)

The address and the API key come from ``--addr``/``NUDGE_CONTACTS_ADDR`` (default
127.0.0.1:50051) and ``--api-key``/``NUDGE_API_KEY``. ``nudge trace`` reads Jaeger's API
or the services' JSON-lines span files (services/cli/traces.py).

    nudge message ID [--json] [--gateway-url URL] [--api-key KEY]

The story of one mail (services/cli/messages.py), over the gateway's HTTP API
(``NUDGE_GATEWAY_URL``, default http://127.0.0.1:8080).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from services.cli import contacts_import, managers, messages, traces


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="nudge", description="The command line of Nudge.")
    areas = root.add_subparsers(dest="area", required=True)
    contacts = areas.add_parser("contacts", help="contacts of a workspace")
    commands = contacts.add_subparsers(dest="command", required=True)
    imp = commands.add_parser(
        "import",
        help="import contacts from a CSV or NDJSON file",
        description=contacts_import.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("file", help="the CSV or NDJSON file ('-' for standard input)")
    imp.add_argument("--format", choices=["csv", "ndjson"], help="else from the file's name")
    imp.add_argument("--match", choices=["email", "external-id"], default="email")
    imp.add_argument("--map", action="append", default=[], metavar="COLUMN=FIELD")
    imp.add_argument("--consent", action="append", default=[], metavar="COLUMN=PURPOSE[:WORDING]")
    imp.add_argument("--tag", action="append", default=[], help="added to every contact")
    imp.add_argument("--key", help="the import key (default: from the file's path, size, time)")
    imp.add_argument("--addr", default=os.environ.get("NUDGE_CONTACTS_ADDR", "127.0.0.1:50051"))
    imp.add_argument("--api-key", default=os.environ.get("NUDGE_API_KEY", ""))
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    imp.set_defaults(run=contacts_import.run)
    messages.register(areas)
    traces.add_parser(areas)
    managers.add_parser(areas)  # issue 18: nudge managers create|list|remove
    return root


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    code: int = arguments.run(arguments)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
