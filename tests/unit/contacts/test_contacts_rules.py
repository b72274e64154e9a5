"""Contacts' pure rules of issue 12: e-mail refusals, typed attributes, patches, tags."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.common.contact_limits import check_email
from services.common.errors import InvalidArgument, Validator
from services.contacts.domain import attributes
from services.contacts.domain.model import (
    NewContact,
    apply_patch,
    check_mask,
    modify_tags,
    validate_new_contact,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
NUMBER, BOOLEAN, DATE, STRING = 2, 3, 4, 1


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("ada.example.com", "must have an @-sign"),
        ("ada@example", "It should have a period"),
        ("ada@@example.com", "invalid characters: '@'"),
        ("a b@example.com", "invalid characters before the @-sign: SPACE"),
        ("ada@x.test", "special-use or reserved name"),
        ("a" * 250 + "@example.com", "longer than 254"),
    ],
)
def test_a_refused_address_says_precisely_why(address: str, reason: str) -> None:
    normalised, why = check_email(address)
    assert normalised == ""
    assert reason in why


def test_a_valid_address_comes_back_with_its_domain_in_lower_case() -> None:
    assert check_email("Ada.Lovelace+news@Example.COM") == ("Ada.Lovelace+news@example.com", "")
    contact = NewContact(email="  Ada@Example.COM ")
    validate_new_contact(contact, NOW)
    assert contact.email == "Ada@example.com"


def test_the_reason_reaches_the_field_violation() -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_new_contact(NewContact(email="nobody.example.com"), NOW)
    (violation,) = err.value.violations
    assert violation.field == "contact.email"
    assert "must have an @-sign" in violation.description


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (NUMBER, ["12", "-3.50", "0"], ["12,5", "1e3", "NaN", "", "twelve"]),
        (BOOLEAN, ["true", "false"], ["TRUE", "yes", "1", ""]),
        (DATE, ["2026-02-28", "2024-02-29"], ["2026-02-29", "28/02/2026", "2026-2-28"]),
        (STRING, ["", "anything"], ["x" * 1025]),
    ],
)
def test_attribute_values_are_checked_against_the_declared_type(
    kind: int, good: list[str], bad: list[str]
) -> None:
    assert all(attributes.is_valid(kind, value) for value in good)
    assert not any(attributes.is_valid(kind, value) for value in bad)


def test_unknown_and_mistyped_attributes_are_named_by_their_path() -> None:
    contact = NewContact(email="a@example.com", attributes={"spent": "lots", "shoe": "42"})
    with pytest.raises(InvalidArgument) as err:
        validate_new_contact(contact, NOW, {"spent": NUMBER})
    assert [(v.field, v.description[:20]) for v in err.value.violations] == [
        ("contact.attributes.shoe", "unknown attribute: d"),
        ("contact.attributes.spent", "must be a decimal nu"),
    ]
    validate_new_contact(
        NewContact(email="a@example.com", attributes={"spent": "4.5"}), NOW, {"spent": NUMBER}
    )


def test_a_patch_reports_only_the_fields_it_changed() -> None:
    current = NewContact(
        email="ada@example.com", first_name="Ada", tags=["b", "a"], attributes={"city": "Rome"}
    )
    patch = NewContact(email="ada@EXAMPLE.com", first_name="Ada", last_name="L", tags=["a", "b"])
    new, changed, touched = apply_patch(
        current, patch, ["email", "first_name", "last_name", "tags", "attributes.city"]
    )
    assert changed == ["last_name", "attributes.city"]  # same address, same tag set
    assert new.attributes == {}  # attributes.<name> absent from the patch: removed
    assert touched == set()
    _, changed, touched = apply_patch(
        current, NewContact(email="", attributes={"city": "Oslo"}), ["attributes"]
    )
    assert (changed, touched) == (["attributes"], {"city"})


def test_a_mask_must_name_known_fields() -> None:
    v = Validator()
    check_mask(v, [])
    check_mask(v, ["first_name", "score", "attributes.Bad"])
    assert [x.field for x in v.violations] == [
        "update_mask.paths",
        "update_mask.paths[1]",
        "update_mask.paths[2]",
    ]


def test_tags_add_and_remove_as_sets() -> None:
    assert modify_tags(["a", "b"], ["c", "a"], ["b", "zz"]) == ["a", "c"]
    assert modify_tags(["a"], [], ["a"]) == []


def test_attribute_violations_come_with_the_others_each_once() -> None:
    contact = NewContact(
        email="nobody.example.com", attributes={"shoe": "42", "note": "x" * 2000}, tags=["B"]
    )
    with pytest.raises(InvalidArgument) as err:
        validate_new_contact(contact, NOW, {"note": STRING})
    assert [v.field for v in err.value.violations] == [
        "contact.email",
        "contact.attributes.note",
        "contact.attributes.shoe",
        "contact.tags[0]",
    ]
