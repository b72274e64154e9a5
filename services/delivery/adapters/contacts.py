"""Asks the contacts service, just before the SMTP hand-off, whether the contact may be mailed."""

from __future__ import annotations

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
