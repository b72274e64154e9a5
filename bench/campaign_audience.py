"""How fast a campaign's audience stream reads a large segment, on the real services.

    .venv/bin/python bench/campaign_audience.py [--scale N]

Starts PostgreSQL, Redis and Kafka (the local stack on free ports) and the contacts,
segmentation and campaigns services as processes (bench/_system.py, as deployed), loads
``--scale`` consenting VIP contacts with COPY, then reads the audience of a campaign on the
built-in "vip" segment (10 % hold-out) with ``audience.stream_recipients`` in this process,
as the campaigns service's fan-out does: segmentation streams the members, contacts
answers eligibility, campaigns' PostgreSQL the frequency cap. Each batch size is read
whole; the stream's order and counts are checked, so a wrong stream fails the benchmark
rather than looking fast. The last line is one JSON object:

- ``recipients_per_s``: contacts read per second, per batch size (``by_batch``), and the best;
- ``stream_contacts_per_s``: segmentation's StreamMembers alone, the audience's ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _system import running_system  # noqa: E402
from campaign_fanout import SERVICES, load_profiles, new_workspace, ready, stream_rate  # noqa: E402
from nudge.contacts.v1 import contacts_pb2  # noqa: E402

from services.campaigns import audience  # noqa: E402
from services.campaigns.adapters.segmentation import SegmentCatalogue  # noqa: E402
from services.campaigns.config import Settings  # noqa: E402
from services.campaigns.ports import Ports  # noqa: E402
from services.common.db import create_pool  # noqa: E402
from services.common.grpc_client import channel  # noqa: E402


def spec(workspace_id: str) -> audience.AudienceSpec:
    return audience.AudienceSpec(
        workspace_id=workspace_id,
        campaign_id=uuid.uuid4(),
        segment_ids=("vip",),
        exclude_segment_ids=(),
        tags_any=(),
        purpose=contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES,
        cap_action=1,
        local_time=False,
        time_zone="UTC",
        scheduled_at=None,
        holdout_percent=10,
        ab=None,
    )


async def read_audience(env: dict[str, str], workspace_id: str, scale: int, batch: int) -> float:
    """Reads the whole stream once; checks it; contacts per second."""
    os.environ.update(env)  # the campaigns service's settings, as its process reads them
    settings = Settings()
    pool = await create_pool(settings.database_url, "campaigns", max_size=4)
    contacts = channel(settings.contacts_addr)
    segmentation = channel(settings.segmentation_addr)
    ports = Ports(
        settings=settings,
        pool=pool,
        contacts=contacts,
        segmentation=segmentation,
        delivery=contacts,  # not used by the stream
        segments=SegmentCatalogue(segmentation, settings.internal_token),
    )
    try:
        started = time.perf_counter()
        count = eligible = 0
        last = ""
        async for recipients in audience.stream_recipients(
            ports, spec(workspace_id), phase="all", as_of=datetime.now(UTC), batch_size=batch
        ):
            first = str(recipients[0].contact_id)
            if first <= last:
                raise AssertionError("the stream went back: it must ascend by contact id")
            last = str(recipients[-1].contact_id)
            count += len(recipients)
            eligible += sum(r.excluded is None for r in recipients)
        elapsed = time.perf_counter() - started
    finally:
        await contacts.close()
        await segmentation.close()
        await pool.close()
    if count != scale:
        raise AssertionError(f"the stream gave {count} contacts of {scale}")
    if not 0.8 * scale < eligible < 0.98 * scale:  # all consent; about 10 % held out
        raise AssertionError(f"{eligible} of {scale} eligible: the hold-out is off")
    return count / elapsed


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"scale": args.scale}
    with running_system(services=SERVICES, ready=ready) as system:
        env = system.env
        workspace_id = asyncio.run(new_workspace(env))
        result["load_s"] = round(
            asyncio.run(load_profiles(env["DATABASE_URL"], workspace_id, args.scale)), 1
        )
        result["stream_contacts_per_s"] = round(asyncio.run(stream_rate(env, workspace_id, 5000)))
        by_batch = {
            str(batch): round(asyncio.run(read_audience(env, workspace_id, args.scale, batch)))
            for batch in (1000, 5000)
        }
        result["by_batch"] = by_batch
        result["recipients_per_s"] = max(by_batch.values())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=100_000, help="contacts in the segment")
    args = parser.parse_args()
    sys.stdout.write(json.dumps(run(args)) + "\n")


if __name__ == "__main__":
    main()
