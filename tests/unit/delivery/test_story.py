"""The eligibility decision read from a message's history (services/delivery/story.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nudge.delivery.v1 import delivery_pb2

from services.delivery.domain.ledger import Status
from services.delivery.story import Stage, eligibility_of

T0 = datetime(2026, 12, 2, 10, tzinfo=UTC)
AUTOMATION = delivery_pb2.MESSAGE_KIND_AUTOMATION


def stages(*steps: tuple[Status, str]) -> list[Stage]:
    return [
        Stage(T0 + timedelta(seconds=i), status, detail, 1)
        for i, (status, detail) in enumerate(steps)
    ]


def test_a_claim_that_went_on_passed_the_check_at_the_claim() -> None:
    decision = eligibility_of(AUTOMATION, stages((Status.CLAIMED, ""), (Status.SENT, "250")))
    assert (decision.checked, decision.eligible, decision.at) == (True, True, T0)


def test_a_skip_is_a_refusal_with_contacts_reason() -> None:
    history = stages((Status.CLAIMED, ""), (Status.SKIPPED, "unsubscribed"))
    decision = eligibility_of(AUTOMATION, history)
    assert (decision.checked, decision.eligible, decision.reason) == (True, False, "unsubscribed")
    assert decision.at == history[1].at


def test_an_invalid_request_and_a_test_send_were_never_checked() -> None:
    invalid = stages((Status.CLAIMED, ""), (Status.FAILED, "invalid request: purpose or kind"))
    assert not eligibility_of(AUTOMATION, invalid).checked
    template = stages((Status.CLAIMED, ""), (Status.FAILED, "template: boom"))
    assert eligibility_of(AUTOMATION, template).eligible
    test_send = eligibility_of(delivery_pb2.MESSAGE_KIND_TEST, stages((Status.CLAIMED, "")))
    assert not test_send.checked and test_send.reason
    assert not eligibility_of(AUTOMATION, []).checked
