"""What a mail received at a VERP address says: a bounce, a complaint, or nothing we act on.

Pure, with the standard library's ``email`` parser (it splits RFC 3464's field blocks itself).

- DSN (RFC 3464): ``multipart/report; report-type=delivery-status`` with a
  ``message/delivery-status`` part, one field block per recipient. ``Action: failed`` with a
  ``5.x.x`` Status is a hard bounce (the address does not work: it gets suppressed);
  ``failed`` with ``4.x.x`` (given up after retries: a full mailbox, a host down) and
  ``delayed`` are soft; ``delivered``, ``relayed`` and ``expanded`` are success notices.
- ARF (RFC 5965): ``multipart/report; report-type=feedback-report`` with a
  ``message/feedback-report`` part (Yahoo, AOL, Comcast, Fastmail...): a complaint with its
  Feedback-Type (``abuse``, ``fraud``...) and the reporter's User-Agent.
- Microsoft's JMRP (Outlook.com, Hotmail) is not ARF: a ``multipart/mixed`` mail whose
  ``message/rfc822`` part is the reported mail, marked with ``X-HmXmrOriginalRecipient``.
  It is a complaint too (feedback type ``abuse``).

Anything else (an out-of-office reply, a plain-text bounce without a report part) is not a
report: the endpoint refuses it rather than guess from prose.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import Message

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SUCCESS_ACTIONS = frozenset({"delivered", "relayed", "expanded"})


@dataclass(frozen=True)
class Bounce:
    permanent: bool
    action: str  # "failed" or "delayed"
    status_code: str  # "5.1.1"; empty when the report gives none
    diagnostic: str  # the remote server's words (Diagnostic-Code), else the Status


@dataclass(frozen=True)
class Complaint:
    feedback_type: str
    reporter: str


@dataclass(frozen=True)
class Ignored:
    """Nothing to act on. ``refuse``: not a report at all (the endpoint answers 550);
    otherwise a report that needs nothing (a success or relay notice: 250, dropped)."""

    reason: str
    refuse: bool


Report = Bounce | Complaint | Ignored


def parse(raw: bytes) -> Report:
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    if message.get_content_type() == "multipart/report":
        report_type = str(message.get_param("report-type", "") or "").lower()
        if report_type == "delivery-status":
            return _dsn(message)
        if report_type == "feedback-report":
            return _arf(message)
        return Ignored(f"a report of type {report_type or 'none'!r}", refuse=True)
    jmrp = _jmrp(message)
    if jmrp is not None:
        return jmrp
    return Ignored("not a delivery status or feedback report (RFC 3464 / RFC 5965)", refuse=True)


def _part(message: Message, content_type: str) -> Message | None:
    for part in message.walk():
        if part.get_content_type() == content_type:
            return part
    return None


def _field_blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status or message/feedback-report part:
    parsed by ``email`` already, or (when the part came encoded) parsed here from its text."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    data = part.get_payload(decode=True)
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(payload)
    blocks = re.split(r"\r?\n\s*\r?\n", text.strip())
    return [email.message_from_string(b.strip() + "\n\n") for b in blocks if b.strip()]


def _text(value: object) -> str:
    return " ".join(str(value or "").split())


def _dsn(message: Message) -> Report:
    part = _part(message, "message/delivery-status")
    if part is None:
        return Ignored("a delivery-status report without its message/delivery-status part", True)
    recipients = [b for b in _field_blocks(part)[1:] if b.get("Action")] or [
        b for b in _field_blocks(part) if b.get("Action")
    ]
    if not recipients:
        return Ignored("a delivery-status report without a recipient's Action", refuse=True)
    found: list[Bounce] = []
    for block in recipients:
        action = _text(block.get("Action")).lower()
        if action in _SUCCESS_ACTIONS:
            continue
        status = _STATUS.search(_text(block.get("Status")))
        code = ".".join(status.groups()) if status else ""
        diagnostic = _text(block.get("Diagnostic-Code"))
        diagnostic = diagnostic.split(";", 1)[1].strip() if ";" in diagnostic else diagnostic
        found.append(
            Bounce(
                permanent=action == "failed" and code.startswith("5"),
                action=action,
                status_code=code,
                diagnostic=(diagnostic or f"{action} {code}".strip())[:1000],
            )
        )
    if not found:
        return Ignored("a success notice (delivered, relayed or expanded)", refuse=False)
    # A VERP address names one message to one recipient: the worst outcome counts.
    return max(found, key=lambda b: (b.permanent, b.action == "failed"))


def _arf(message: Message) -> Report:
    part = _part(message, "message/feedback-report")
    if part is None:
        return Ignored("a feedback report without its message/feedback-report part", True)
    fields = _field_blocks(part)
    if not fields:
        return Ignored("an empty feedback report", refuse=True)
    block = fields[0]
    feedback_type = _text(block.get("Feedback-Type")).lower()
    if not feedback_type:
        return Ignored("a feedback report without a Feedback-Type", refuse=True)
    reporter = _text(block.get("User-Agent") or block.get("Reporting-MTA") or "")
    return Complaint(feedback_type=feedback_type[:100], reporter=reporter[:200])


def _jmrp(message: Message) -> Complaint | None:
    if not message.is_multipart():
        return None
    for part in message.walk():
        if part.get_content_type() != "message/rfc822":
            continue
        inner = part.get_payload()
        first = inner[0] if isinstance(inner, list) and inner else None
        if isinstance(first, Message) and first.get("X-HmXmrOriginalRecipient"):
            return Complaint(feedback_type="abuse", reporter="microsoft-jmrp")
    return None
