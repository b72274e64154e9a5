"""The From a preview shows: the workspace's name, quoted when RFC 5322 needs it, and the
platform's no-reply address."""

from __future__ import annotations

import pytest

from services.campaigns.content_handlers import sender


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Test shop", "Test shop <no-reply@nudge.localhost>"),
        ("Café, Lumière", '"Café, Lumière" <no-reply@nudge.localhost>'),
        ('A "B"', '"A \\"B\\"" <no-reply@nudge.localhost>'),
        ("", "no-reply@nudge.localhost"),
    ],
)
def test_the_sender_names_the_workspace(name: str, expected: str) -> None:
    assert sender(name, "no-reply@nudge.localhost") == expected
