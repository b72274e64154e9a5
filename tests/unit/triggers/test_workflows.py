from nudge.shop.v1 import shop_pb2

from services.triggers.domain.workflows import WELCOME, runs_started_by


def test_a_signup_starts_the_welcome_letter_once_per_contact() -> None:
    event = shop_pb2.ShopEvent(contact_id="c1", signed_up=shop_pb2.SignedUp())
    first = runs_started_by(event, "e1")
    again = runs_started_by(event, "e2")
    assert [r.workflow for r in first] == [WELCOME]
    assert first[0].run_key == again[0].run_key == "welcome/c1"


def test_other_events_start_no_welcome() -> None:
    event = shop_pb2.ShopEvent(contact_id="c1", searched=shop_pb2.Searched(query="tea"))
    assert runs_started_by(event, "e1") == []
