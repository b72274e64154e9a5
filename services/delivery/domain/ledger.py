"""Message statuses, and what an SMTP answer means for a message: pure rules, no I/O.

:func:`classify` turns where a hand-off stopped (:class:`Stage`) and the server's reply into
one :class:`Outcome`:

- **bounced**: the server refused this recipient or this message with a 5xx. A *hard*
  bounce (``permanent``: the address does not exist, is disabled or unroutable) makes
  contacts suppress the address; a *soft* one (mailbox full, message too large, refused
  by policy or as spam) is final for this message but says nothing bad about the address.
- **deferred**: a 4xx, or a connection that broke before the data went out: another
  attempt later (:func:`retry_plan`), never in place, so no partition waits for it.
- **paused**: the session or the configuration is wrong (login refused, sender refused
  with 5xx, TLS failed, relay unreachable). No message is to blame, none is bounced:
  sending pauses and the message is tried again.
- **unknown**: the data went out and no answer came: the server may have the mail.

Statuses are the contract's ``MessageStatus`` numbers (the ledger stores them as they are).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum, IntEnum


class Status(IntEnum):
    CLAIMED = 1  # the hand-off is in progress (or was interrupted by a crash)
    SENT = 2
    SKIPPED = 3
    BOUNCED = 4
    FAILED = 5
    DEFERRED = 6  # a temporary failure; a due_at row says when to try again
    UNKNOWN = 7  # the server may or may not have it (the sweeper's or a lost answer's verdict)
    QUEUED = 8  # accepted, not handed over: sending was paused by a session error


class Stage(Enum):
    """Where in the SMTP conversation the hand-off stopped."""

    CONNECT = "connect"  # no connection (refused, unreachable, timed out)
    TLS = "tls"
    AUTH = "auth"
    HELO = "helo"
    MAIL = "mail"  # MAIL FROM: the sender
    RCPT = "rcpt"  # RCPT TO: the recipient
    DATA = "data"  # the server answered the data
    DISCONNECTED = "disconnected"  # the connection broke before the data went out
    NO_ANSWER = "no_answer"  # the data went out, the answer never came


class Kind(Enum):
    BOUNCED = "bounced"
    DEFERRED = "deferred"
    PAUSED = "paused"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    permanent: bool = False  # a hard bounce
    status_code: str = ""  # the enhanced status code, "5.1.1", when known
    reason: str = ""


_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# Enhanced codes that say the address itself is bad (RFC 3463): bad mailbox or system
# (5.1.x), mailbox disabled (5.2.1), unroutable (5.4.4). Others (5.2.2 full, 5.3.4 too big,
# 5.7.x policy or spam, 5.6.x content) are about this message, not the address.
_HARD_ENHANCED = (re.compile(r"^5\.1\.\d+$"), re.compile(r"^5\.2\.1$"), re.compile(r"^5\.4\.4$"))
# Without an enhanced code, the basic codes that name the recipient as the problem at RCPT.
_HARD_BASIC_AT_RCPT = frozenset({550, 551, 553})


def enhanced_code(code: int, text: str) -> str:
    """The enhanced status code at the start of the reply text, if it agrees with ``code``'s
    class (a ``550 4.1.1`` is malformed: trust the basic code and report none)."""
    found = _ENHANCED.match(text)
    if found is None or int(found.group(1)) != code // 100:
        return ""
    return ".".join(found.groups())


def is_hard_bounce(stage: Stage, code: int, status_code: str) -> bool:
    if status_code:
        return any(pattern.match(status_code) for pattern in _HARD_ENHANCED)
    return stage is Stage.RCPT and code in _HARD_BASIC_AT_RCPT


def classify(stage: Stage, code: int | None, text: str) -> Outcome:
    """What a failed hand-off means for the message (module docstring). ``code`` is the
    server's reply code when there was one."""
    reason = f"{code} {text}".strip() if code else text
    if stage is Stage.NO_ANSWER:
        return Outcome(Kind.UNKNOWN, reason=reason or "no answer to the data")
    if stage in (Stage.CONNECT, Stage.TLS, Stage.AUTH):
        return Outcome(Kind.PAUSED, reason=f"{stage.value}: {reason}")
    if stage is Stage.DISCONNECTED or code is None or not 400 <= code < 600:
        # A broken connection or a reply that is no reply: try this message again later.
        return Outcome(Kind.DEFERRED, reason=f"{stage.value}: {reason}")
    status_code = enhanced_code(code, text)
    if code < 500:
        return Outcome(Kind.DEFERRED, status_code=status_code, reason=reason)
    if stage in (Stage.HELO, Stage.MAIL):
        # The server refuses us, not the recipient: every message would fail the same way.
        return Outcome(Kind.PAUSED, status_code=status_code, reason=f"{stage.value}: {reason}")
    return Outcome(
        Kind.BOUNCED,
        permanent=is_hard_bounce(stage, code, status_code),
        status_code=status_code,
        reason=reason,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How deferred mail is tried again (settings ``DELIVERY_RETRY_*``)."""

    max_attempts: int
    max_age: timedelta
    base_delay: timedelta
    max_delay: timedelta


def backoff(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> timedelta:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)``, capped, then a random
    share between half and all of it, so that mail deferred together is not retried in
    one burst."""
    exponential = policy.base_delay * (2 ** min(max(attempt - 1, 0), 30))
    ceiling = min(exponential, policy.max_delay)
    share: float = (rng or random).uniform(0.5, 1.0)
    delay: timedelta = ceiling * share
    return delay


def retry_plan(
    attempts: int,
    first_attempt_at: datetime,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> datetime | None:
    """When to try again after ``attempts`` attempts, or None: give up (out of attempts, or
    the next attempt would come after the message is ``max_age`` old)."""
    if attempts >= policy.max_attempts:
        return None
    due = now + backoff(attempts, policy, rng)
    if due - first_attempt_at > policy.max_age:
        return None
    return due
