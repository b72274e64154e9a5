"""A workspace's campaign settings: the frequency cap, the default time zone and the default
Reply-To.

Stored in ``campaigns.settings``, one row per workspace once it changes them; a workspace
without a row has the defaults (1 targeted message per contact per 30 days, UTC), so nothing
has to be written when a workspace is made. The fan-out reads the cap from here; SendCampaign
reads the time zone for a campaign that names none, and the fan-out and test sends the
Reply-To (fanout.py ``CAMPAIGN_COLUMNS``, content_handlers.py) for a campaign that names none.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from nudge.campaigns.v1 import campaigns_pb2

from services.campaigns.adapters import postgres as db
from services.campaigns.domain.model import is_time_zone
from services.common import campaign_limits as limits
from services.common import clock
from services.common.contact_limits import check_email
from services.common.errors import Validator

UPDATABLE = ("frequency_cap_messages", "frequency_cap_days", "time_zone", "default_reply_to")


@dataclass(frozen=True)
class CampaignSettings:
    frequency_cap_messages: int = 1
    frequency_cap_days: int = 30
    time_zone: str = "UTC"
    default_reply_to: str = ""

    def to_proto(self) -> campaigns_pb2.CampaignSettings:
        return campaigns_pb2.CampaignSettings(
            frequency_cap_messages=self.frequency_cap_messages,
            frequency_cap_days=self.frequency_cap_days,
            time_zone=self.time_zone,
            default_reply_to=self.default_reply_to,
        )


async def read(db_: asyncpg.Pool | asyncpg.Connection, workspace_id: str) -> CampaignSettings:
    """The workspace's settings, or the defaults when it never changed them."""
    if isinstance(db_, asyncpg.Pool):
        async with db_.acquire() as conn:
            row = await db.get_settings(conn, workspace_id)
    else:
        row = await db.get_settings(db_, workspace_id)
    if row is None:
        return CampaignSettings()
    return CampaignSettings(
        frequency_cap_messages=row["frequency_cap_messages"],
        frequency_cap_days=row["frequency_cap_days"],
        time_zone=row["time_zone"],
        default_reply_to=row["default_reply_to"],
    )


async def update(
    pool: asyncpg.Pool,
    workspace_id: str,
    wanted: campaigns_pb2.CampaignSettings,
    paths: list[str],
) -> CampaignSettings:
    """The settings with the fields named by ``paths`` taken from ``wanted``; every bad field
    is reported together, and nothing is written unless all are valid."""
    v = Validator()
    v.check(bool(paths), "update_mask", "is required: " + ", ".join(UPDATABLE))
    for i, path in enumerate(paths):
        v.check(path in UPDATABLE, f"update_mask.paths[{i}]", f"unknown path {path[:100]!r}")
    v.check(len(set(paths)) == len(paths), "update_mask", "names a path twice")
    if "frequency_cap_messages" in paths:
        lo, hi = limits.MIN_CAP_MESSAGES, limits.MAX_CAP_MESSAGES
        v.check(
            lo <= wanted.frequency_cap_messages <= hi,
            "settings.frequency_cap_messages",
            f"must be {lo}-{hi}",
        )
    if "frequency_cap_days" in paths:
        lo, hi = limits.MIN_CAP_DAYS, limits.MAX_CAP_DAYS
        v.check(
            lo <= wanted.frequency_cap_days <= hi,
            "settings.frequency_cap_days",
            f"must be {lo}-{hi}",
        )
    if "time_zone" in paths:
        v.check(
            is_time_zone(wanted.time_zone),
            "settings.time_zone",
            "not an IANA time zone (e.g. Europe/Berlin)",
        )
    reply_to = _default_reply_to(v, wanted.default_reply_to) if "default_reply_to" in paths else ""
    v.raise_if_any()
    async with pool.acquire() as conn, conn.transaction():
        # Serialises two updates of one workspace so neither loses the other's fields.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"settings:{workspace_id}")
        current = await read(conn, workspace_id)
        new = CampaignSettings(
            frequency_cap_messages=wanted.frequency_cap_messages
            if "frequency_cap_messages" in paths
            else current.frequency_cap_messages,
            frequency_cap_days=wanted.frequency_cap_days
            if "frequency_cap_days" in paths
            else current.frequency_cap_days,
            time_zone=wanted.time_zone if "time_zone" in paths else current.time_zone,
            default_reply_to=reply_to if "default_reply_to" in paths else current.default_reply_to,
        )
        await db.put_settings(
            conn,
            workspace_id,
            new.frequency_cap_messages,
            new.frequency_cap_days,
            new.time_zone,
            new.default_reply_to,
            clock.now(),
        )
    return new


def _default_reply_to(v: Validator, given: str) -> str:
    """The address in its normal form, or "" for none; checked as a campaign's reply_to is
    (domain/model.py), so whatever a campaign could name, the default can be."""
    if not given:
        return ""
    normalized, problem = check_email(given)
    v.check(not problem, "settings.default_reply_to", f"not an e-mail address: {problem}")
    return normalized
