"""gRPC servicers of the contacts service: decode, call a handler, encode. No rules here."""

from __future__ import annotations

import hmac

import asyncpg
import grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.shop.v1 import shop_pb2, shop_pb2_grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context

from services.common.auth import KeyCache, current_workspace
from services.common.errors import Unauthenticated, Validator
from services.common.tracing import current_traceparent
from services.contacts import handlers, keys
from services.contacts.domain.model import NewContact
from services.contacts.ingestion import GroupCommit

tracer = trace.get_tracer(__name__)


def new_contact_from_proto(request: contacts_pb2.CreateContactRequest) -> NewContact:
    c = request.contact
    v = Validator()
    # Lengths are the domain's to check; NUL characters PostgreSQL would refuse are caught here.
    v.strings(request, "", max_length=100_000)
    signed_up_at = (
        v.timestamp(c.signed_up_at, "contact.signed_up_at") if c.HasField("signed_up_at") else None
    )
    v.raise_if_any()
    return NewContact(
        email=c.email,
        external_id=c.external_id,
        first_name=c.first_name,
        last_name=c.last_name,
        locale=c.locale,
        time_zone=c.time_zone,
        birthday=(c.birthday.year, c.birthday.month, c.birthday.day)
        if c.HasField("birthday")
        else None,
        signed_up_at=signed_up_at,
        attributes=dict(c.attributes),
        vip=c.vip,
        tags=list(c.tags),
        consents=list(request.consents),
        consent_source=request.consent_source or 3,
        consent_wording=request.consent_wording,
    )


