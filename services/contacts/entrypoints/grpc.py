"""gRPC servicers of the contacts service: decode, call a handler, encode. No rules here."""

from __future__ import annotations

import hmac
import itertools

import asyncpg
import grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.shop.v1 import shop_pb2, shop_pb2_grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context

from services.common.auth import KeyCache, current_workspace
from services.common.errors import Unauthenticated, Validator
from services.common.tracing import annotate, current_traceparent
from services.contacts import consent, handlers, keys
from services.contacts.consent import SegmentMembers
from services.contacts.domain import model
from services.contacts.domain.model import NewContact
from services.contacts.ingestion import GroupCommit

tracer = trace.get_tracer(__name__)


def contact_from_proto(c: contacts_pb2.Contact, v: Validator, prefix: str) -> NewContact:
    """The profile fields of ``c`` as the domain's value (timestamps checked into ``v``)."""
    signed_up_at = (
        v.timestamp(c.signed_up_at, f"{prefix}.signed_up_at")
        if c.HasField("signed_up_at")
        else None
    )
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
    )


def new_contact_from_proto(
    request: contacts_pb2.CreateContactRequest | contacts_pb2.UpsertContactRequest,
) -> NewContact:
    v = Validator()
    # Lengths are the domain's to check; NUL characters PostgreSQL would refuse are caught here.
    v.strings(request, "", max_length=100_000)
    new = contact_from_proto(request.contact, v, "contact")
    v.raise_if_any()
    new.consents = list(request.consents)
    new.consent_source = request.consent_source or 3
    new.consent_wording = request.consent_wording
    return new


def _set_paths(c: contacts_pb2.Contact) -> list[str]:
    """The profile fields of ``c`` that are set (not their default): UpsertContact's mask
    when none is given."""
    present = {field.name for field, _ in c.ListFields()}
    return [p for p in model.PROFILE_PATHS if p in present and p != "external_id"]


