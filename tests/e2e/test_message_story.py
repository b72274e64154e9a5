"""The story of a mail through the whole system (issue 17): a signup's welcome mail, deferred
once by the SMTP server, then sent and opened through its tracking pixel, told by
``GET /v1/messages/{id}?explain=true`` and by ``nudge message ID``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
import sys
from typing import Any

import grpc
import httpx
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from tests.e2e.conftest import System
from tests.e2e.test_welcome_path import platform_signup
from tests.integration.triggers.support import WELCOME, publish, run_rows
from tests.support import eventually, fetchval, unique

DEFERRED = 6  # delivery.messages.status


def story_workflow() -> dict[str, Any]:
    """The welcome letter with an HTML body, so that the mail carries an open pixel."""
    definition = copy.deepcopy(WELCOME)
    definition["name"] = "Welcome letter with a pixel"
    definition["steps"][0]["message"]["body_html"] = (
        "<p>Hi {{ contact.first_name }}, welcome to "
        '<a href="https://shop.example/new">our shop</a>.</p>'
    )
    return definition


async def new_workspace(system: System) -> tuple[str, str]:
    """A workspace whose only workflow is :func:`story_workflow` (one mail per signup)."""
    async with grpc.aio.insecure_channel(system.contacts) as channel:
        answer = await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="Bottega Ada", slug=unique("story")),
            metadata=system.admin,
        )
    await publish(system.env["DATABASE_URL"], answer.workspace_id, story_workflow())
    return answer.workspace_id, answer.api_key


async def explain(system: System, api_key: str, message_id: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=15) as http:
        return await http.get(
            f"{system.gateway}/v1/messages/{message_id}",
            params={"explain": "true"},
            headers={"Authorization": f"Bearer {api_key}"},
        )


def nudge_message(system: System, api_key: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "message", *args],
        env={**system.env, "NUDGE_API_KEY": api_key, "NUDGE_GATEWAY_URL": system.gateway},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_deferred_then_sent_and_opened_mail_tells_its_story(system: System) -> None:
    workspace_id, api_key = await new_workspace(system)
    email = f"{unique('story')}@example.com"
    # The server defers the first attempt at RCPT, then takes the mail.
    system.smtp.script(email, rcpt=["451 4.3.0 Mailbox busy, try later"])
    contact_id = await platform_signup(system, api_key, email, unique("signup"))

    async def deferred_message() -> str | None:
        found = await fetchval(
            system.env["DATABASE_URL"],
            "SELECT message_id::text FROM delivery.messages"
            " WHERE workspace_id = $1::uuid AND contact_id = $2::uuid AND status = $3",
            workspace_id,
            contact_id,
            DEFERRED,
        )
        return str(found) if found else None

    message_id = str(await eventually(deferred_message, timeout=90))
    answer = await explain(system, api_key, message_id)
    assert answer.status_code == 200, answer.text
    story = answer.json()
    assert story["status"] == "deferred"
    assert [s["status"] for s in story["stages"]] == ["claimed", "deferred"]
    assert story["stages"][1]["detail"].startswith("451 4.3.0 Mailbox busy")
    assert story["stages"][1]["next_attempt_at"] is not None
    assert story["next_attempt_at"] == story["stages"][1]["next_attempt_at"]
    # The request that caused it: the workflow's run and its send step.
    assert story["origin"]["kind"] == "automation"
    [run] = await run_rows(system.env["DATABASE_URL"], workspace_id)
    assert story["origin"]["workflow_id"] == str(run["workflow_id"])
    assert story["origin"]["run_id"] == str(run["id"])
    assert story["origin"]["step_id"] == "welcome"
    assert story["eligibility"]["checked"] and story["eligibility"]["eligible"]
    assert story["eligibility"]["purpose"] == "automations"
    assert story["requested_at"] is not None

    # Due now rather than after the backoff: the retry loop hands it over again.
    await fetchval(
        system.env["DATABASE_URL"],
        "UPDATE delivery.pending_sends SET due_at = now() WHERE message_id = $1::uuid RETURNING 1",
        message_id,
    )
    [mail] = await eventually(
        lambda: [m for m in system.mails() if m["X-Nudge-Message-Id"] == message_id], timeout=60
    )
    html = next(p for p in mail.walk() if p.get_content_type() == "text/html").get_content()
    pixel = re.search(r'<img src="([^"]+)" width="1" height="1"', html)
    assert pixel is not None, html
    async with httpx.AsyncClient(timeout=15) as http:
        opened = await http.get(
            pixel.group(1).replace("&amp;", "&"),
            headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Thunderbird/128.0"},
        )
    assert opened.status_code == 200, opened.text

    async def told() -> dict[str, Any] | None:
        found = (await explain(system, api_key, message_id)).json()
        return found if found["status"] == "sent" and found["tracking"] else None

    story = await eventually(told, timeout=60)
    assert [(s["status"], s["attempt"]) for s in story["stages"]] == [
        ("claimed", 1),
        ("deferred", 1),
        ("claimed", 2),
        ("sent", 2),
    ]
    assert [t["kind"] for t in story["tracking"]] == ["open"]
    # The trace of the claim, with its link; delivery's spans are in it.
    trace_id = story["trace"]["trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id), trace_id
    assert story["trace"]["url"].endswith(f"/trace/{trace_id}")
    assert story["trace"]["command"] == f"nudge trace {trace_id}"
    await eventually(
        lambda: any(
            s["trace_id"] == trace_id and s["service"] == "nudge-delivery" for s in system.spans()
        ),
        timeout=30,
    )

    # The command line: one stage a line, in time order; --json is the API's answer.
    printed = await asyncio.to_thread(nudge_message, system, api_key, message_id)
    assert printed.returncode == 0, printed.stderr
    stages = [line.split()[2] for line in printed.stdout.splitlines()[1:-1]]
    assert stages == [
        "requested",
        "eligibility",
        "claimed",
        "deferred",
        "claimed",
        "sent",
        "open",
    ], printed.stdout
    assert "451 4.3.0 Mailbox busy" in printed.stdout and "next attempt at" in printed.stdout
    assert trace_id in printed.stdout.splitlines()[-1]
    as_json = await asyncio.to_thread(nudge_message, system, api_key, message_id, "--json")
    assert json.loads(as_json.stdout) == story

    # Another workspace's message is not found, never its story; a malformed id is named.
    _, other_key = await new_workspace(system)
    assert (await explain(system, other_key, message_id)).status_code == 404
    refused = nudge_message(system, other_key, message_id)
    assert refused.returncode == 1 and "404" in refused.stderr
    bad = await explain(system, api_key, "not-a-message")
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in bad.json()["errors"]] == ["path.message_id"]
    # Without explain, the plain status as before.
    async with httpx.AsyncClient(timeout=15) as http:
        plain = await http.get(
            f"{system.gateway}/v1/messages/{message_id}",
            headers={"Authorization": f"Bearer {api_key}"},
        )
    assert set(plain.json()) == {"message_id", "status", "detail", "updated_at"}