class ContactServicer(contacts_pb2_grpc.ContactServiceServicer):
    """Create and read contacts of the caller's workspace."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def CreateContact(
        self, request: contacts_pb2.CreateContactRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.CreateContactResponse:
        contact = await handlers.create_contact(
            self.pool, current_workspace(), new_contact_from_proto(request)
        )
        return contacts_pb2.CreateContactResponse(contact=contact)

    async def GetContact(
        self, request: contacts_pb2.GetContactRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.GetContactResponse:
        contact = await handlers.get_contact(self.pool, current_workspace(), request.contact)
        return contacts_pb2.GetContactResponse(contact=contact)


class ConsentServicer(contacts_pb2_grpc.ConsentServiceServicer):
    """Consent history and the one question every sender asks: may I mail this contact?"""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def RecordConsent(
        self, request: contacts_pb2.RecordConsentRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.RecordConsentResponse:
        event_id = await handlers.record_consent(self.pool, current_workspace(), request)
        return contacts_pb2.RecordConsentResponse(consent_event_id=event_id)

    async def CheckEligibility(
        self, request: contacts_pb2.CheckEligibilityRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.CheckEligibilityResponse:
        return await handlers.check_eligibility(
            self.pool, current_workspace(), request.contact_id, request.purpose
        )


class WorkspaceServicer(contacts_pb2_grpc.WorkspaceServiceServicer):
    """Workspaces (operators, with the admin token) and API key checks (Nudge's services)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        admin_token: str,
        *,
        key_cache: KeyCache,
        key_use: keys.LastUsedRecorder,
    ) -> None:
        self.pool = pool
        self.admin_token = admin_token
        self.key_cache = key_cache
        self.key_use = key_use

    async def CreateWorkspace(
        self, request: contacts_pb2.CreateWorkspaceRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.CreateWorkspaceResponse:
        metadata = dict(context.invocation_metadata() or ())
        offered = str(metadata.get("authorization", "")).removeprefix("Admin ")
        if not self.admin_token or not hmac.compare_digest(offered, self.admin_token):
            raise Unauthenticated("creating a workspace needs 'authorization: Admin <token>'")
        workspace_id, api_key = await handlers.create_workspace(
            self.pool, request.name, request.slug, request.consent_required_for_campaigns
        )
        return contacts_pb2.CreateWorkspaceResponse(workspace_id=workspace_id, api_key=api_key)

    async def AuthenticateApiKey(
        self, request: contacts_pb2.AuthenticateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.AuthenticateApiKeyResponse:
        check = await keys.authenticate(self.pool, request.api_key)
        self.key_use.saw(check.principal.key_id)
        answer = contacts_pb2.AuthenticateApiKeyResponse(
            workspace_id=check.principal.workspace_id,
            key_id=check.principal.key_id,
            workspace_name=check.workspace_name,
        )
        if check.expires_at is not None:
            answer.expires_at.FromDatetime(check.expires_at)
        return answer

    async def CreateApiKey(
        self, request: contacts_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.CreateApiKeyResponse:
        key, api_key = await keys.create_key(self.pool, current_workspace(), request.name)
        return contacts_pb2.CreateApiKeyResponse(key=key, api_key=api_key)

    async def ListApiKeys(
        self, request: contacts_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.ListApiKeysResponse:
        found = await keys.list_keys(self.pool, current_workspace(), request.include_revoked)
        return contacts_pb2.ListApiKeysResponse(keys=found)

    async def RevokeApiKey(
        self, request: contacts_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.RevokeApiKeyResponse:
        key = await keys.revoke_key(self.pool, self.key_cache, current_workspace(), request.key_id)
        return contacts_pb2.RevokeApiKeyResponse(key=key)

    async def RotateApiKey(
        self, request: contacts_pb2.RotateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.RotateApiKeyResponse:
        new, api_key, old = await keys.rotate_key(
            self.pool,
            self.key_cache,
            current_workspace(),
            request.key_id,
            request.overlap if request.HasField("overlap") else None,
        )
        return contacts_pb2.RotateApiKeyResponse(new_key=new, api_key=api_key, old_key=old)


class ShopEventServicer(shop_pb2_grpc.ShopEventServiceServicer):
    """Ingestion of what customers did in the shop, once per idempotency key. Single events
    go through a group commit (see services/contacts/ingestion.py); a batch is one
    transaction of its own."""

    def __init__(self, pool: asyncpg.Pool, group_commit: GroupCommit) -> None:
        self.pool = pool
        self.group_commit = group_commit

    async def TrackEvent(
        self, request: shop_pb2.TrackEventRequest, context: grpc.aio.ServicerContext
    ) -> shop_pb2.TrackEventResponse:
        result = await self.group_commit.track(current_workspace(), request)
        return handlers.single_event_answer(result)

    async def TrackEvents(
        self, request: shop_pb2.TrackEventsRequest, context: grpc.aio.ServicerContext
    ) -> shop_pb2.TrackEventsResponse:
        workspace_id = current_workspace()
        v = Validator()
        count = len(request.events)
        # An empty batch is a no-op, not an error: the caller was authenticated all the same,
        # which is how the gateway checks the key of a batch whose every event it refused.
        v.check(
            count <= handlers.MAX_EVENTS_PER_CALL,
            "events",
            f"{count} events: at most {handlers.MAX_EVENTS_PER_CALL} a call",
        )
        v.raise_if_any()
        parents = event_traceparents(context, count)
        if parents is None:
            headers = current_traceparent()
            results = await handlers.track_events(
                self.pool,
                [handlers.SubmittedEvent(workspace_id, e, headers) for e in request.events],
            )
            return shop_pb2.TrackEventsResponse(results=results)
        # Events coalesced from separate requests (the gateway's POST /v1/events): each event
        # gets a span in its own request's trace, linked to this call's span, and its outbox
        # row carries that span, so the consumers continue the request's trace.
        batch_span = trace.get_current_span().get_span_context()
        links = [trace.Link(batch_span)] if batch_span.is_valid else []
        spans = [
            tracer.start_span(
                "shop event ingest",
                context=propagate.extract({"traceparent": parent}) if parent else Context(),
                links=links,
            )
            for parent in parents
        ]
        submitted = []
        for span, event in zip(spans, request.events, strict=True):
            with trace.use_span(span, end_on_exit=False):
                submitted.append(
                    handlers.SubmittedEvent(workspace_id, event, current_traceparent())
                )
        try:
            results = await handlers.track_events(self.pool, submitted)
        finally:
            for span in spans:
                span.end()
        return shop_pb2.TrackEventsResponse(results=results)


EVENT_TRACEPARENTS = "nudge-event-traceparents"
"""Metadata of a TrackEvents call: each event's W3C traceparent, in order, comma-separated
(set by the gateway when it coalesces single requests; see its adapters/ingest_batcher.py)."""


def event_traceparents(context: grpc.aio.ServicerContext, count: int) -> list[str] | None:
    """The per-event trace parents of this call, or None when there are none (or not one per
    event: then the call's own trace context applies to every event, as without them)."""
    for key, value in context.invocation_metadata() or ():
        if key == EVENT_TRACEPARENTS:
            parents = str(value).split(",")
            return parents if len(parents) == count else None
    return None


AUTH_POLICY = {
    "/nudge.contacts.v1.WorkspaceService/CreateWorkspace": "none",  # checks the admin token
    "/nudge.contacts.v1.WorkspaceService/AuthenticateApiKey": "internal",
}
