"""The command relay: carries the engine's tag and score changes to contacts.

A workflow's Tag and Score steps cannot change a contact in the transaction that takes the
step: the contact belongs to the contacts service. The runtime therefore writes a row into
``commands`` in that transaction (its id is deterministic: run id + step + iteration, so a
replayed step writes nothing new), and this relay calls contacts' gRPC API for it later:

- ``kind = 'tags'``, ``payload = {"add": [...], "remove": [...]}``: ``ModifyTags`` with
  the command id as ``idempotency_key`` (a repeat, after a manager took the tag off again,
  must not put it back);
- ``kind = 'score'``, ``payload = {"delta": n}``: ``AdjustScore`` with the command id as
  ``idempotency_key``, so contacts applies a command once however often it is sent.

Delivery is at-least-once and the calls are idempotent, so the relay never needs to know
whether a call it lost track of (a crash after the call, before the delete) went through.

A tags command contacts accepted is not deleted at once: it is settled with the version of
its change from the answer and stays an overlay on the engine's facts until the engine has
applied contacts' event of that version (services/triggers/runtime/facts.py, "Tag
overlays"); a settled row is never leased again.

Claiming. A round leases due rows (``next_try_at <= now``) with ``FOR UPDATE SKIP LOCKED``
by moving their ``next_try_at`` past the call's timeout, in a short statement: no database
transaction stays open while contacts answers, and several workers' relays share the table
without calling twice for one row (a lease that expires, because the worker died, hands the
row to the next round, which is safe since the calls are idempotent). A row is deleted (a
tags row settled) when contacts accepts it, backed off exponentially (``attempts``,
``next_try_at``, ``last_error``) when contacts cannot answer, and dropped with a log when no
retry can succeed (the contact is gone: ``NOT_FOUND``; the change is refused:
``INVALID_ARGUMENT``, ``ALREADY_EXISTS``); a dropped tags row also takes its change out of
the engine's ``tags`` (facts.drop_tags), which had it from the step that wrote the row.

Order. Seed 002 adds "first purchase" on the first order and removes it on the second: the
two commands of one contact must reach contacts in the order they were written. A row is
claimed only when no earlier row (``created_at``, then ``id``) of the same contact is still
waiting, and the rows of one contact in a round are sent one after the other, stopping at
the first that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.common import clock
from services.common.auth import internal_metadata
from services.common.retrying import retrying
from services.triggers.runtime import facts

log = logging.getLogger(__name__)

# Rows leased per round; each contact's rows are sent in order, contacts concurrently.
BATCH = 200
# A call that takes longer is abandoned; the lease outlives it so no other relay takes the
# row meanwhile.
CALL_TIMEOUT_S = 10.0
LEASE = timedelta(seconds=CALL_TIMEOUT_S * 3)
# Backoff after a failed call: 1 s, 2 s, 4 s ... at most 5 minutes.
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 300.0
# How long the loop sleeps when nothing is due (a wake-up from the runtime cuts it short).
IDLE_S = 0.2

# The advisory lock key that serialises claims (any constant unique to this table).
CLAIM_LOCK = 0x7472_6967_636D_6473  # "trigcmds"

# Answers after which the same call can never succeed: the row is dropped, with a log.
_NEVER = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)

_CLAIM = """
UPDATE commands SET next_try_at = $2
WHERE id IN (
    SELECT c.id FROM commands c
    WHERE c.next_try_at <= $1
      AND c.settled_version IS NULL
      AND NOT EXISTS (
          SELECT 1 FROM commands e
          WHERE e.workspace_id = c.workspace_id AND e.contact_id = c.contact_id
            AND (e.created_at, e.id) < (c.created_at, c.id)
            AND e.next_try_at > $1
            AND e.settled_version IS NULL
      )
    ORDER BY c.next_try_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING id, workspace_id::text AS workspace_id, contact_id::text AS contact_id, kind,
          payload, created_at, attempts
"""


@dataclass(frozen=True)
class Command:
    id: str
    workspace_id: str
    contact_id: str
    kind: str
    payload: dict[str, Any]
    attempts: int


def backoff(attempts: int) -> timedelta:
    """The wait before try ``attempts + 1`` (``attempts`` failed already, at least one)."""
    return timedelta(seconds=min(FIRST_BACKOFF_S * 2 ** max(attempts - 1, 0), MAX_BACKOFF_S))


class CommandRelay:
    """Leases due ``commands`` rows and carries them out through contacts' gRPC API."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        contacts: grpc.aio.Channel,
        internal_token: str,
        *,
        batch: int = BATCH,
        wake: asyncio.Event | None = None,
    ) -> None:
        self._pool = pool
        self._stub = contacts_pb2_grpc.ContactServiceStub(contacts)
        self._token = internal_token
        self._batch = batch
        # Set by whoever writes a command (in-process) so that it goes out at once.
        self.wake = wake or asyncio.Event()

    async def run(self) -> None:
        """Relay forever; a round that finds nothing due waits :data:`IDLE_S` or a wake-up.
        PostgreSQL not answering is waited out (logged, retried with backoff); any other
        error ends the loop, and the service's supervisor stops the service (exit 1)."""
        while True:
            self.wake.clear()  # before the round: a wake-up during it is not lost
            done = await retrying(self.relay_once, "command round", log)
            if done < self._batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=IDLE_S)

    async def relay_once(self) -> int:
        """One round: lease up to ``batch`` due rows, send them, settle each; the number of
        rows leased."""
        now = clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            # Claims of all relays one at a time (a few milliseconds each): two concurrent
            # claims could otherwise each take one of a contact's rows, and send them out
            # of order.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", CLAIM_LOCK)
            rows = await conn.fetch(_CLAIM, now, now + LEASE, self._batch)
        by_contact: dict[tuple[str, str], list[Command]] = defaultdict(list)
        for row in sorted(rows, key=lambda r: (r["created_at"], r["id"])):
            payload = row["payload"]
            by_contact[(row["workspace_id"], row["contact_id"])].append(
                Command(
                    id=row["id"],
                    workspace_id=row["workspace_id"],
                    contact_id=row["contact_id"],
                    kind=row["kind"],
                    payload=json.loads(payload) if isinstance(payload, str) else dict(payload),
                    attempts=row["attempts"],
                )
            )
        await asyncio.gather(*(self._relay_contact(cmds) for cmds in by_contact.values()))
        return len(rows)

    async def _relay_contact(self, commands: list[Command]) -> None:
        for index, command in enumerate(commands):
            if not await self._relay(command):
                # The later rows of this contact wait for this one: hand their lease back,
                # the claim's "no earlier row waiting" keeps them behind it.
                later = [c.id for c in commands[index + 1 :]]
                if later:
                    await self._pool.execute(
                        "UPDATE commands SET next_try_at = $2 WHERE id = ANY($1::text[])",
                        later,
                        clock.now(),
                    )
                return

    async def _relay(self, command: Command) -> bool:
        """Send one command; True when it is settled (done or dropped for good)."""
        try:
            version = await self._call(command)
        except grpc.aio.AioRpcError as err:
            if err.code() in _NEVER:
                log.error(
                    "dropping %s command %s for contact %s of workspace %s: contacts answered"
                    " %s: %s",
                    command.kind,
                    command.id,
                    command.contact_id,
                    command.workspace_id,
                    err.code().name,
                    err.details(),
                )
                if command.kind == "tags":
                    async with self._pool.acquire() as conn, conn.transaction():
                        await facts.drop_tags(
                            conn, command.id, command.workspace_id, command.contact_id
                        )
                else:
                    await self._delete(command)
                return True
            await self._back_off(command, f"{err.code().name}: {err.details()}")
            return False
        except (KeyError, TypeError, ValueError) as err:
            log.error("dropping malformed %s command %s: %r", command.kind, command.id, err)
            await self._delete(command)
            return True
        if version is None:
            await self._delete(command)
        else:
            async with self._pool.acquire() as conn, conn.transaction():
                await facts.settle_tags(
                    conn, command.id, command.workspace_id, command.contact_id, version
                )
        return True

    async def _call(self, command: Command) -> int | None:
        """Carry ``command`` out; for a tags command, the version of its change (contacts'
        answer)."""
        metadata = internal_metadata(self._token, command.workspace_id)
        ref = contacts_pb2.ContactRef(contact_id=command.contact_id)
        if command.kind == "tags":
            answer = await self._stub.ModifyTags(
                contacts_pb2.ModifyTagsRequest(
                    contact=ref,
                    add=[str(t) for t in command.payload.get("add", [])],
                    remove=[str(t) for t in command.payload.get("remove", [])],
                    idempotency_key=command.id,
                ),
                metadata=metadata,
                timeout=CALL_TIMEOUT_S,
            )
            # The version of this change (the first call's when this was a repeat), not
            # the contact's now: the overlay is covered by that version's event.
            return int(answer.version or answer.contact.version)
        if command.kind == "score":
            await self._stub.AdjustScore(
                contacts_pb2.AdjustScoreRequest(
                    contact=ref, delta=int(command.payload["delta"]), idempotency_key=command.id
                ),
                metadata=metadata,
                timeout=CALL_TIMEOUT_S,
            )
            return None
        raise ValueError(f"unknown command kind {command.kind!r}")

    async def _delete(self, command: Command) -> None:
        await self._pool.execute("DELETE FROM commands WHERE id = $1", command.id)

    async def _back_off(self, command: Command, error: str) -> None:
        attempts = command.attempts + 1
        log.warning(
            "%s command %s failed (attempt %s), retrying in %s: %s",
            command.kind,
            command.id,
            attempts,
            backoff(attempts),
            error,
        )
        await self._pool.execute(
            "UPDATE commands SET attempts = $2, next_try_at = $3, last_error = $4 WHERE id = $1",
            command.id,
            attempts,
            clock.now() + backoff(attempts),
            error[:1000],
        )
