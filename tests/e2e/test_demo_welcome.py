"""``make run``'s demo workspace has the Welcome workflow published (deploy/local/supervisor.py:
``demo_welcome``), so that README's first path works as written: a contact with the
automations consent signs up, and ``make mail`` shows one welcome letter.

The template's mail is marketing, yet it does not wait for the send window (08:00-21:00 in the
contact's zone) as other marketing mail does: the contact just signed up. So the path works
as written at any hour, a contact without a zone included, as this test runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from deploy.local.supervisor import demo_welcome, demo_workspace
from services.common.db import create_pool
from services.contacts import keys
from tests.e2e.conftest import System
from tests.e2e.test_welcome_path import settle_contact
from tests.support import eventually, unique

SUBJECT = "Welcome to Demo shop"  # services/triggers/templates/welcome.json, "Demo shop"'s name
MARKER = "Marker"  # the transactional mail with which tests/markers.py's settle ends


async def demo_with_key(system: System, state_dir: Path) -> dict[str, Any]:
    """The demo workspace as ``make run`` finds it in ``state_dir``. When another test of the
    session made it first, its key was shown to that test only: give it a key of its own,
    as its owner would."""
    demo = demo_workspace(state_dir, system.env)
    if demo.get("api_key"):
        return demo
    pool = await create_pool(system.env["DATABASE_URL"], "contacts")
    try:
        _, api_key = await keys.create_key(pool, demo["workspace_id"], "demo welcome test")
    finally:
        await pool.close()
    return {**demo, "api_key": api_key}


async def welcome_ids(http: httpx.AsyncClient, **params: str) -> list[str]:
    listed = await http.get("/v1/workflows", params=params)
    assert listed.status_code == 200, listed.text
    return [w["id"] for w in listed.json()["workflows"] if w["template_id"] == "welcome"]


async def test_make_run_publishes_the_demo_welcome_workflow_once(
    system: System, tmp_path: Path
) -> None:
    demo = await demo_with_key(system, tmp_path)
    published = demo_welcome(tmp_path, system.env, demo)
    workflow_id = published["welcome_workflow_id"]
    auth = {"Authorization": f"Bearer {demo['api_key']}"}
    async with httpx.AsyncClient(base_url=system.gateway, headers=auth, timeout=30) as http:
        assert await welcome_ids(http, status="active") == [workflow_id]
        # The next `make run` finds the id in demo.json and publishes nothing more.
        again = demo_welcome(tmp_path, system.env, demo_workspace(tmp_path, system.env))
        assert again == published
        assert await welcome_ids(http) == [workflow_id]

        # README's first path, with the demo key.
        email = f"{unique('ada')}@example.com"
        created = await http.post(
            "/v1/contacts",
            json={"email": email, "first_name": "Ada", "consents": ["automations"]},
        )
        assert created.status_code == 201, created.text
        contact_id = created.json()["id"]
        signup = {"idempotency_key": unique("signup"), "type": "signed_up"}
        posted = await http.post("/v1/events", json={**signup, "contact": {"email": email}})
        assert posted.status_code == 202, posted.text

    def mails() -> list[str]:
        """The subjects of the contact's mail but settle's own marker."""
        to_her = [str(m["Subject"]) for m in system.mails() if email in str(m["To"])]
        return [subject for subject in to_her if subject != MARKER]

    await eventually(mails, timeout=60)
    await settle_contact(system, demo["api_key"], contact_id)
    assert mails() == [SUBJECT]
