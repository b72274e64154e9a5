"""Triggers that no single event carries: a date coming round (birthday, signup
anniversary), a silence (no order, visit or open for N days), the total spent crossing a
threshold. The runtime calls two hooks, both inside the transaction of what it is handling:

- :func:`on_contact_changed` after it applied an event to the contact's facts
  (``contact_facts``): (re)schedule the contact's ``date`` and ``inactive`` timers for every
  live workflow with such a trigger, and return the ``value_crossed`` runs to start;
- :func:`on_timer` for a claimed timer of kind ``date`` or ``inactive``: return the runs to
  start (and schedule the next year's ``date`` timer).

The runtime starts the returned :class:`Start` s exactly as it starts runs for events
(entry rules, deterministic run ids from ``trigger_event_id``).

PLACEHOLDER: both hooks return nothing until the derived-trigger part lands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class Start:
    """Start a run of ``workflow_id`` at ``version`` for a contact."""

    workflow_id: str
    version: int
    contact_id: str
    # Deterministic: the same birthday of the same year, the same crossing, gives the same id.
    trigger_event_id: str
    vars: Mapping[str, str] = field(default_factory=dict)  # e.g. {"years": "2"}
    key: str = ""


async def on_contact_changed(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_id: str,
    event: str,
    occurred_at: datetime,
    now: datetime,
) -> list[Start]:
    """``event`` is the EventName the contact's facts were just updated by (or
    ``contact_updated`` for a profile change); ``occurred_at`` its event time."""
    return []


async def on_timer(conn: asyncpg.Connection, timer: asyncpg.Record, now: datetime) -> list[Start]:
    """``timer`` is the claimed ``timers`` row (kind ``date`` or ``inactive``)."""
    return []
