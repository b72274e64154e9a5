"""The engine's view of a contact's tags (runtime/facts.fold_tags) must be what contacts makes
of the same changes (contacts' domain.model.modify_tags), or the overlays kept on top of
contacts' events would predict a state contacts never reaches."""

from __future__ import annotations

import pytest

from services.contacts.domain.model import modify_tags
from services.triggers.runtime.facts import fold_tags

CASES = [
    ([], [(["first_purchase"], [])]),
    (["first_purchase"], [(["repeat_customer"], ["first_purchase"])]),
    (["a"], [(["b"], []), ([], ["b"]), (["c"], ["a"])]),
    (["a"], [(["a"], ["a"])]),  # a tag both added and removed in one change is added
    (["x", "y"], [([], ["x"]), (["x"], ["y"]), ([], [])]),
]


@pytest.mark.parametrize(("base", "changes"), CASES)
def test_folding_changes_gives_what_contacts_makes_of_them(
    base: list[str], changes: list[tuple[list[str], list[str]]]
) -> None:
    expected = base
    for add, remove in changes:
        expected = modify_tags(expected, add, remove)
    assert fold_tags(base, changes) == expected
