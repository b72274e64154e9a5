"""Asks the contacts service, just before the SMTP hand-off, whether the contact may be mailed."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence

import grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.common.auth import internal_metadata

# CheckEligibilityBatch's own limit (services/contacts/consent.py).
MAX_BATCH = 1000


class EligibilityClient:
    def __init__(self, channel: grpc.aio.Channel, internal_token: str) -> None:
        self._stub = contacts_pb2_grpc.ConsentServiceStub(channel)
        self._token = internal_token

    async def check(
        self, workspace_id: str, contact_id: str, purpose: int
    ) -> contacts_pb2.CheckEligibilityResponse | None:
        """The contact's eligibility, or None when the contact does not exist (erased)."""
        try:
            answer: contacts_pb2.CheckEligibilityResponse = await self._stub.CheckEligibility(
                contacts_pb2.CheckEligibilityRequest(contact_id=contact_id, purpose=purpose),  # type: ignore[arg-type]
                metadata=internal_metadata(self._token, workspace_id),
                timeout=5,
            )
            return answer
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def check_many(
        self, workspace_id: str, checks: Sequence[tuple[str, int]]
    ) -> list[contacts_pb2.CheckEligibilityResponse | None]:
        """The eligibility of each ``(contact_id, purpose)``, in order (None where the contact
        does not exist), asked :data:`MAX_BATCH` at a time: one RPC and one query per batch of
        mail instead of one per mail."""
        answers: list[contacts_pb2.CheckEligibilityResponse | None] = []
        for start in range(0, len(checks), MAX_BATCH):
            chunk = checks[start : start + MAX_BATCH]
            response: contacts_pb2.CheckEligibilityBatchResponse = (
                await self._stub.CheckEligibilityBatch(
                    contacts_pb2.CheckEligibilityBatchRequest(
                        checks=[
                            contacts_pb2.CheckEligibilityRequest(
                                contact_id=contact_id,
                                purpose=purpose,  # type: ignore[arg-type]
                            )
                            for contact_id, purpose in chunk
                        ]
                    ),
                    metadata=internal_metadata(self._token, workspace_id),
                    timeout=10,
                )
            )
            if len(response.answers) != len(chunk):
                raise RuntimeError(
                    f"contacts answered {len(response.answers)} checks of {len(chunk)}"
                )
            answers += [a.eligibility if a.found else None for a in response.answers]
        return answers


Answer = contacts_pb2.CheckEligibilityResponse | None


class EligibilityBatcher:
    """``check()`` as :class:`EligibilityClient` has it, for handlers that run one message
    each, but the checks of all the handlers waiting at the same moment go to contacts as one
    :meth:`EligibilityClient.check_many` per workspace: while one batch is asked, the next
    gathers. Nothing is cached: every answer is asked after its handler asked, so a consent
    withdrawn before that is honoured. A failed call fails each of its waiters with its error.
    """

    def __init__(self, client: EligibilityClient) -> None:
        self._client = client
        self._pending: dict[str, list[tuple[str, int, asyncio.Future[Answer]]]] = (
            collections.defaultdict(list)
        )
        self._scheduled = False
        self._asking: set[asyncio.Task[None]] = set()
        self.calls = 0

    async def check(self, workspace_id: str, contact_id: str, purpose: int) -> Answer:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        self._pending[workspace_id].append((contact_id, purpose, future))
        if not self._scheduled:
            # After the handlers that are ready now have asked too.
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, collections.defaultdict(list)
        for workspace_id, items in pending.items():
            for start in range(0, len(items), MAX_BATCH):
                task = asyncio.create_task(
                    self._ask(workspace_id, items[start : start + MAX_BATCH])
                )
                self._asking.add(task)
                task.add_done_callback(self._asking.discard)

    async def _ask(
        self, workspace_id: str, items: list[tuple[str, int, asyncio.Future[Answer]]]
    ) -> None:
        self.calls += 1
        try:
            answers = await self._client.check_many(workspace_id, [(c, p) for c, p, _ in items])
        except Exception as err:
            for _, _, future in items:
                if not future.done():
                    future.set_exception(err)
            return
        for (_, _, future), answer in zip(items, answers, strict=True):
            if not future.done():
                future.set_result(answer)
