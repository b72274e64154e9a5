"""Asks the contacts service, just before the SMTP hand-off, whether the contact may be mailed."""

from __future__ import annotations

import grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.common.auth import internal_metadata


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
