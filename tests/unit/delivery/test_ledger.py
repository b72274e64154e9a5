"""What an SMTP answer means for a message (services/delivery/domain/ledger.py)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from services.delivery.domain.ledger import (
    Kind,
    RetryPolicy,
    Stage,
    backoff,
    classify,
    enhanced_code,
    retry_plan,
)


@pytest.mark.parametrize(
    ("stage", "code", "text", "kind", "permanent", "status_code"),
    [
        # Recipient refused: bounces; hard when the address is to blame.
        (Stage.RCPT, 550, "5.1.1 <a@x>: no such user", Kind.BOUNCED, True, "5.1.1"),
        (Stage.RCPT, 550, "5.1.10 null MX", Kind.BOUNCED, True, "5.1.10"),
        (Stage.RCPT, 553, "5.1.3 bad address syntax", Kind.BOUNCED, True, "5.1.3"),
        (Stage.RCPT, 550, "5.2.1 mailbox disabled", Kind.BOUNCED, True, "5.2.1"),
        (Stage.RCPT, 550, "5.4.4 unroutable", Kind.BOUNCED, True, "5.4.4"),
        (Stage.RCPT, 550, "no such user here", Kind.BOUNCED, True, ""),
        (Stage.RCPT, 551, "user not local", Kind.BOUNCED, True, ""),
        (Stage.RCPT, 552, "5.2.2 mailbox full", Kind.BOUNCED, False, "5.2.2"),
        (Stage.RCPT, 554, "5.7.1 relay access denied", Kind.BOUNCED, False, "5.7.1"),
        (Stage.RCPT, 554, "transaction failed", Kind.BOUNCED, False, ""),
        (Stage.RCPT, 550, "4.1.1 mismatched class", Kind.BOUNCED, True, ""),
        # Data refused: a bounce of this message; hard only when the code blames the address.
        (Stage.DATA, 554, "5.7.1 rejected as spam", Kind.BOUNCED, False, "5.7.1"),
        (Stage.DATA, 552, "5.3.4 message too big", Kind.BOUNCED, False, "5.3.4"),
        (Stage.DATA, 550, "5.1.1 no such user", Kind.BOUNCED, True, "5.1.1"),
        (Stage.DATA, 550, "rejected", Kind.BOUNCED, False, ""),
        # Temporary: deferred, whatever the stage that answered.
        (Stage.RCPT, 451, "4.3.0 try again later", Kind.DEFERRED, False, "4.3.0"),
        (Stage.RCPT, 450, "4.2.1 mailbox busy", Kind.DEFERRED, False, "4.2.1"),
        (Stage.RCPT, 452, "too many recipients", Kind.DEFERRED, False, ""),
        (Stage.DATA, 452, "4.2.2 over quota", Kind.DEFERRED, False, "4.2.2"),
        (Stage.DATA, 421, "4.3.2 shutting down", Kind.DEFERRED, False, "4.3.2"),
        (Stage.MAIL, 451, "4.7.1 greylisted", Kind.DEFERRED, False, "4.7.1"),
        (Stage.HELO, 421, "too busy", Kind.DEFERRED, False, ""),
        (Stage.DISCONNECTED, None, "connection lost", Kind.DEFERRED, False, ""),
        (Stage.RCPT, 250, "odd", Kind.DEFERRED, False, ""),
        (Stage.RCPT, None, "no reply code", Kind.DEFERRED, False, ""),
        # The session or the configuration: nobody bounced, sending pauses.
        (Stage.MAIL, 550, "5.7.1 sender refused", Kind.PAUSED, False, "5.7.1"),
        (Stage.MAIL, 553, "5.1.8 bad sender domain", Kind.PAUSED, False, "5.1.8"),
        (Stage.HELO, 501, "bad HELO", Kind.PAUSED, False, ""),
        (Stage.AUTH, 535, "5.7.8 authentication failed", Kind.PAUSED, False, ""),
        (Stage.AUTH, 454, "4.7.0 try later", Kind.PAUSED, False, ""),
        (Stage.TLS, None, "certificate verify failed", Kind.PAUSED, False, ""),
        (Stage.CONNECT, None, "connection refused", Kind.PAUSED, False, ""),
        # The data went out and no answer came.
        (Stage.NO_ANSWER, None, "timed out", Kind.UNKNOWN, False, ""),
    ],
)
def test_every_reply_has_one_meaning(
    stage: Stage, code: int | None, text: str, kind: Kind, permanent: bool, status_code: str
) -> None:
    outcome = classify(stage, code, text)
    assert (outcome.kind, outcome.permanent, outcome.status_code) == (kind, permanent, status_code)
    assert outcome.reason


def test_the_reason_keeps_the_servers_words() -> None:
    assert classify(Stage.RCPT, 550, "5.1.1 no such user").reason == "550 5.1.1 no such user"
    assert "refused" in classify(Stage.CONNECT, None, "connection refused").reason


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (550, "5.1.1 user unknown", "5.1.1"),
        (451, "  4.3.0 later", "4.3.0"),
        (550, "user 5.1.1 unknown", ""),
        (550, "4.1.1 class mismatch", ""),
        (250, "2.0.0 ok", "2.0.0"),
        (550, "5.1.1234 too long", ""),
    ],
)
def test_enhanced_codes_are_read_only_where_they_belong(
    code: int, text: str, expected: str
) -> None:
    assert enhanced_code(code, text) == expected


POLICY = RetryPolicy(
    max_attempts=5,
    max_age=timedelta(hours=24),
    base_delay=timedelta(seconds=30),
    max_delay=timedelta(hours=1),
)
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 30), (2, 60), (3, 120), (4, 240), (10, 3600), (60, 3600)]:
        for _ in range(50):
            delay = backoff(attempt, POLICY, rng).total_seconds()
            assert ceiling / 2 <= delay <= ceiling, (attempt, delay)
    # Jitter: mail deferred together does not come back together.
    assert len({backoff(3, POLICY, rng) for _ in range(20)}) > 10


def test_a_deferred_message_is_given_up_when_out_of_attempts() -> None:
    assert retry_plan(4, T0, T0, POLICY) is not None
    assert retry_plan(5, T0, T0, POLICY) is None


def test_a_deferred_message_is_given_up_when_too_old() -> None:
    now = T0 + timedelta(hours=23, minutes=59, seconds=50)
    assert retry_plan(1, T0, now, POLICY) is None  # 15-30 s more is past 24 h
    due = retry_plan(1, T0, T0 + timedelta(hours=1), POLICY)
    assert due is not None and T0 + timedelta(hours=1, seconds=15) <= due
