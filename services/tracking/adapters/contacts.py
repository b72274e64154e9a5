"""The contacts service as tracking needs it: the preferences and the double opt-in
confirmation of the contact a verified link names, with the internal token and the link's
workspace (the link is the contact's credential; tracking holds no API key)."""

from __future__ import annotations

from typing import Protocol

import grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.common.auth import internal_metadata
from services.common.links import LinkClaims

TIMEOUT_S = 5.0


class ConsentClient(Protocol):
    async def get_preferences(self, claims: LinkClaims) -> contacts_pb2.Preferences: ...

    async def set_preferences(
        self, claims: LinkClaims, request: contacts_pb2.SetPreferencesRequest
    ) -> contacts_pb2.Preferences: ...

    async def confirm(
        self, claims: LinkClaims, token: str, ip: str, user_agent: str
    ) -> contacts_pb2.ConfirmConsentResponse: ...


class GrpcConsentClient:
    def __init__(self, channel: grpc.aio.Channel, internal_token: str) -> None:
        self._stub = contacts_pb2_grpc.ConsentServiceStub(channel)
        self._token = internal_token

    async def get_preferences(self, claims: LinkClaims) -> contacts_pb2.Preferences:
        answer: contacts_pb2.Preferences = await self._stub.GetPreferences(
            contacts_pb2.GetPreferencesRequest(contact_id=claims.contact_id),
            metadata=internal_metadata(self._token, claims.workspace_id),
            timeout=TIMEOUT_S,
        )
        return answer

    async def set_preferences(
        self, claims: LinkClaims, request: contacts_pb2.SetPreferencesRequest
    ) -> contacts_pb2.Preferences:
        request.contact_id = claims.contact_id
        answer: contacts_pb2.Preferences = await self._stub.SetPreferences(
            request,
            metadata=internal_metadata(self._token, claims.workspace_id),
            timeout=TIMEOUT_S,
        )
        return answer

    async def confirm(
        self, claims: LinkClaims, token: str, ip: str, user_agent: str
    ) -> contacts_pb2.ConfirmConsentResponse:
        answer: contacts_pb2.ConfirmConsentResponse = await self._stub.ConfirmConsent(
            contacts_pb2.ConfirmConsentRequest(
                token=token,
                ip=ip,
                user_agent=user_agent,
                message_id=claims.message_id,
                contact_id=claims.contact_id,
            ),
            metadata=internal_metadata(self._token, claims.workspace_id),
            timeout=TIMEOUT_S,
        )
        return answer
