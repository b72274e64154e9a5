"""Rounds of a background loop that wait out what is worth waiting out.

A loop's round (the timer loop's claim, the command relay's lease, a schedule job's batch)
that fails because PostgreSQL, Kafka or a peer does not answer, or because PostgreSQL rolled
its transaction back to break a deadlock or a serialization conflict (class 40, where trying
the transaction again is the answer), is tried again after 0.1 s, doubling up to a cap, with
a warning each time. Any other error is a bug or bad data: it is raised, the task ends, and
the service's supervisor stops the service (exit 1, services/common/runtime.py) rather than
retrying it forever in silence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from asyncpg.exceptions import TransactionRollbackError

from services.common.consumer import is_dependency_outage

T = TypeVar("T")

FIRST_S = 0.1
CAP_S = 5.0


def worth_retrying(err: BaseException) -> bool:
    """A dependency outage, or a transaction PostgreSQL rolled back for a conflict."""
    return is_dependency_outage(err) or isinstance(err, TransactionRollbackError)


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    what: str,
    log: logging.Logger,
    *,
    first_s: float = FIRST_S,
    cap_s: float = CAP_S,
) -> T:
    """``attempt()``'s result, trying it again after each failure :func:`worth_retrying`
    (logged as "``what`` failed"); any other error is raised."""
    backoff = first_s
    while True:
        try:
            return await attempt()
        except Exception as err:
            if not worth_retrying(err):
                raise
            log.warning("%s failed (%r); retrying in %.1fs", what, err, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, cap_s)
