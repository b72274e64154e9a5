"""The fan-out's metrics (services/campaigns/fanout.py, docs/operating.md) as Prometheus
reads them from the running campaigns service: a sending campaign's recipients by state
and whether it streams, served while it sends and gone once it is sent or paused, and the
counter of recipients handed to delivery.

The driver is stopped at a known batch as in test_fanout.py: an uncommitted recipients row
of a contact in a later batch holds the driver's insert of that batch."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.campaigns.domain.model import Status
from tests.integration.campaigns.test_fanout import (  # noqa: F401  (campaigns_service: a fixture)
    BATCH,
    Blocker,
    campaigns_service,
    checkpoint_is,
    driver_idle,
    insert_blocked,
    move,
    new_campaign,
    status,
    vip_members,
)
from tests.integration.conftest import RunningService, Workspace
from tests.support import eventually


def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the fan-out's families this process serves, by name and labels."""
    text = generate_latest(REGISTRY).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("nudge_campaign_fanout")
        for s in family.samples
    }


def of_campaign(campaign_id: uuid.UUID) -> dict[str, float]:
    """``{state or "streaming": value}`` of one campaign."""
    found: dict[str, float] = {}
    for (name, labels), value in scraped().items():
        label = dict(labels)
        if label.get("campaign_id") != str(campaign_id):
            continue
        assert label["service"] == "campaigns"
        if name == "nudge_campaign_fanout_streaming":
            found["streaming"] = value
        else:
            found[label["state"]] = value
    return found


def requested_total() -> float:
    """Every driver's counter in this process summed: a driver of an earlier module not
    collected yet serves its own (constant) count beside the running one's."""
    text = generate_latest(REGISTRY).decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "nudge_campaign_fanout_requested_total"
    )


async def test_a_sending_campaign_reports_its_progress_until_it_is_sent(
    campaigns_service: RunningService,  # noqa: F811
    workspace: Workspace,
) -> None:
    contacts = await vip_members(workspace.id, 6 * BATCH)
    campaign = await new_campaign(workspace.id)
    before = requested_total()
    blocker = await Blocker.hold(workspace.id, campaign, contacts[3 * BATCH + 10])
    try:
        await move(workspace.id, campaign, (Status.DRAFT,), Status.SENDING)
        await eventually(insert_blocked, timeout=60)
        await eventually(checkpoint_is(campaign, 3 * BATCH), timeout=60)
        expected = {
            "reached": 3 * BATCH,
            "requested": 3 * BATCH,
            "excluded": 0,
            "deferred": 0,
            "streaming": 1,
        }
        await eventually(lambda: of_campaign(campaign) == expected, timeout=30)
        assert requested_total() - before == 3 * BATCH
    finally:
        await blocker.release()

    async def sent() -> bool:
        return await status(campaign) == Status.SENT

    await eventually(sent, timeout=60)
    # Its series end with it; the counter keeps every recipient handed over.
    await eventually(lambda: of_campaign(campaign) == {}, timeout=30)
    assert requested_total() - before == 6 * BATCH


async def test_a_paused_campaign_leaves_the_metrics(
    campaigns_service: RunningService,  # noqa: F811
    workspace: Workspace,
) -> None:
    contacts = await vip_members(workspace.id, 4 * BATCH)
    campaign = await new_campaign(workspace.id)
    blocker = await Blocker.hold(workspace.id, campaign, contacts[2 * BATCH + 5])
    try:
        await move(workspace.id, campaign, (Status.DRAFT,), Status.SENDING)
        await eventually(insert_blocked, timeout=60)
        await eventually(lambda: of_campaign(campaign).get("streaming") == 1, timeout=30)
        await move(workspace.id, campaign, (Status.SENDING,), Status.PAUSED)
    finally:
        await blocker.release()
    await eventually(lambda: driver_idle(campaign), timeout=30)
    await eventually(lambda: of_campaign(campaign) == {}, timeout=30)
    assert of_campaign(campaign) == {}, "a paused campaign's series must be dropped"
