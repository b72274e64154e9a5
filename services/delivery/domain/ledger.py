"""Message statuses and what a delivery attempt may do, given what the ledger says."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    CLAIMED = 1
    SENT = 2
    SKIPPED = 3
    BOUNCED = 4
    FAILED = 5
    RETRY = 6


def smtp_failure_is_permanent(code: int) -> bool:
    """5xx replies are permanent (a bounce); 4xx and broken connections may succeed later."""
    return 500 <= code < 600
