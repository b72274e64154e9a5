from datetime import UTC, datetime

import pytest
from nudge.contacts.v1 import contacts_pb2
from nudge.shop.v1 import shop_pb2

from services.common.auth import generate_api_key, hash_api_key, hashes_match, parse_key_id
from services.common.errors import Unauthenticated
from services.common.events import deterministic_id, new_envelope, payload_of


def test_an_envelope_carries_its_payload_and_type() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    event = shop_pb2.ShopEvent(contact_id="c1", signed_up=shop_pb2.SignedUp())
    env = new_envelope("ws", event, occurred_at=at)
    assert env.type == "nudge.shop.v1.ShopEvent"
    assert env.WhichOneof("payload") == "shop_event"
    assert payload_of(env) == event
    assert env.occurred_at.ToDatetime(tzinfo=UTC) == at


def test_only_envelope_payloads_can_be_wrapped() -> None:
    with pytest.raises(TypeError):
        new_envelope("ws", contacts_pb2.Date(year=2000, month=1, day=1))


def test_deterministic_ids_repeat_for_the_same_cause_only() -> None:
    assert deterministic_id("ws", "welcome/c1") == deterministic_id("ws", "welcome/c1")
    assert deterministic_id("ws", "welcome/c1") != deterministic_id("ws", "welcome/c2")


def test_api_keys_are_checked_by_hash() -> None:
    key_id, key = generate_api_key()
    assert parse_key_id(key) == key_id
    stored = hash_api_key(key)
    assert key not in stored
    assert hashes_match(stored, key)
    assert not hashes_match(stored, key[:-1] + ("A" if key[-1] != "A" else "B"))


@pytest.mark.parametrize("bad", ["", "nk_", "Bearer x", "nk_0123456789abcdef_short"])
def test_malformed_keys_are_unauthenticated(bad: str) -> None:
    with pytest.raises(Unauthenticated):
        parse_key_id(bad)
