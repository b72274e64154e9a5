"""Across the two services: a contact changed through contacts' gRPC API (create, update,
tags, score, consent, delete) is followed by segmentation's read model at the same version,
through contacts' outbox, Kafka and segmentation's consumer, all real."""

from __future__ import annotations

import json

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from tests.integration.conftest import RunningService, Workspace
from tests.integration.segmentation.test_read_model import (
    at_version,
    order_ids,
    profile,
    tombstone,
)
from tests.integration.segmentation.test_segments_grpc import reaches
from tests.support import eventually, unique

C = contacts_pb2


async def test_every_change_made_through_contacts_reaches_the_read_model_at_its_version(
    contacts_service: RunningService,
    segmentation_service: RunningService,
    workspace: Workspace,
) -> None:
    md = workspace.metadata
    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        contacts = contacts_pb2_grpc.ContactServiceStub(ch)
        consent = contacts_pb2_grpc.ConsentServiceStub(ch)
        email = f"{unique('follow')}@example.com"
        created = (
            await contacts.CreateContact(
                C.CreateContactRequest(contact=C.Contact(email=email, tags=["new"])), metadata=md
            )
        ).contact
        ref = C.ContactRef(contact_id=created.id)
        p = await at_version(workspace.id, created.id, created.version)
        assert (p["email"], p["tags"], p["vip"]) == (email, ["new"], False)
        await reaches(segmentation_service, md, {"vip": 0})

        updated = (
            await contacts.UpdateContact(
                C.UpdateContactRequest(
                    contact=ref,
                    contact_patch=C.Contact(vip=True, first_name="Ada"),
                    update_mask=FieldMask(paths=["vip", "first_name"]),
                ),
                metadata=md,
            )
        ).contact
        assert updated.version == created.version + 1
        p = await at_version(workspace.id, created.id, updated.version)
        assert p["vip"] is True
        await reaches(segmentation_service, md, {"vip": 1})  # membership re-evaluated

        tagged = await contacts.ModifyTags(
            C.ModifyTagsRequest(contact=ref, add=["gold"], remove=["new"]), metadata=md
        )
        p = await at_version(workspace.id, created.id, tagged.contact.version)
        assert p["tags"] == ["gold"]

        scored = await contacts.AdjustScore(
            C.AdjustScoreRequest(contact=ref, delta=15), metadata=md
        )
        p = await at_version(workspace.id, created.id, scored.version)
        assert p["score"] == 15

        await consent.RecordConsent(
            C.RecordConsentRequest(
                contact=ref,
                purpose=C.CONSENT_PURPOSE_MARKETING,
                status=C.CONSENT_STATUS_GRANTED,
                source=C.CONSENT_SOURCE_FORM,
                wording="Send me news",
            ),
            metadata=md,
        )
        now = (await contacts.GetContact(C.GetContactRequest(contact=ref), metadata=md)).contact
        assert now.version == scored.version + 1
        p = await at_version(workspace.id, created.id, now.version)
        assert json.loads(p["consents"])["marketing"]["state"] == "granted"

        await contacts.DeleteContact(C.DeleteContactRequest(contact=ref), metadata=md)
        stone = await eventually(
            lambda: tombstone(workspace.id, created.id), timeout=60, interval=0.1
        )
        assert stone["version"] == now.version + 1
        assert await profile(workspace.id, created.id) is None
        assert await order_ids(workspace.id, created.id) == []
        await reaches(segmentation_service, md, {"vip": 0})
