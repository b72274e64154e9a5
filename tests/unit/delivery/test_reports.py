"""DSN (RFC 3464), ARF (RFC 5965) and Microsoft JMRP reports as the big providers and the
common MTAs write them (tests/unit/delivery/reports/, written after the formats of real
reports with the addresses replaced), read by services/delivery/domain/reports.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.delivery.domain.reports import Bounce, Complaint, Ignored, parse

SAMPLES = Path(__file__).parent / "reports"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes().replace(b"\n", b"\r\n")


@pytest.mark.parametrize(
    ("name", "status_code", "words"),
    [
        ("gmail_hard_bounce.eml", "5.1.1", "The email account that you tried to reach does not"),
        ("outlook_hard_bounce.eml", "5.5.0", "550 5.5.0 Requested action not taken"),
        ("postfix_hard_bounce.eml", "5.1.1", "User unknown in virtual mailbox table"),
        ("exim_hard_bounce.eml", "5.0.0", "Recipient address rejected: User unknown"),
    ],
)
def test_a_failed_action_with_a_5xx_status_is_a_hard_bounce(
    name: str, status_code: str, words: str
) -> None:
    report = parse(sample(name))
    assert isinstance(report, Bounce)
    assert report.permanent
    assert report.action == "failed"
    assert report.status_code == status_code
    assert words in report.diagnostic
    assert not report.diagnostic.startswith("smtp;")  # the diagnostic type is dropped


def test_a_delayed_action_is_a_soft_bounce() -> None:
    report = parse(sample("postfix_delayed.eml"))
    assert report == Bounce(
        permanent=False,
        action="delayed",
        status_code="4.2.2",
        diagnostic="452 4.2.2 <bob@example.net>: Mailbox full",
    )


def test_a_failed_action_with_a_4xx_status_is_soft() -> None:
    raw = sample("postfix_hard_bounce.eml").replace(b"Status: 5.1.1", b"Status: 4.4.7")
    report = parse(raw)
    assert isinstance(report, Bounce)
    assert (report.permanent, report.status_code) == (False, "4.4.7")


def test_a_yahoo_feedback_report_is_a_complaint() -> None:
    assert parse(sample("yahoo_arf.eml")) == Complaint(
        feedback_type="abuse", reporter="Yahoo!-Mail-Feedback/2.0"
    )


def test_a_microsoft_jmrp_report_is_a_complaint() -> None:
    assert parse(sample("microsoft_jmrp.eml")) == Complaint(
        feedback_type="abuse", reporter="microsoft-jmrp"
    )


def test_an_out_of_office_reply_is_refused_as_no_report() -> None:
    report = parse(sample("out_of_office.eml"))
    assert isinstance(report, Ignored) and report.refuse
    assert "not a delivery status or feedback report" in report.reason


def test_a_success_notice_is_accepted_and_ignored() -> None:
    report = parse(sample("postfix_success.eml"))
    assert isinstance(report, Ignored) and not report.refuse


def test_a_delivery_status_report_without_its_status_part_is_refused() -> None:
    raw = sample("postfix_hard_bounce.eml").replace(
        b"Content-Type: message/delivery-status", b"Content-Type: text/plain"
    )
    report = parse(raw)
    assert isinstance(report, Ignored) and report.refuse


def test_a_feedback_report_without_a_feedback_type_is_refused() -> None:
    raw = sample("yahoo_arf.eml").replace(b"Feedback-Type: abuse\r\n", b"")
    report = parse(raw)
    assert isinstance(report, Ignored) and report.refuse


def test_garbage_is_refused_not_raised() -> None:
    for raw in (b"", b"\x00\xff\xfe garbage", b"Content-Type: multipart/report\r\n\r\n--x--"):
        report = parse(raw)
        assert isinstance(report, Ignored) and report.refuse
