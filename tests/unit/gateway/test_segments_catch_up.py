"""A contact just created is not "not found" to its segments: the gateway waits for
segmentation to catch up with contacts.events.v1 (services/gateway/entrypoints/segments.py).
Schemathesis's stateful phase found the false 404 (ST302) by asking at once."""

from __future__ import annotations

import grpc
import pytest
from nudge.contacts.v1 import contacts_pb2
from nudge.segmentation.v1 import segmentation_pb2

from services.gateway.entrypoints import segments
from tests.unit.gateway.conftest import AUTH, Gateway
from tests.unit.gateway.fakes import rpc_error

CONTACT = "0dbe480c-51d2-4547-956b-3ad48ab4f916"
UNKNOWN = rpc_error(grpc.StatusCode.NOT_FOUND, f"contact {CONTACT!r} not found")


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segments, "CATCH_UP_POLL_S", 0.001)
    monkeypatch.setattr(segments, "CATCH_UP_S", 0.2)


def known_after(misses: int) -> object:
    """ListContactSegments as segmentation answers it while the contact's event is on its way:
    ``misses`` times not found, then the contact's segments."""
    asked = 0

    def answer(request: segmentation_pb2.ListContactSegmentsRequest) -> object:
        nonlocal asked
        asked += 1
        if asked <= misses:
            raise UNKNOWN
        found = segmentation_pb2.ListContactSegmentsResponse()
        found.segments.add(id="new_customers", name="New customers")
        found.as_of.FromSeconds(1_700_000_000)
        return found

    return answer


async def test_a_contact_segmentation_has_not_received_yet_is_awaited(gateway: Gateway) -> None:
    gateway.contacts.answers["GetContact"] = contacts_pb2.GetContactResponse(
        contact=contacts_pb2.Contact(id=CONTACT)
    )
    gateway.segments.answers["ListContactSegments"] = known_after(3)
    answer = await gateway.http.get(f"/v1/contacts/{CONTACT}/segments", headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert [s["id"] for s in answer.json()["segments"]] == ["new_customers"]
    asked = [m for m, _, _ in gateway.segments.calls]
    assert asked == ["ListContactSegments"] * 4
    assert [m for m, _, _ in gateway.contacts.calls] == ["GetContact"]


async def test_a_contact_contacts_does_not_know_is_404_at_once(gateway: Gateway) -> None:
    gateway.contacts.answers["GetContact"] = rpc_error(grpc.StatusCode.NOT_FOUND, "no contact")
    gateway.segments.answers["ListContactSegments"] = UNKNOWN
    answer = await gateway.http.get(f"/v1/contacts/{CONTACT}/segments", headers=AUTH)
    assert answer.status_code == 404, answer.text
    assert answer.json()["detail"] == f"contact {CONTACT!r} not found"
    assert len(gateway.segments.calls) == 1


async def test_segmentation_that_never_catches_up_is_503_with_retry_after(
    gateway: Gateway,
) -> None:
    gateway.contacts.answers["GetContact"] = contacts_pb2.GetContactResponse(
        contact=contacts_pb2.Contact(id=CONTACT)
    )
    gateway.segments.answers["ExplainMembership"] = UNKNOWN
    answer = await gateway.http.get(f"/v1/segments/vip/explain/{CONTACT}", headers=AUTH)
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    assert "has not received it yet" in answer.json()["detail"]
    assert len(gateway.segments.calls) > 1


async def test_an_unknown_segment_is_not_awaited(gateway: Gateway) -> None:
    gateway.segments.answers["ExplainMembership"] = rpc_error(
        grpc.StatusCode.NOT_FOUND, "segment 'nope' not found"
    )
    answer = await gateway.http.get(f"/v1/segments/nope/explain/{CONTACT}", headers=AUTH)
    assert answer.status_code == 404, answer.text
    assert gateway.contacts.calls == [] and len(gateway.segments.calls) == 1
