"""Open and click tokens that carry the mail's issue time and the link's index (version 2),
beside the version 1 tokens of mails sent before, which must keep working."""

from __future__ import annotations

import base64
import uuid

import pytest

from services.common import links

SECRET = "unit-secret"
WS, MSG, CONTACT = (str(uuid.uuid4()) for _ in range(3))
URL = "https://shop.example/sale"


def token(path: str) -> str:
    return path.split("/")[2].removesuffix(".gif")


def test_a_tracked_click_carries_its_index_and_issue_time() -> None:
    path = links.sign_click(SECRET, WS, MSG, CONTACT, URL, link_index=7, issued_at=1_790_000_123)
    claims = links.verify(SECRET, token(path), links.LinkKind.CLICK)
    assert (claims.url, claims.link_index, claims.issued_at) == (URL, 7, 1_790_000_123)
    assert (claims.workspace_id, claims.message_id, claims.contact_id) == (WS, MSG, CONTACT)


def test_a_tracked_open_carries_its_issue_time() -> None:
    path = links.sign_open(SECRET, WS, MSG, CONTACT, issued_at=1_790_000_123)
    claims = links.verify(SECRET, token(path), links.LinkKind.OPEN)
    assert (claims.issued_at, claims.link_index, claims.url) == (1_790_000_123, -1, "")


def test_version_1_links_still_verify_with_unknown_time_and_index() -> None:
    click = links.verify(SECRET, token(links.sign_click(SECRET, WS, MSG, CONTACT, URL)))
    opened = links.verify(SECRET, token(links.sign_open(SECRET, WS, MSG, CONTACT)))
    assert (click.url, click.issued_at, click.link_index) == (URL, 0, -1)
    assert (opened.issued_at, opened.link_index) == (0, -1)


def test_the_issue_time_and_index_are_inside_the_signature() -> None:
    path = links.sign_click(SECRET, WS, MSG, CONTACT, URL, link_index=1, issued_at=1_790_000_000)
    raw = bytearray(base64.urlsafe_b64decode(token(path) + "=" * (-len(token(path)) % 4)))
    time_at = 2 + 17 * 3  # version, kind, three UUIDs
    for offset in (time_at + 3, time_at + 5):  # the last byte of the time, of the index
        forged = bytearray(raw)
        forged[offset] ^= 1
        text = base64.urlsafe_b64encode(bytes(forged)).rstrip(b"=").decode()
        with pytest.raises(links.InvalidLink):
            links.verify(SECRET, text)


def test_a_link_of_another_workspace_keeps_that_workspace() -> None:
    """The workspace is signed: whatever a token says, it says for the workspace it was signed
    for, and changing it breaks the signature."""
    other = str(uuid.uuid4())
    path = links.sign_click(SECRET, other, MSG, CONTACT, URL, link_index=0, issued_at=1)
    assert links.verify(SECRET, token(path)).workspace_id == other
    raw = bytearray(base64.urlsafe_b64decode(token(path) + "=" * (-len(token(path)) % 4)))
    raw[3:19] = uuid.UUID(WS).bytes
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(links.InvalidLink):
        links.verify(SECRET, forged)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"link_index": 1}, "both"),
        ({"issued_at": 5}, "both"),
        ({"link_index": -1, "issued_at": 5}, "link_index"),
        ({"link_index": 70_000, "issued_at": 5}, "link_index"),
        ({"link_index": 0, "issued_at": 0}, "issued_at"),
        ({"link_index": 0, "issued_at": 2**32}, "issued_at"),
    ],
)
def test_bad_index_or_time_is_refused_when_signing(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        links.sign_click(SECRET, WS, MSG, CONTACT, URL, **kwargs)
