"""``nudge managers``: the web console's accounts of a workspace, for an operator.

    nudge managers create --workspace ID --email E --role owner|manager|viewer [--if-missing]
    nudge managers list --workspace ID
    nudge managers remove --workspace ID MANAGER_ID
    nudge managers role --workspace ID MANAGER_ID owner|manager|viewer

This is how a workspace gets its first owner (who then adds the others in the console). The
password of ``create`` comes from ``NUDGE_MANAGER_PASSWORD``, else from a prompt (asked
twice); it is never an argument, which ``ps`` and shell histories would show.

The command talks to contacts' ManagerService (``--addr``/``NUDGE_CONTACTS_ADDR``) with the
workspace's API key (``--api-key``/``NUDGE_API_KEY``) when one is given, else as an operator
with the internal token (``NUDGE_INTERNAL_TOKEN``) on behalf of ``--workspace``. ``create``
prints the new manager as one JSON line; with ``--if-missing`` an e-mail that already has
an account is not an error (``{"exists": true, ...}``), so a start-up script can run it
every time (deploy/local/supervisor.py does, for the demo workspace). ``role`` changes a
manager's role and ends their console sessions (they sign in again with the new one); the
last owner cannot be demoted.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.common.auth import internal_metadata

ROLES = {
    "owner": contacts_pb2.ManagerRole.MANAGER_ROLE_OWNER,
    "manager": contacts_pb2.ManagerRole.MANAGER_ROLE_MANAGER,
    "viewer": contacts_pb2.ManagerRole.MANAGER_ROLE_VIEWER,
}
ROLE_NAMES = {number: name for name, number in ROLES.items()}
PASSWORD_VARIABLE = "NUDGE_MANAGER_PASSWORD"


def say(text: str, *, error: bool = False) -> None:
    """A line for the user: answers on stdout, problems on stderr."""
    (sys.stderr if error else sys.stdout).write(text + "\n")


def add_parser(areas: Any) -> None:
    """Registers ``nudge managers`` and its commands on the root parser's subparsers."""
    managers = areas.add_parser(
        "managers",
        help="the web console's accounts of a workspace",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = managers.add_subparsers(dest="command", required=True)
    for name, helps in (
        ("create", "create a manager (the password from NUDGE_MANAGER_PASSWORD or a prompt)"),
        ("list", "list the workspace's managers"),
        ("remove", "remove a manager and end their sessions"),
        ("role", "change a manager's role and end their sessions"),
    ):
        command = commands.add_parser(name, help=helps)
        command.add_argument("--workspace", default="", help="the workspace id (operator)")
        command.add_argument(
            "--addr", default=os.environ.get("NUDGE_CONTACTS_ADDR", "127.0.0.1:50051")
        )
        command.add_argument("--api-key", default=os.environ.get("NUDGE_API_KEY", ""))
        if name == "create":
            command.add_argument("--email", required=True)
            command.add_argument("--role", choices=list(ROLES), default="manager")
            command.add_argument(
                "--if-missing", action="store_true", help="an existing account is not an error"
            )
        if name in ("remove", "role"):
            command.add_argument("manager_id")
        if name == "role":
            command.add_argument("role", choices=list(ROLES))
        command.set_defaults(run=run)


def _metadata(arguments: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    if arguments.api_key:
        return (("authorization", f"Bearer {arguments.api_key}"),)
    token = os.environ.get("NUDGE_INTERNAL_TOKEN", "")
    if not token or not arguments.workspace:
        raise UsageError(
            "give the workspace's API key (--api-key or NUDGE_API_KEY), or --workspace ID"
            " with the operator's NUDGE_INTERNAL_TOKEN"
        )
    return internal_metadata(token, arguments.workspace)


class UsageError(Exception):
    pass


def _password() -> str:
    given = os.environ.get(PASSWORD_VARIABLE)
    if given:
        return given
    if not sys.stdin.isatty():
        raise UsageError(f"set {PASSWORD_VARIABLE}, or run in a terminal to be asked")
    first = getpass.getpass("Password (at least 12 characters): ")
    if getpass.getpass("Again: ") != first:
        raise UsageError("the two passwords differ")
    return first


def _manager_json(manager: contacts_pb2.Manager) -> dict[str, Any]:
    found = MessageToDict(manager, preserving_proto_field_name=True)
    found["role"] = ROLE_NAMES.get(manager.role, "unspecified")
    return found


async def _run(arguments: argparse.Namespace) -> int:
    metadata = _metadata(arguments)
    async with grpc.aio.insecure_channel(arguments.addr) as channel:
        stub = contacts_pb2_grpc.ManagerServiceStub(channel)
        try:
            if arguments.command == "create":
                created: contacts_pb2.CreateManagerResponse = await stub.CreateManager(
                    contacts_pb2.CreateManagerRequest(
                        email=arguments.email, password=_password(), role=ROLES[arguments.role]
                    ),
                    metadata=metadata,
                    timeout=10,
                )
                say(json.dumps(_manager_json(created.manager)))
            elif arguments.command == "list":
                found: contacts_pb2.ListManagersResponse = await stub.ListManagers(
                    contacts_pb2.ListManagersRequest(), metadata=metadata, timeout=10
                )
                for manager in found.managers:
                    say(json.dumps(_manager_json(manager)))
            elif arguments.command == "role":
                updated: contacts_pb2.UpdateManagerResponse = await stub.UpdateManager(
                    contacts_pb2.UpdateManagerRequest(
                        manager_id=arguments.manager_id, role=ROLES[arguments.role]
                    ),
                    metadata=metadata,
                    timeout=10,
                )
                say(json.dumps(_manager_json(updated.manager)))
            else:
                removed: contacts_pb2.RemoveManagerResponse = await stub.RemoveManager(
                    contacts_pb2.RemoveManagerRequest(manager_id=arguments.manager_id),
                    metadata=metadata,
                    timeout=10,
                )
                say(json.dumps(_manager_json(removed.manager)))
        except grpc.aio.AioRpcError as err:
            if (
                arguments.command == "create"
                and arguments.if_missing
                and err.code() == grpc.StatusCode.ALREADY_EXISTS
            ):
                say(json.dumps({"exists": True, "email": arguments.email}))
                return 0
            say(
                f"nudge: managers {arguments.command}: {err.code().name}: {err.details()}",
                error=True,
            )
            return 1
    return 0


def run(arguments: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(arguments))
    except UsageError as err:
        say(f"nudge: {err}", error=True)
        return 2
