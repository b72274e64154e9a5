"""Consent and delivery-request rules in the contract's names: the domain's mirrors of the
gRPC enums agree with the contract, and the rules accept exactly the values they name."""

from __future__ import annotations

from enum import IntEnum

import pytest
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2

from services.common.errors import InvalidArgument, Validator
from services.contacts.domain import model
from services.delivery.domain.requests import is_actionable


@pytest.mark.parametrize(
    ("mirror", "contract", "prefix"),
    [
        (model.Purpose, contacts_pb2.ConsentPurpose, "CONSENT_PURPOSE_"),
        (model.ConsentStatus, contacts_pb2.ConsentStatus, "CONSENT_STATUS_"),
        (model.ConsentSource, contacts_pb2.ConsentSource, "CONSENT_SOURCE_"),
    ],
)
def test_the_domain_mirrors_the_contracts_enums(
    mirror: type[IntEnum], contract: object, prefix: str
) -> None:
    names = contract.keys()  # type: ignore[attr-defined]
    expected = {
        name.removeprefix(prefix): contract.Value(name)  # type: ignore[attr-defined]
        for name in names
        if not name.endswith("_UNSPECIFIED")
    }
    assert {m.name: m.value for m in mirror} == expected


def refused(purpose: int, status: int, source: int) -> set[str]:
    v = Validator()
    model.check_consent_change(v, purpose, status, source)
    try:
        v.raise_if_any()
    except InvalidArgument as err:
        return {violation.field for violation in err.violations}
    return set()


def test_consent_is_recorded_for_every_purpose_it_is_asked_for() -> None:
    for purpose in model.CONSENT_PURPOSES:
        for status in model.RECORDABLE_STATUSES:
            for source in model.RECORDABLE_SOURCES:
                assert refused(purpose, status, source) == set()


def test_a_consent_to_transactional_mail_or_an_unset_value_is_refused() -> None:
    granted, form = model.ConsentStatus.GRANTED, model.ConsentSource.FORM
    assert refused(contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL, granted, form) == {"purpose"}
    assert refused(contacts_pb2.CONSENT_PURPOSE_UNSPECIFIED, granted, form) == {"purpose"}
    assert refused(model.Purpose.MARKETING, contacts_pb2.CONSENT_STATUS_UNSPECIFIED, form) == {
        "status"
    }
    assert refused(model.Purpose.MARKETING, granted, 0) == {"source"}
    # PENDING and CONFIRMATION_LINK are the double opt-in flow's own, never recorded by hand.
    pending, link = model.ConsentStatus.PENDING, model.ConsentSource.CONFIRMATION_LINK
    assert refused(model.Purpose.MARKETING, pending, link) == {"status", "source"}
    assert refused(model.Purpose.MARKETING, 4, 7) == {"status", "source"}


def test_a_delivery_request_needs_a_purpose_and_a_kind_the_contract_defines() -> None:
    purposes = [v for k, v in contacts_pb2.ConsentPurpose.items() if not k.endswith("UNSPECIFIED")]
    kinds = [v for k, v in delivery_pb2.MessageKind.items() if not k.endswith("UNSPECIFIED")]
    assert all(is_actionable(p, k) for p in purposes for k in kinds)
    assert not is_actionable(contacts_pb2.CONSENT_PURPOSE_UNSPECIFIED, kinds[0])
    assert not is_actionable(purposes[0], delivery_pb2.MESSAGE_KIND_UNSPECIFIED)
    assert not is_actionable(max(purposes) + 1, kinds[0])
    assert not is_actionable(purposes[0], max(kinds) + 1)