class ContactServicer(contacts_pb2_grpc.ContactServiceServicer):
    """Contacts of the caller's workspace: profile, tags, score, custom attributes."""

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

    async def UpdateContact(
        self, request: contacts_pb2.UpdateContactRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.UpdateContactResponse:
        v = Validator()
        v.strings(request, "", max_length=100_000)
        patch = contact_from_proto(request.contact_patch, v, "contact_patch")
        v.raise_if_any()
        contact, changed = await handlers.update_contact(
            self.pool,
            current_workspace(),
            request.contact,
            patch,
            list(request.update_mask.paths),
            request.expected_version,
        )
        return contacts_pb2.UpdateContactResponse(contact=contact, changed=changed)

    async def UpsertContact(
        self, request: contacts_pb2.UpsertContactRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.UpsertContactResponse:
        new = new_contact_from_proto(request)
        paths = list(request.update_mask.paths) or _set_paths(request.contact)
        contact, created, changed = await handlers.upsert_contact(
            self.pool, current_workspace(), new, paths
        )
        return contacts_pb2.UpsertContactResponse(contact=contact, created=created, changed=changed)

    async def DeleteContact(
        self, request: contacts_pb2.DeleteContactRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.DeleteContactResponse:
        contact_id = await handlers.delete_contact(
            self.pool, current_workspace(), request.contact, request.HasField("contact")
        )
        return contacts_pb2.DeleteContactResponse(contact_id=contact_id)

    async def ListContacts(
        self, request: contacts_pb2.ListContactsRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.ListContactsResponse:
        contacts, token = await handlers.list_contacts(
            self.pool, current_workspace(), request.filter, request.page_size, request.page_token
        )
        return contacts_pb2.ListContactsResponse(contacts=contacts, next_page_token=token)

    async def ModifyTags(
        self, request: contacts_pb2.ModifyTagsRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.ModifyTagsResponse:
        return await handlers.modify_tags(
            self.pool,
            current_workspace(),
            request.contact,
            request.HasField("contact"),
            list(request.add),
            list(request.remove),
            request.idempotency_key,
        )

    async def BulkModifyTags(
        self, request: contacts_pb2.BulkModifyTagsRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.BulkModifyTagsResponse:
        matched, changed = await handlers.bulk_modify_tags(
            self.pool, current_workspace(), request.filter, list(request.add), list(request.remove)
        )
        return contacts_pb2.BulkModifyTagsResponse(matched=matched, changed=changed)

    async def AdjustScore(
        self, request: contacts_pb2.AdjustScoreRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.AdjustScoreResponse:
        return await handlers.adjust_score(
            self.pool,
            current_workspace(),
            request.contact,
            request.HasField("contact"),
            request.delta,
            request.idempotency_key,
        )

    async def DefineAttribute(
        self, request: contacts_pb2.DefineAttributeRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.DefineAttributeResponse:
        definition, created = await handlers.define_attribute(
            self.pool, current_workspace(), request.attribute
        )
        return contacts_pb2.DefineAttributeResponse(attribute=definition, created=created)

    async def ListAttributes(
        self, request: contacts_pb2.ListAttributesRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.ListAttributesResponse:
        return contacts_pb2.ListAttributesResponse(
            attributes=await handlers.list_attributes(self.pool, current_workspace())
        )


class ConsentServicer(contacts_pb2_grpc.ConsentServiceServicer):
    """Consent history, preferences, the suppression list, and the one question every sender
    asks: may I mail this contact?"""

    def __init__(self, pool: asyncpg.Pool, segment_members: SegmentMembers | None = None) -> None:
        self.pool = pool
        self.segment_members = segment_members

    async def RecordConsent(
        self, request: contacts_pb2.RecordConsentRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.RecordConsentResponse:
        recorded = await consent.record_consent(self.pool, current_workspace(), request)
        return contacts_pb2.RecordConsentResponse(
            consent_event_id=str(recorded.record_id),
            pending_confirmation=recorded.pending_confirmation,
        )

    async def CheckEligibility(
        self, request: contacts_pb2.CheckEligibilityRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.CheckEligibilityResponse:
        return await consent.check_eligibility(
            self.pool, current_workspace(), request.contact_id, request.purpose
        )

    async def CheckEligibilityBatch(
        self,
        request: contacts_pb2.CheckEligibilityBatchRequest,
        context: grpc.aio.ServicerContext,
    ) -> contacts_pb2.CheckEligibilityBatchResponse:
        return await consent.check_eligibility_batch(self.pool, current_workspace(), request)

    async def GetConsentHistory(
        self, request: contacts_pb2.GetConsentHistoryRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.GetConsentHistoryResponse:
        return await consent.get_consent_history(self.pool, current_workspace(), request)

    async def CountEligible(
        self, request: contacts_pb2.CountEligibleRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.CountEligibleResponse:
        return await consent.count_eligible(
            self.pool, current_workspace(), request, self.segment_members
        )

    async def AddSuppression(
        self, request: contacts_pb2.AddSuppressionRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.AddSuppressionResponse:
        return await consent.add_suppression(self.pool, current_workspace(), request)

    async def RemoveSuppression(
        self, request: contacts_pb2.RemoveSuppressionRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.RemoveSuppressionResponse:
        return await consent.remove_suppression(self.pool, current_workspace(), request)

    async def ListSuppressions(
        self, request: contacts_pb2.ListSuppressionsRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.ListSuppressionsResponse:
        return await consent.list_suppressions(self.pool, current_workspace(), request)

    async def ConfirmConsent(
        self, request: contacts_pb2.ConfirmConsentRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.ConfirmConsentResponse:
        return await consent.confirm_consent(self.pool, current_workspace(), request)

    async def GetPreferences(
        self, request: contacts_pb2.GetPreferencesRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.Preferences:
        return await consent.get_preferences(self.pool, current_workspace(), request.contact_id)

    async def SetPreferences(
        self, request: contacts_pb2.SetPreferencesRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.Preferences:
        return await consent.set_preferences(self.pool, current_workspace(), request)


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

    async def GetWorkspaceSettings(
        self, request: contacts_pb2.GetWorkspaceSettingsRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.WorkspaceSettings:
        return await consent.get_workspace_settings(self.pool, current_workspace())

    async def UpdateWorkspaceSettings(
        self,
        request: contacts_pb2.UpdateWorkspaceSettingsRequest,
        context: grpc.aio.ServicerContext,
    ) -> contacts_pb2.WorkspaceSettings:
        return await consent.update_workspace_settings(
            self.pool, current_workspace(), request.settings, request.update_mask
        )


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
        answered: list[shop_pb2.TrackEventResult] = []
        try:
            answered = await handlers.track_events(self.pool, submitted)
        finally:
            # The contact each event resolved to names its span (nothing on a failure).
            for span, result in itertools.zip_longest(spans, answered):
                contact_id = result.contact_id if result is not None else ""
                annotate(span, workspace_id=workspace_id, contact_id=contact_id)
                span.end()
        return shop_pb2.TrackEventsResponse(results=answered)


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
    # Tracking's calls for the contact of a signed link: never an API key's to make.
    "/nudge.contacts.v1.ConsentService/ConfirmConsent": "internal",
    "/nudge.contacts.v1.ConsentService/GetPreferences": "internal",
    "/nudge.contacts.v1.ConsentService/SetPreferences": "internal",
    "/nudge.contacts.v1.WorkspaceService/CreateWorkspace": "none",  # checks the admin token
    "/nudge.contacts.v1.WorkspaceService/AuthenticateApiKey": "internal",
}
