"""A campaigns process killed (SIGKILL) in the middle of a fan-out, then started again:
every member's message id reaches delivery.requests.v1, no other id does, and the
recipients table holds exactly one row per member.

The child is stopped at a known batch (test_fanout.py ``Blocker``): its insert of the
sixteenth batch waits on a row the test holds, with the checkpoint at fifteen batches, and
it is killed there. Its records of batches it had not checkpointed are produced again by
the next process: the same bytes, which delivery claims once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.campaigns.audience import message_id
from services.campaigns.domain.model import Status
from services.common.healthcheck import check_grpc
from tests.integration.campaigns.test_fanout import (
    FANOUT_TOPIC,
    Blocker,
    checkpoint,
    checkpoint_is,
    ensure_fanout_topic,
    insert_blocked,
    message_ids,
    move,
    new_campaign,
    recipient_rows,
    requested_records,
    status,
    vip_members,
)
from tests.integration.conftest import RunningService, Workspace
from tests.support import eventually, free_port, wait_until

CONTACTS = 3000
BATCH = 100


class Campaigns:
    """``python -m services.campaigns`` as a child process."""

    def __init__(self, tmp_path: Path, segmentation: str) -> None:
        self.port = free_port()
        self.log = tmp_path / f"campaigns-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if k != "NUDGE_BIND_HOST"}
        env.update(
            CAMPAIGNS_GRPC_PORT=str(self.port),
            CAMPAIGNS_FANOUT_BATCH_SIZE=str(BATCH),
            CAMPAIGNS_FANOUT_POLL_INTERVAL_S="0.1",
            CAMPAIGNS_FANOUT_TOPIC=FANOUT_TOPIC,
            NUDGE_SEGMENTATION_ADDR=segmentation,
            NUDGE_LOG_FORMAT="text",
        )
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.campaigns"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(self.serving, timeout=90)

    def serving(self) -> bool:
        assert self.process.poll() is None, self.log.read_text(errors="replace")[-3000:]
        return check_grpc(f"127.0.0.1:{self.port}", "", timeout=1) is None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL: no clean-up of any kind
        self.process.wait(timeout=30)


@pytest.fixture
def children() -> Iterator[list[Campaigns]]:
    started: list[Campaigns] = []
    yield started
    for child in started:
        child.kill()


async def test_killed_mid_fan_out_then_restarted_nobody_twice_nobody_left_out(
    segmentation_for_campaigns: RunningService,
    workspace: Workspace,
    children: list[Campaigns],
    tmp_path: Path,
) -> None:
    await ensure_fanout_topic()
    first = Campaigns(tmp_path, segmentation_for_campaigns.address)  # migrates its schema
    children.append(first)
    contacts = await vip_members(workspace.id, CONTACTS)
    campaign = await new_campaign(workspace.id)
    blocker = await Blocker.hold(workspace.id, campaign, contacts[15 * BATCH + 42])
    try:
        await move(workspace.id, campaign, (Status.DRAFT,), Status.SENDING)
        await eventually(insert_blocked, timeout=90)
        await eventually(checkpoint_is(campaign, 15 * BATCH), timeout=60)
        reached = await checkpoint(campaign)
        assert 0 < reached < CONTACTS
        first.kill()
    finally:
        await blocker.release()
    assert await status(campaign) == Status.SENDING

    children.append(Campaigns(tmp_path, segmentation_for_campaigns.address))

    async def sent() -> bool:
        return await status(campaign) == Status.SENT

    await eventually(sent, timeout=120)
    expected = {message_id(campaign, c) for c in contacts}
    assert message_ids(await requested_records(campaign)) == expected
    rows = await recipient_rows(campaign)
    assert len(rows) == CONTACTS
    assert sorted(r["contact_id"] for r in rows) == contacts
    assert {r["message_id"] for r in rows} == expected
    assert all(uuid.UUID(r["message_id"]) for r in rows)
