"""Signed tracking links: they round-trip, and nothing else verifies."""

from __future__ import annotations

import base64
import uuid

import pytest

from services.common import links
from services.common.links import InvalidLink, LinkKind

SECRET = "test-secret"
WS, MSG, CONTACT = (str(uuid.uuid4()) for _ in range(3))


def token_of(path: str) -> str:
    return path.split("/")[2].removesuffix(".gif")


def test_each_kind_round_trips() -> None:
    opened = links.verify(SECRET, token_of(links.sign_open(SECRET, WS, MSG, CONTACT)))
    assert (opened.kind, opened.workspace_id, opened.message_id, opened.contact_id) == (
        LinkKind.OPEN,
        WS,
        MSG,
        CONTACT,
    )
    assert opened.url == ""
    url = "https://shop.example/p/42?utm_source=nudge&q=caf%C3%A9#top"
    clicked = links.verify(SECRET, token_of(links.sign_click(SECRET, WS, MSG, CONTACT, url)))
    assert (clicked.kind, clicked.url) == (LinkKind.CLICK, url)
    unsub = links.verify(SECRET, token_of(links.sign_unsubscribe(SECRET, WS, MSG, CONTACT)))
    assert unsub.kind is LinkKind.UNSUBSCRIBE


def test_paths_have_the_routes_shape_and_are_short() -> None:
    open_path = links.sign_open(SECRET, WS, MSG, CONTACT)
    assert open_path.startswith("/o/") and open_path.endswith(".gif")
    assert links.sign_unsubscribe(SECRET, WS, MSG, CONTACT).startswith("/u/")
    assert len(open_path) < 100  # three UUIDs as 16 bytes each, a 128-bit MAC


def test_ids_that_are_not_uuids_round_trip_too() -> None:
    claims = links.verify(SECRET, token_of(links.sign_open(SECRET, "ws-1", "msg:é", "c-1")))
    assert (claims.workspace_id, claims.message_id, claims.contact_id) == ("ws-1", "msg:é", "c-1")
    upper = str(uuid.uuid4()).upper()  # not canonical text: kept as text, not re-spelled
    assert links.verify(
        SECRET, token_of(links.sign_open(SECRET, WS, upper, CONTACT))
    ).message_id == (upper)


def test_every_altered_character_is_rejected() -> None:
    token = token_of(links.sign_click(SECRET, WS, MSG, CONTACT, "https://shop.example/a"))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, char in enumerate(token):
        other = alphabet[(alphabet.index(char) + 1) % len(alphabet)]
        with pytest.raises(InvalidLink):
            links.verify(SECRET, token[:i] + other + token[i + 1 :])


def test_changing_the_url_of_a_click_link_fails() -> None:
    token = token_of(links.sign_click(SECRET, WS, MSG, CONTACT, "https://shop.example/a"))
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    payload, mac = raw[: -links.MAC_BYTES], raw[-links.MAC_BYTES :]
    evil = payload.replace(b"https://shop.example/a", b"https://evil.example/a")
    forged = base64.urlsafe_b64encode(evil + mac).rstrip(b"=").decode()
    with pytest.raises(InvalidLink):
        links.verify(SECRET, forged)


def test_another_secret_another_kind_or_garbage_is_rejected() -> None:
    token = token_of(links.sign_open(SECRET, WS, MSG, CONTACT))
    with pytest.raises(InvalidLink):
        links.verify("other-secret", token)
    with pytest.raises(InvalidLink):
        links.verify(SECRET, token, LinkKind.UNSUBSCRIBE)
    assert links.verify(SECRET, token, LinkKind.OPEN).kind is LinkKind.OPEN
    for garbage in ("", "x", "a" * 40, token + "==", token[:-1], token + "A", "é" * 30, "a/b"):
        with pytest.raises(InvalidLink):
            links.verify(SECRET, garbage)


def test_only_web_urls_can_be_signed() -> None:
    for url in ("javascript:alert(1)", "data:text/html,x", "//evil.example", "ftp://x/y", "/p"):
        with pytest.raises(ValueError):
            links.sign_click(SECRET, WS, MSG, CONTACT, url)


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        links.sign_open("", WS, MSG, CONTACT)
