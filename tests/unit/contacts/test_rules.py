from datetime import UTC, datetime, timedelta

import pytest

from services.common.errors import InvalidArgument
from services.contacts.domain.model import (
    ConsentStatus,
    NewContact,
    Purpose,
    is_eligible,
    validate_new_contact,
    validate_workspace,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def fields_of(err: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in err.value.violations]


def violations(contact: NewContact) -> list[str]:
    """The fields ``validate_new_contact`` refuses; [] when it accepts the contact."""
    try:
        validate_new_contact(contact, NOW)
    except InvalidArgument as err:
        return [v.field for v in err.violations]
    return []


def test_a_plain_contact_is_valid_and_its_nearest_broken_twin_is_not() -> None:
    assert violations(NewContact(email="ada@example.com", locale="it-IT")) == []
    assert violations(NewContact(email="ada@example", locale="it-IT")) == ["contact.email"]
    assert violations(NewContact(email="ada@example.com", locale="it IT")) == ["contact.locale"]


def test_every_bad_field_is_reported_at_once() -> None:
    contact = NewContact(
        email="not-an-address",
        locale="??",
        time_zone="Mars/Olympus",
        birthday=(1990, 2, 30),
        tags=["Bad Tag"],
        consents=[Purpose.TRANSACTIONAL],
        signed_up_at=NOW + timedelta(days=1),
    )
    with pytest.raises(InvalidArgument) as err:
        validate_new_contact(contact, NOW)
    assert fields_of(err) == [
        "contact.email",
        "contact.locale",
        "contact.time_zone",
        "contact.birthday",
        "contact.signed_up_at",
        "contact.tags[0]",
        "consents[0]",
    ]


def test_a_birthday_without_a_year_may_be_29_february() -> None:
    assert violations(NewContact(email="a@example.com", birthday=(0, 2, 29))) == []
    # ...but not in a given year that has none, nor on the 30th.
    assert violations(NewContact(email="a@example.com", birthday=(1990, 2, 29))) == [
        "contact.birthday"
    ]
    assert violations(NewContact(email="a@example.com", birthday=(0, 2, 30))) == [
        "contact.birthday"
    ]


def test_oversized_attributes_are_rejected() -> None:
    contact = NewContact(email="a@example.com", attributes={"note": "x" * 5000})
    with pytest.raises(InvalidArgument) as err:
        validate_new_contact(contact, NOW)
    assert fields_of(err) == ["contact.attributes.note"]


def test_workspace_slug_must_be_url_safe() -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_workspace("Shop", "Not A Slug")
    assert fields_of(err) == ["slug"]


@pytest.mark.parametrize(
    ("purpose", "consent", "suppressed", "required", "expected"),
    [
        (Purpose.AUTOMATIONS, ConsentStatus.GRANTED, False, True, (True, "")),
        (Purpose.AUTOMATIONS, None, False, False, (False, "no_consent:automations")),
        (Purpose.MARKETING, None, False, False, (True, "")),
        (Purpose.MARKETING, None, False, True, (False, "no_consent:marketing")),
        (
            Purpose.MARKETING,
            ConsentStatus.WITHDRAWN,
            False,
            False,
            (False, "consent_withdrawn:marketing"),
        ),
        (Purpose.TRANSACTIONAL, None, False, True, (True, "")),
        (Purpose.TRANSACTIONAL, ConsentStatus.GRANTED, True, True, (False, "suppressed")),
        (Purpose.AUTOMATIONS, ConsentStatus.GRANTED, True, True, (False, "suppressed")),
    ],
)
def test_eligibility(
    purpose: int, consent: int | None, suppressed: bool, required: bool, expected: tuple[bool, str]
) -> None:
    assert is_eligible(purpose, consent, suppressed, required) == expected
