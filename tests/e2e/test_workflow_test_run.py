"""A workflow's test run, as a manager starts it through the gateway, reaches the manager's
inbox: every send step of the abandoned-cart template at once, marked "[Test]", filled with
the chosen contact's data and sample cart variables, and nothing to the contact.

Until 2026-12-04 the test run's requests carried no purpose, contacts refused delivery's
lookup of the contact's data, and both mails were dead-lettered: the integration test of
the API stopped at delivery.requests.v1 and never saw it."""

from __future__ import annotations

from tests.e2e.conftest import System
from tests.e2e.test_campaign_seeds import contact, manager
from tests.e2e.test_welcome_path import new_workspace
from tests.support import eventually, unique


async def test_a_test_run_through_the_gateway_mails_the_manager_each_step(
    system: System,
) -> None:
    _, api_key = await new_workspace(system)
    owner = f"{unique('owner')}@example.com"
    customer = f"{unique('cara')}@example.com"
    async with manager(system, api_key) as http:
        contact_id = await contact(http, customer, first_name="Cara", consents=["automations"])
        created = await http.post("/v1/workflows", json={"template_id": "abandoned_cart"})
        assert created.status_code == 201, created.text
        workflow_id = created.json()["id"]
        published = await http.post(f"/v1/workflows/{workflow_id}/publish")
        assert published.status_code == 200, published.text
        started = await http.post(
            f"/v1/workflows/{workflow_id}/test-runs",
            json={"contact_id": contact_id, "recipient": owner},
        )
        assert started.status_code in (200, 201), started.text

    # The reminder, then (no order since the run began) the next day's offer.
    to = system.subjects_to
    subjects = await eventually(lambda: len(to(owner)) == 2 and to(owner), timeout=60)
    assert subjects == [
        "[Test] Cara, your cart at Bottega Ada is waiting",
        "[Test] Free shipping today only at Bottega Ada",
    ]
    assert to(customer) == []
