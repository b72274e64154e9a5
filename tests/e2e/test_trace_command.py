"""``nudge trace`` on a real signup's trace, read from the JSON-lines files the services of
the whole system write (what ``make run`` gives without Jaeger)."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections.abc import Iterator
from typing import Any

import httpx

from services.common.links import sign_open
from tests.e2e.conftest import System
from tests.e2e.test_welcome_path import new_workspace
from tests.support import eventually, unique


async def nudge(*argv: str) -> tuple[int, str, str]:
    """The ``nudge`` command line, as a user runs it (``python -m services.cli``)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def walk(span: dict[str, Any], path: tuple[dict[str, Any], ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every span with the chain of its ancestors, root first."""
    here = (*path, span)
    yield here
    for child in span["children"]:
        yield from walk(child, here)


async def test_nudge_trace_prints_a_signups_trace_as_a_tree_with_the_contact(
    system: System,
) -> None:
    _, api_key = await new_workspace(system)
    trace_id = secrets.token_hex(16)
    email = f"{unique('grace')}@example.com"
    auth = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=system.gateway, headers=auth, timeout=10) as http:
        created_trace = secrets.token_hex(16)
        created = await http.post(
            "/v1/contacts",
            json={"email": email, "first_name": "Grace", "consents": ["automations"]},
            headers={"traceparent": f"00-{created_trace}-{secrets.token_hex(8)}-01"},
        )
        assert created.status_code == 201, created.text
        contact_id = created.json()["id"]
        signup = {
            "idempotency_key": unique("signup"),
            "type": "signed_up",
            "contact": {"email": email},
        }
        traceparent = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        sent = await http.post("/v1/events", json=signup, headers=traceparent)
    assert sent.status_code == 202, sent.text

    # The welcome mail's hand-off is the trace's last span: wait for it in the files.
    def handed_over() -> bool:
        return any(s["trace_id"] == trace_id and s["name"] == "smtp send" for s in system.spans())

    await eventually(handed_over, timeout=60)
    files = ("--traces-dir", str(system.traces_dir))

    code, out, err = await nudge("trace", trace_id, "--json", *files)
    assert code == 0, err
    tree = json.loads(out)
    assert tree["trace_id"] == trace_id
    chains = [chain for root in tree["spans"] for chain in walk(root)]
    [smtp] = [c for c in chains if c[-1]["name"] == "smtp send"]
    services = [span["service"] for span in smtp]
    # gateway → contacts → triggers → delivery, each under the one before.
    assert services[0] == "nudge-gateway", services
    order = [services.index(s) for s in ("nudge-contacts", "nudge-triggers", "nudge-delivery")]
    assert order == sorted(order) and order[0] > 0, services
    assert smtp[0]["name"].startswith("POST /v1/events")
    # Every span on the way that handles the contact names it (the callers' client spans
    # name what they call, not whom).
    handling = [span for span in smtp if span["kind"] != "CLIENT" or span is smtp[-1]]
    assert len(handling) >= 5, [(s["service"], s["name"]) for s in smtp]
    for span in handling:
        assert span["attributes"].get("nudge.contact_id") == contact_id, out
    assert smtp[-1]["attributes"]["nudge.message_id"]
    assert all(span["status"] == "OK" for span in smtp)

    code, out, err = await nudge("trace", trace_id, *files)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"trace {trace_id}: ")
    gateway = next(i for i, line in enumerate(lines) if "POST /v1/events" in line)
    delivered = next(i for i, line in enumerate(lines) if "  smtp send  " in line)
    assert gateway < delivered
    assert f"contact={contact_id}" in lines[gateway]
    assert f"contact={contact_id}" in lines[delivered]
    assert " ms  OK" in lines[delivered]
    # The delivery span sits deeper in the tree than the gateway's request.
    indent = len(lines[delivered]) - len(lines[delivered].lstrip(" │├└─"))
    assert indent > len(lines[gateway]) - len(lines[gateway].lstrip(" │├└─"))

    # Found again from the contact alone, with the request that created it (whose span
    # names the contact from the answer of the call the gateway made).
    code, out, err = await nudge("trace", "--contact", contact_id, *files)
    assert code == 0, err
    assert trace_id in out and created_trace in out
    code, out, err = await nudge("trace", created_trace, *files)
    assert code == 0, err
    root = out.splitlines()[1]
    assert root.startswith("nudge-gateway  POST /v1/contacts") and f"contact={contact_id}" in root

    # The mail opened, in a sampled trace of its own: tracking's span names the mail.
    message_id = smtp[-1]["attributes"]["nudge.message_id"]
    workspace_id = smtp[-1]["attributes"]["nudge.workspace_id"]
    secret = system.env["NUDGE_LINK_SECRET"]
    pixel = sign_open(secret, workspace_id, message_id, contact_id)
    opened_trace = secrets.token_hex(16)
    sampled = {"traceparent": f"00-{opened_trace}-{secrets.token_hex(8)}-01"}
    async with httpx.AsyncClient(base_url=system.env["NUDGE_TRACKING_URL"]) as http:
        assert (await http.get(pixel, headers=sampled)).status_code == 200
    await eventually(lambda: any(s["trace_id"] == opened_trace for s in system.spans()))
    code, out, err = await nudge("trace", opened_trace, *files)
    assert code == 0, err
    [hit] = [line for line in out.splitlines() if line.startswith("nudge-tracking  GET /o/")]
    assert f"contact={contact_id}" in hit and f"message={message_id}" in hit, out
    code, out, err = await nudge("trace", "--message", message_id, *files)
    assert code == 0, err
    assert trace_id in out and opened_trace in out
