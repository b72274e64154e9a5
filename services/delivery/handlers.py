"""Delivery: check eligibility, claim the message id, hand over to SMTP, record the outcome.

The order matters. Eligibility is asked first because asking has no side effect. The claim
(a unique row per message id, with its MessageQueued event) comes before the SMTP hand-off,
so a redelivered request or a second worker never mails twice; the outcome and its event
commit together afterwards, retried in place until PostgreSQL takes them (deterministic
event ids: a retry never publishes twice).

What an answer means is decided in ``domain/ledger.py`` (:func:`classify`); here it is done:

- bounced: recorded, with MessageBounced (``source="smtp"``, the enhanced status code);
  contacts suppresses the address of a hard bounce.
- deferred: the request is kept in ``pending_sends`` with a ``due_at`` (backoff with jitter)
  and MessageDeferred is published; the Kafka record is finished, so its partition moves
  on. :func:`deliver_due` (the retry loop) hands it over again; out of attempts or too old,
  it is FAILED (MessageFailed).
- paused (login, sender or TLS refused, relay unreachable): no message is to blame. The
  claim is given back (QUEUED), :class:`SendingGate` says why (health ``smtp_sending``) and
  :class:`SendingPaused` (an outage to the consumer loop) stops the consumer from starting
  new requests while this one is retried with backoff.
- unknown (the data went out, no answer came), or a claim left by a crash and found by
  :func:`sweep_stale_claims`: MessageUnknown. Transactional mail is sent again with the same
  Message-ID (``resend_kinds``); campaign and automation mail never is.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

import asyncpg
from email_validator import EmailNotValidError, validate_email
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2, events_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import clock, links
from services.common.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    Validator,
)
from services.common.events import deterministic_id, new_envelope
from services.common.ids import is_uuid
from services.common.outbox import add_to_outbox
from services.common.topics import DELIVERY_EVENTS, DELIVERY_REQUESTS
from services.common.tracing import current_traceparent
from services.delivery import guard
from services.delivery.adapters import postgres as db
from services.delivery.adapters.smtp import failure_of
from services.delivery.domain.ledger import Kind, Outcome, RetryPolicy, Status, classify, retry_plan
from services.delivery.domain.mime import MailError, OutgoingMail, ascii_address, to_bytes
from services.delivery.domain.rendering import (
    MailLinks,
    Rendered,
    RenderError,
    check_templates,
    render,
)
from services.delivery.domain.requests import PURPOSES, TRANSACTIONAL_PURPOSE, is_actionable
from services.delivery.domain.tracking_links import add_tracking
from services.delivery.mail_auth import MailAuth
from services.delivery.outcome_metrics import OUTCOME_COUNTS
from services.delivery.story import current_trace_id
from services.delivery.writes import ClaimItem, OutcomeItem, Writes, is_outage

log = logging.getLogger(__name__)

RETRY_BATCH = 100  # due requests taken per round of the retry loop
SWEEP_BATCH = 500
OUTCOME_MAX_BACKOFF_S = 5.0


class Eligibility(Protocol):
    """Contacts' answer just before the hand-off (adapters/contacts.py, or a batching one)."""

    async def check(
        self, workspace_id: str, contact_id: str, purpose: int
    ) -> contacts_pb2.CheckEligibilityResponse | None: ...


class Sender(Protocol):
    """The SMTP hand-off (adapters/smtp.py ``SmtpSender``, or a pooled one) of a mail's bytes
    (domain/mime.py, signed): returns the server's reply, raises aiosmtplib's errors or
    ``AmbiguousHandoff``. ``message_id`` and ``contact_id`` only name the mail in traces."""

    async def send(
        self, raw: bytes, sender: str, recipient: str, message_id: str = "", *, contact_id: str = ""
    ) -> str: ...


class SendingPaused(Unavailable):
    """Sending is paused by a session or configuration error; to the consumer loop an
    outage: it retries the request with backoff and starts no new one meanwhile."""


@dataclass
class SendingGate:
    """Whether SMTP sending works, for health (``smtp_sending``) and the retry loop."""

    reason: str = ""
    since: datetime | None = None

    @property
    def paused(self) -> bool:
        return bool(self.reason)

    def pause(self, reason: str) -> None:
        if not self.paused:
            log.error("SMTP sending paused: %s", reason)
            self.since = clock.now()
        self.reason = reason

    def resume(self) -> None:
        if self.paused:
            log.info("SMTP sending resumed (paused since %s)", self.since)
        self.reason = ""
        self.since = None

    async def check(self) -> None:
        """The health check: raises while paused, saying why."""
        if self.paused:
            raise RuntimeError(f"sending paused since {self.since}: {self.reason}")


@dataclass
class Deps:
    pool: asyncpg.Pool
    eligibility: Eligibility
    smtp: Sender
    from_address: str
    tracking_url: str
    link_secret: str
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(
            max_attempts=8,
            max_age=timedelta(days=2),
            base_delay=timedelta(minutes=1),
            max_delay=timedelta(hours=1),
        )
    )
    # MessageKind values whose UNKNOWN messages are sent again (settings.resend_unknown_kinds).
    resend_kinds: frozenset[int] = frozenset({delivery_pb2.MESSAGE_KIND_TRANSACTIONAL})
    sending: SendingGate = field(default_factory=SendingGate)
    # How long a lease on a due request lasts (the sweeper's timeout: a crash mid-send).
    lease: timedelta = timedelta(minutes=5)
    # While sending is paused: opens a session without a message (adapters/smtp.py
    # probe_session), so that no claim is taken until the session works again.
    probe: Callable[[], Awaitable[None]] | None = None
    auth: MailAuth | None = None  # DKIM and VERP (services/delivery/mail_auth.py)
    track: bool = True  # open pixel and click links in non-transactional mail
    # Group commit of claims and final outcomes (services/delivery/writes.py): at most
    # group_max per transaction, at most groups_in_flight transactions at once.
    group_max: int = 500
    groups_in_flight: int = 4
    writes: Writes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.writes = Writes(
            self.pool, max_batch=self.group_max, max_in_flight=self.groups_in_flight
        )


async def deliver(deps: Deps, envelope: Envelope) -> None:
    """Handle one DeliveryRequested from delivery.requests.v1 (at-least-once, idempotent)."""
    await _deliver(deps, envelope, reclaimable=(Status.QUEUED,))


async def _deliver(deps: Deps, envelope: Envelope, reclaimable: Sequence[Status]) -> None:
    """One attempt at a request: from Kafka, or from ``pending_sends`` (``reclaimable``
    then includes DEFERRED and UNKNOWN)."""
    if envelope.WhichOneof("payload") != "delivery_requested":
        return
    request = envelope.delivery_requested
    workspace_id = envelope.workspace_id
    if request.kind == delivery_pb2.MESSAGE_KIND_TEST:
        await deliver_test(deps, envelope)
        return
    if not (is_uuid(request.message_id) and is_uuid(request.contact_id) and is_uuid(workspace_id)):
        log.error("dropping a delivery request with malformed ids: %s", request.message_id)
        return

    if not is_actionable(request.purpose, request.kind):
        # No retry can fix it; a request that is never finished would block its partition.
        await _finish_unsent(
            deps, envelope, Status.FAILED, "invalid request: purpose or kind", reclaimable
        )
        return
    if await guard.refusal(deps.pool, workspace_id) is not None:  # the anti-spam guard
        await _finish_unsent(deps, envelope, Status.SKIPPED, guard.SKIP_REASON, reclaimable)
        return
    facts = await deps.eligibility.check(workspace_id, request.contact_id, request.purpose)
    if facts is None or not facts.eligible:
        reason = "contact_not_found" if facts is None else facts.reason
        await _finish_unsent(deps, envelope, Status.SKIPPED, reason, reclaimable)
        return
    context: dict[str, object] = {
        "contact": {
            "first_name": facts.first_name,
            "last_name": facts.last_name,
            "email": facts.email,
            "locale": facts.locale,
        },
        "workspace": {"name": facts.workspace_name},
        "vars": dict(request.vars),
    }
    try:
        rendered = render(
            request.content.subject,
            request.content.body_text,
            request.content.body_html,
            context,
            mail_links(deps, workspace_id, request),
        )
    except RenderError as err:
        await _finish_unsent(deps, envelope, Status.FAILED, f"template: {err}", reclaimable)
        return
    if deps.track and request.kind != delivery_pb2.MESSAGE_KIND_TRANSACTIONAL:
        # An open pixel and signed click links (domain/tracking_links.py); transactional mail
        # is not tracked: a receipt or a password reset is nobody's engagement.
        rendered = add_tracking(
            rendered,
            base_url=deps.tracking_url,
            secret=deps.link_secret,
            workspace_id=workspace_id,
            message_id=request.message_id,
            contact_id=request.contact_id,
            issued_at=int(clock.now().timestamp()),
        )

    if deps.sending.paused:
        await _probe(deps)
    taken = await _claim(deps, envelope, reclaimable)
    if taken is None:
        return

    unsubscribe = ""
    if request.kind != delivery_pb2.MESSAGE_KIND_TRANSACTIONAL:
        # RFC 8058 one-click unsubscribe: mailbox providers show an "Unsubscribe" button and
        # POST to the link; large senders without it are filtered as spam.
        path = links.sign_unsubscribe(
            deps.link_secret, workspace_id, request.message_id, request.contact_id
        )
        unsubscribe = f"{deps.tracking_url.rstrip('/')}{path}"
    raw = build_email(
        request.message_id,
        workspace_id,
        deps.from_address,
        request.from_name or facts.workspace_name,
        (f"{facts.first_name} {facts.last_name}".strip(), facts.email),
        rendered,
        unsubscribe,
        reply_to=reply_to_address(request.reply_to),
    )
    sender = deps.from_address
    if deps.auth is not None:  # DKIM signature and VERP envelope sender, last of all
        sender = deps.auth.envelope_sender(request.message_id)
        raw = await deps.auth.sign(workspace_id, deps.from_address, raw)
    try:
        # An internationalised domain in its ASCII form, as in the To header: a relay without
        # SMTPUTF8 refuses the Unicode one.
        recipient = ascii_address(facts.email)
        reply = await deps.smtp.send(
            raw, sender, recipient, request.message_id, contact_id=request.contact_id
        )
    except Exception as err:
        failure = failure_of(err)
        if failure is None:
            raise  # a bug: the claim stays, and the sweeper reports the message UNKNOWN
        outcome = classify(failure.stage, failure.code, failure.text)
        await _after_failure(deps, envelope, taken, outcome, reclaimable)
        return
    deps.sending.resume()
    await _record_final(deps, envelope, Status.SENT, reply, drop_pending=taken.pending)


async def _probe(deps: Deps) -> None:
    """While paused, try a session before claiming: a claim taken now could be left behind
    by a shutdown (an operator restarting with a fixed configuration) mid-attempt, and a
    claim left behind is never sent again. Raises :class:`SendingPaused` while it fails."""
    if deps.probe is None:
        return
    try:
        await deps.probe()
    except Exception as err:
        failure = failure_of(err)
        if failure is None:
            raise
        outcome = classify(failure.stage, failure.code, failure.text)
        deps.sending.pause(outcome.reason)
        raise SendingPaused(outcome.reason) from err
    deps.sending.resume()


@dataclass(frozen=True)
class _Taken:
    claim: db.Claim
    pending: bool  # a pending_sends row exists for the message


async def _claim(deps: Deps, envelope: Envelope, reclaimable: Sequence[Status]) -> _Taken | None:
    """Claim the message; on the first claim publish MessageQueued and, for a kind that is
    resent when UNKNOWN, keep the request (all in one transaction). A first attempt (from
    Kafka) joins a group commit with the other lanes' claims (services/delivery/writes.py)."""
    request = envelope.delivery_requested
    retrying = Status.DEFERRED in reclaimable
    keep = request.kind in deps.resend_kinds
    if tuple(reclaimable) == (Status.QUEUED,):
        claim = await deps.writes.claims.submit(
            ClaimItem(
                request.message_id,
                envelope.workspace_id,
                request.contact_id,
                request.kind,
                request.campaign_id,
                request.workflow_id,
                queued=new_envelope(
                    envelope.workspace_id,
                    _queued(request),
                    event_id=deterministic_id("delivery-queued", request.message_id),
                ),
                pending=envelope.SerializeToString() if keep else None,
                trace=current_traceparent(),
                origin=origin_of(envelope),
            )
        )
        if claim is None:
            log.info("message %s already claimed; not sending it again", request.message_id)
            return None
        return _Taken(claim, pending=keep)
    now = clock.now()
    async with deps.pool.acquire() as conn, conn.transaction():
        taken = await db.claim(
            conn,
            request.message_id,
            envelope.workspace_id,
            request.contact_id,
            request.kind,
            request.campaign_id,
            request.workflow_id,
            now,
            reclaimable,
            origin_of(envelope),
        )
        if taken is None:
            if retrying and await db.status_of(conn, request.message_id) != Status.CLAIMED:
                # Finished meanwhile (a redelivered request): nothing left to retry. A CLAIMED
                # one is the sweeper's to report.
                await db.drop_pending(conn, request.message_id)
            log.info("message %s already claimed; not sending it again", request.message_id)
            return None
        if taken.new:
            await _publish(
                conn,
                envelope,
                _queued(request),
                deterministic_id("delivery-queued", request.message_id),
            )
            if keep:
                await db.save_pending(
                    conn,
                    request.message_id,
                    envelope.workspace_id,
                    request.contact_id,
                    None,
                    now,
                    envelope.SerializeToString(),
                )
    return _Taken(taken, pending=keep or retrying)


def origin_of(envelope: Envelope) -> db.Origin:
    """What the ledger keeps of the request for the story of the mail (story.py), with the
    trace id of the span current at the claim (the consumer's per-record span)."""
    request = envelope.delivery_requested
    return db.Origin(
        current_trace_id(),
        request.purpose,
        request.run_id,
        request.step_id,
        envelope.occurred_at.ToDatetime(tzinfo=UTC) if envelope.HasField("occurred_at") else None,
    )


def _queued(request: delivery_pb2.DeliveryRequested) -> events_pb2.MessageQueued:
    return events_pb2.MessageQueued(
        message_id=request.message_id,
        contact_id=request.contact_id,
        kind=request.kind,
        campaign_id=request.campaign_id,
        workflow_id=request.workflow_id,
    )


async def _after_failure(
    deps: Deps,
    envelope: Envelope,
    taken: _Taken,
    outcome: Outcome,
    reclaimable: Sequence[Status],
) -> None:
    request = envelope.delivery_requested
    message_id = request.message_id
    if outcome.kind is Kind.PAUSED:
        deps.sending.pause(outcome.reason)
        retrying = Status.DEFERRED in reclaimable
        back = Status.DEFERRED if retrying else Status.QUEUED

        async def give_back(conn: asyncpg.Connection) -> None:
            await db.release_claim(conn, message_id, back, f"paused: {outcome.reason}", clock.now())
            if retrying:
                await db.set_due(conn, message_id, clock.now() + deps.retry.base_delay)

        await _write_outcome(deps, message_id, give_back)
        raise SendingPaused(outcome.reason)
    deps.sending.resume()  # the server answered about this message: the session works
    if outcome.kind is Kind.BOUNCED:
        log.info("message %s bounced: %s", message_id, outcome.reason)
        await _record_final(
            deps, envelope, Status.BOUNCED, outcome.reason, outcome, drop_pending=taken.pending
        )
    elif outcome.kind is Kind.DEFERRED:
        written = await _write_outcome(
            deps, message_id, lambda conn: _defer_in(conn, deps, envelope, taken, outcome)
        )
        OUTCOME_COUNTS.status(written, request.kind)
    else:
        log.warning("message %s: unknown SMTP outcome: %s", message_id, outcome.reason)

        async def unknown(conn: asyncpg.Connection) -> None:
            await _report_unknown_in(
                conn,
                deps,
                envelope.workspace_id,
                _Unknown.of(request, taken.claim.attempts),
                f"no answer to the data: {outcome.reason}",
            )

        await _write_outcome(deps, message_id, unknown)
        OUTCOME_COUNTS.count("unknown", request.kind)


async def _defer_in(
    conn: asyncpg.Connection, deps: Deps, envelope: Envelope, taken: _Taken, outcome: Outcome
) -> Status:
    """DEFERRED with a due time, or FAILED when out of attempts: the status written."""
    request = envelope.delivery_requested
    now = clock.now()
    attempts = taken.claim.attempts
    due = retry_plan(attempts, taken.claim.first_claimed_at, now, deps.retry)
    if due is None:
        reason = f"gave up after {attempts} attempt(s): {outcome.reason}"
        await _record_in(
            conn, envelope, Status.FAILED, reason, attempts=attempts, drop_pending=True
        )
        return Status.FAILED
    await db.set_status(conn, request.message_id, Status.DEFERRED, outcome.reason, now, due)
    await db.save_pending(
        conn,
        request.message_id,
        envelope.workspace_id,
        request.contact_id,
        due,
        taken.claim.first_claimed_at,
        envelope.SerializeToString(),
    )
    event = events_pb2.MessageDeferred(
        message_id=request.message_id,
        contact_id=request.contact_id,
        attempt=attempts,
        smtp_response=outcome.reason,
        campaign_id=request.campaign_id,
        workflow_id=request.workflow_id,
    )
    event.next_attempt_at.FromDatetime(due)
    await _publish(
        conn,
        envelope,
        event,
        deterministic_id("delivery-deferred", request.message_id, str(attempts)),
    )
    return Status.DEFERRED


@dataclass(frozen=True)
class _Unknown:
    message_id: str
    contact_id: str
    kind: int
    campaign_id: str
    workflow_id: str
    attempts: int

    @classmethod
    def of(cls, request: delivery_pb2.DeliveryRequested, attempts: int) -> _Unknown:
        return cls(
            request.message_id,
            request.contact_id,
            request.kind,
            request.campaign_id,
            request.workflow_id,
            attempts,
        )


async def _report_unknown_in(
    conn: asyncpg.Connection, deps: Deps, workspace_id: str, message: _Unknown, reason: str
) -> None:
    """Mark the message UNKNOWN with MessageUnknown; a kind in ``resend_kinds`` is due
    again at once (the same Message-ID), unless out of attempts."""
    now = clock.now()
    resend = (
        message.kind in deps.resend_kinds
        and message.attempts < deps.retry.max_attempts
        and await db.set_due(conn, message.message_id, now)
    )
    if not resend:
        await db.drop_pending(conn, message.message_id)
    await db.set_status(conn, message.message_id, Status.UNKNOWN, reason, now)
    await add_to_outbox(
        conn,
        db.SCHEMA,
        DELIVERY_EVENTS,
        message.contact_id,
        new_envelope(
            workspace_id,
            events_pb2.MessageUnknown(
                message_id=message.message_id,
                contact_id=message.contact_id,
                kind=message.kind,  # type: ignore[arg-type]
                reason=reason[:1000],
                resent=resend,
                campaign_id=message.campaign_id,
                workflow_id=message.workflow_id,
            ),
            event_id=deterministic_id(
                "delivery-unknown", message.message_id, str(message.attempts)
            ),
        ),
    )


async def sweep_stale_claims(deps: Deps, older_than: timedelta) -> int:
    """Report every message CLAIMED for longer than ``older_than`` (a crash between the
    claim and the server's answer) as UNKNOWN; returns how many. Safe to run on every
    replica at once (FOR UPDATE SKIP LOCKED)."""
    reported = 0
    while True:
        async with deps.pool.acquire() as conn, conn.transaction():
            rows = await db.stale_claims(conn, clock.now() - older_than, SWEEP_BATCH)
            for row in rows:
                message = _Unknown(
                    str(row["message_id"]),
                    str(row["contact_id"]),
                    row["kind"],
                    row["campaign_id"],
                    row["workflow_id"],
                    row["attempts"],
                )
                await _report_unknown_in(
                    conn,
                    deps,
                    str(row["workspace_id"]),
                    message,
                    f"claimed at {row['updated_at'].isoformat()} and no outcome recorded:"
                    " interrupted between the claim and the server's answer",
                )
        for row in rows:
            OUTCOME_COUNTS.count("unknown", row["kind"])
        reported += len(rows)
        if len(rows) < SWEEP_BATCH:
            if reported:
                log.warning("reported %d stale claim(s) as UNKNOWN", reported)
            return reported


async def deliver_due(deps: Deps) -> int:
    """One round of the retry loop: hand over again the requests due now (deferred ones,
    transactional ones reported UNKNOWN); returns how many were taken."""
    now = clock.now()
    async with deps.pool.acquire() as conn, conn.transaction():
        due = await db.take_due(conn, now, now + deps.lease, RETRY_BATCH)
    reclaimable = (Status.DEFERRED, Status.UNKNOWN)

    async def again(raw: bytes) -> None:
        envelope = Envelope.FromString(raw)
        try:
            await _deliver(deps, envelope, reclaimable)
        except SendingPaused:
            # Not handed over: due again after a while rather than after the lease.
            message_id = envelope.delivery_requested.message_id
            later = clock.now() + deps.retry.base_delay

            async def postpone(conn: asyncpg.Connection) -> None:
                await db.set_due(conn, message_id, later)

            await _write_outcome(deps, message_id, postpone)
        except Exception:
            # Its lease runs out and it is due again: nothing is lost.
            log.exception("a due request failed; it is tried again after its lease")

    await asyncio.gather(*(again(raw) for raw in due))
    return len(due)


Written = TypeVar("Written")


async def _write_outcome(
    deps: Deps, message_id: str, write: Callable[[asyncpg.Connection], Awaitable[Written]]
) -> Written:
    """Run ``write`` in a transaction until PostgreSQL takes it (while it is away: any
    dependency outage): after the hand-off the outcome must not be lost (its event id is
    deterministic, so a retry is harmless). Answers what the write that committed answered
    (the status it wrote, for the outcome counter)."""
    delay = 0.1
    while True:
        try:
            async with deps.pool.acquire() as conn, conn.transaction():
                written = await write(conn)
            return written
        except Exception as err:
            if not is_outage(err):
                # The write itself is wrong (a bug, invalid data): retrying cannot help. The
                # row stays CLAIMED and the sweeper reports the message UNKNOWN.
                raise
            log.warning(
                "message %s: outcome not recorded (%r); retrying in %.1fs", message_id, err, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, OUTCOME_MAX_BACKOFF_S)


TEST_SUBJECT_PREFIX = "[Test] "
NO_CONTACT = "00000000-0000-0000-0000-000000000000"  # the ledger's contact of a sample test


async def deliver_test(deps: Deps, envelope: Envelope) -> None:
    """A test send (MESSAGE_KIND_TEST: a campaign's, or a workflow's test run) to the
    manager's own address (``test_recipient``), personalised with the chosen contact's data
    (or the sample contact's, every field empty, without one).

    What differs from a campaign mail, and why:

    - No consent or suppression check: the recipient is the manager, not the contact whose
      data fills it in (campaigns limits test sends per campaign and hour, so this cannot be
      used to spam). The anti-spam guard's suspension still applies: a suspended workspace
      sends nothing.
    - No tracking: no open pixel, no rewritten links, no preference footer, no
      List-Unsubscribe headers (a manager's clicks are nobody's engagement).
    - "[Test] " before the subject and an ``X-Nudge-Test: yes`` header.
    - Counted nowhere: the message id is claimed in the ledger (a redelivered request is not
      mailed twice, and GetMessageStatus answers its status) but no event is published on
      delivery.events.v1, which is what the campaign report and the guard count; the
      envelope sender is the plain no-reply address, not a VERP one, so a bounce of a test
      is never read back as a contact's bounce. It is sent once: no retry, no resend.
    """
    request = envelope.delivery_requested
    workspace_id = envelope.workspace_id
    recipient = _test_recipient(request.test_recipient)
    if not (
        is_uuid(request.message_id)
        and is_uuid(workspace_id)
        and (not request.contact_id or is_uuid(request.contact_id))
        and recipient
    ):
        log.error("dropping a malformed test send request: %s", request.message_id)
        return
    if await guard.refusal(deps.pool, workspace_id) is not None:
        log.warning("test send %s not sent: the workspace is suspended", request.message_id)
        return
    facts = None
    if request.contact_id:
        # Only the contact's data is read here, never its consent: a request without a
        # purpose (a workflow test run before 2026-12-04 sent none) asks as a transactional
        # one, rather than being refused by contacts and dead-lettered.
        purpose = request.purpose if request.purpose in PURPOSES else TRANSACTIONAL_PURPOSE
        facts = await deps.eligibility.check(workspace_id, request.contact_id, purpose)
    contact = {"first_name": "", "last_name": "", "email": "", "locale": ""}
    if facts is not None:
        contact = {
            "first_name": facts.first_name,
            "last_name": facts.last_name,
            "email": facts.email,
            "locale": facts.locale,
        }
    workspace_name = facts.workspace_name if facts is not None else request.from_name
    context: dict[str, object] = {
        "contact": contact,
        "workspace": {"name": workspace_name},
        "vars": dict(request.vars),
    }
    raw = b""
    status, detail = Status.SENT, ""
    try:
        rendered = render(
            request.content.subject, request.content.body_text, request.content.body_html, context
        )
        raw = build_email(
            request.message_id,
            workspace_id,
            deps.from_address,
            request.from_name or workspace_name,
            ("", recipient),
            Rendered(
                TEST_SUBJECT_PREFIX + rendered.subject, rendered.body_text, rendered.body_html
            ),
            reply_to=reply_to_address(request.reply_to),
            test=True,
        )
        if deps.auth is not None:  # signed like the real mail, so the test shows the same
            raw = await deps.auth.sign(workspace_id, deps.from_address, raw)
    except (RenderError, MailError) as err:
        status, detail = Status.FAILED, f"test send failed: {err}"[:1000]

    async with deps.pool.acquire() as conn, conn.transaction():
        claimed = await db.claim(
            conn,
            request.message_id,
            workspace_id,
            request.contact_id or NO_CONTACT,
            request.kind,
            request.campaign_id,
            request.workflow_id,
            clock.now(),
            origin=origin_of(envelope),
        )
    if claimed is None:
        log.info("test send %s already handled; not sending it again", request.message_id)
        return
    if status == Status.SENT:
        try:
            detail = await deps.smtp.send(
                raw,
                deps.from_address,
                recipient,
                request.message_id,
                contact_id=request.contact_id,
            )
        except Exception as err:
            if failure_of(err) is None:
                log.exception("test send %s failed", request.message_id)
            status, detail = Status.FAILED, f"test send failed: {err}"[:1000]

    async def record(conn: asyncpg.Connection) -> None:
        await db.set_status(conn, request.message_id, status, detail, clock.now())

    await _write_outcome(deps, request.message_id, record)
    OUTCOME_COUNTS.status(status, request.kind)


def _test_recipient(address: str) -> str:
    if not address:
        return ""
    try:
        return validate_email(address, check_deliverability=False).ascii_email or ""
    except EmailNotValidError:
        return ""


def reply_to_address(address: str) -> str:
    """The Reply-To of a mail: ``address`` when it is one (ASCII form), else none (a bad one
    is left out rather than failing the mail; campaigns validates it when it is set)."""
    if not address:
        return ""
    try:
        return validate_email(address, check_deliverability=False).ascii_email or ""
    except EmailNotValidError:
        log.warning("leaving out a Reply-To that is not an address: %r", address[:200])
        return ""


def mail_links(deps: Deps, workspace_id: str, request: delivery_pb2.DeliveryRequested) -> MailLinks:
    """The preference page link of a non-transactional mail; the confirmation link of a double
    opt-in mail (contacts asks for one with the ``confirm_expires_at`` var)."""
    base = deps.tracking_url.rstrip("/")
    ids = (workspace_id, request.message_id, request.contact_id)
    if request.kind != delivery_pb2.MESSAGE_KIND_TRANSACTIONAL:
        return MailLinks(preferences=base + links.sign_preferences(deps.link_secret, *ids))
    expires = request.vars.get("confirm_expires_at", "")
    if expires.isdigit() and int(expires) > 0:
        return MailLinks(confirm=base + links.sign_confirm(deps.link_secret, *ids, int(expires)))
    return MailLinks()


def build_email(
    message_id: str,
    workspace_id: str,
    from_address: str,
    workspace_name: str,
    to: tuple[str, str],
    rendered: Rendered,
    list_unsubscribe: str = "",
    *,
    reply_to: str = "",
    test: bool = False,
) -> bytes:
    """The mail's bytes as they go into SMTP DATA (domain/mime.py: tens of microseconds,
    where ``EmailMessage`` and ``as_bytes()`` took ~3.7 ms). ``list_unsubscribe`` is the
    one-click URL of a non-transactional mail. The Message-ID is made of the message id, so
    a transactional mail sent again (UNKNOWN) carries the same one."""
    return to_bytes(
        OutgoingMail(
            message_id=message_id,
            workspace_id=workspace_id,
            from_address=from_address,
            from_name=workspace_name,
            to_address=to[1],
            to_name=to[0],
            subject=rendered.subject,
            body_text=rendered.body_text,
            body_html=rendered.body_html,
            date=clock.now(),
            list_unsubscribe=list_unsubscribe,
            reply_to=reply_to,
            test=test,
        )
    )


async def _finish_unsent(
    deps: Deps,
    envelope: Envelope,
    status: Status,
    reason: str,
    reclaimable: Sequence[Status],
) -> None:
    request = envelope.delivery_requested
    async with deps.pool.acquire() as conn, conn.transaction():
        claimed = await db.claim(
            conn,
            request.message_id,
            envelope.workspace_id,
            request.contact_id,
            request.kind,
            request.campaign_id,
            request.workflow_id,
            clock.now(),
            reclaimable,
            origin_of(envelope),
        )
        if claimed:
            await _record_in(
                conn, envelope, status, reason, drop_pending=Status.DEFERRED in reclaimable
            )
    if claimed:
        OUTCOME_COUNTS.status(status, request.kind, reason)


async def _record_in(
    conn: asyncpg.Connection,
    envelope: Envelope,
    status: Status,
    detail: str,
    outcome: Outcome | None = None,
    *,
    attempts: int = 0,
    drop_pending: bool = False,
) -> None:
    """Write a final outcome and its event in the caller's transaction."""
    request = envelope.delivery_requested
    await db.set_status(conn, request.message_id, status, detail, clock.now())
    if drop_pending:
        await db.drop_pending(conn, request.message_id)
    event = _outcome_event(request, status, detail, outcome, attempts)
    await _publish(conn, envelope, event, deterministic_id("delivery-outcome", request.message_id))


async def _record_final(
    deps: Deps,
    envelope: Envelope,
    status: Status,
    detail: str,
    outcome: Outcome | None = None,
    *,
    drop_pending: bool = False,
) -> None:
    """:func:`_record_in` after the hand-off, in a group commit with other lanes' outcomes:
    retried until PostgreSQL takes it (services/delivery/writes.py)."""
    request = envelope.delivery_requested
    event = _outcome_event(request, status, detail, outcome, 0)
    await deps.writes.outcomes.submit(
        OutcomeItem(
            request.message_id,
            status,
            detail,
            drop_pending,
            request.contact_id,
            new_envelope(
                envelope.workspace_id,
                event,
                event_id=deterministic_id("delivery-outcome", request.message_id),
            ),
            current_traceparent(),
        )
    )
    OUTCOME_COUNTS.status(status, request.kind, permanent=outcome.permanent if outcome else True)


def _outcome_event(
    request: delivery_pb2.DeliveryRequested,
    status: Status,
    detail: str,
    outcome: Outcome | None,
    attempts: int,
) -> (
    events_pb2.MessageSent
    | events_pb2.MessageBounced
    | events_pb2.MessageFailed
    | events_pb2.MessageSkipped
):
    ids = {
        "message_id": request.message_id,
        "contact_id": request.contact_id,
        "campaign_id": request.campaign_id,
        "workflow_id": request.workflow_id,
    }
    event: (
        events_pb2.MessageSent
        | events_pb2.MessageBounced
        | events_pb2.MessageFailed
        | events_pb2.MessageSkipped
    )
    if status == Status.SENT:
        event = events_pb2.MessageSent(**ids, kind=request.kind, smtp_response=detail)
    elif status == Status.BOUNCED:
        event = events_pb2.MessageBounced(
            **ids,
            permanent=outcome.permanent if outcome else True,
            smtp_response=detail,
            source="smtp",
            status_code=outcome.status_code if outcome else "",
        )
    elif status == Status.FAILED:
        event = events_pb2.MessageFailed(**ids, reason=detail, attempts=attempts)
    else:
        event = events_pb2.MessageSkipped(**ids, reason=detail)
    return event


async def _publish(
    conn: asyncpg.Connection,
    envelope: Envelope,
    event: (
        events_pb2.MessageSent
        | events_pb2.MessageBounced
        | events_pb2.MessageFailed
        | events_pb2.MessageSkipped
        | events_pb2.MessageQueued
        | events_pb2.MessageDeferred
    ),
    event_id: str,
) -> None:
    await add_to_outbox(
        conn,
        db.SCHEMA,
        DELIVERY_EVENTS,
        envelope.delivery_requested.contact_id,
        new_envelope(envelope.workspace_id, event, event_id=event_id),
    )


async def send_transactional(
    pool: asyncpg.Pool, workspace_id: str, request: delivery_pb2.SendTransactionalRequest
) -> tuple[str, bool]:
    """Queue a transactional message (order details, password reset) once per idempotency
    key: (message id, replayed). A retried call queues nothing and answers the first call's
    message id; the same key with a different request is refused (a caller's bug: two
    different mails must not share a key, or the second would silently never be sent)."""
    v = Validator()
    v.check(0 < len(request.idempotency_key) <= 200, "idempotency_key", "1-200 characters")
    v.check(is_uuid(request.contact_id), "contact_id", "not a contact id")
    v.check(0 < len(request.content.subject) <= 200, "content.subject", "1-200 characters")
    v.check(
        0 < len(request.content.body_text) <= 100_000, "content.body_text", "1-100000 characters"
    )
    v.raise_if_any()
    try:
        check_templates(
            request.content.subject, request.content.body_text, request.content.body_html
        )
    except RenderError as err:
        raise InvalidArgument(FieldViolation("content", f"template error: {err}")) from err
    message_id = deterministic_id(workspace_id, "transactional", request.idempotency_key)
    requested = delivery_pb2.DeliveryRequested(
        message_id=message_id,
        contact_id=request.contact_id,
        kind=delivery_pb2.MESSAGE_KIND_TRANSACTIONAL,
        purpose=TRANSACTIONAL_PURPOSE,
        content=request.content,
        vars=dict(request.vars),
    )
    digest = hashlib.sha256(request.SerializeToString(deterministic=True)).digest()
    async with pool.acquire() as conn, conn.transaction():
        first = await conn.fetchrow(
            "INSERT INTO transactional_keys"
            " (workspace_id, idempotency_key, message_id, contact_id, request_sha256)"
            " VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (workspace_id, idempotency_key) DO NOTHING RETURNING message_id",
            uuid.UUID(workspace_id),
            request.idempotency_key,
            uuid.UUID(message_id),
            uuid.UUID(request.contact_id),
            digest,
        )
        if first is None:
            stored = await conn.fetchval(
                "SELECT request_sha256 FROM transactional_keys"
                " WHERE workspace_id = $1 AND idempotency_key = $2",
                uuid.UUID(workspace_id),
                request.idempotency_key,
            )
            if stored != digest:
                raise InvalidArgument(
                    FieldViolation("idempotency_key", "already used for a different request")
                )
            return message_id, True
        await add_to_outbox(
            conn,
            db.SCHEMA,
            DELIVERY_REQUESTS,
            request.contact_id,
            new_envelope(workspace_id, requested, event_id=message_id),
        )
    return message_id, False


async def message_status(
    pool: asyncpg.Pool, workspace_id: str, message_id: str
) -> delivery_pb2.GetMessageStatusResponse:
    if not is_uuid(message_id):
        raise NotFound("message not found")
    async with pool.acquire() as conn:
        row = await db.find(conn, workspace_id, uuid.UUID(message_id))
    if row is None:
        raise NotFound("message not found")
    answer = delivery_pb2.GetMessageStatusResponse(
        message_id=str(row["message_id"]),
        status=row["status"],
        detail=row["detail"],
    )
    answer.updated_at.FromDatetime(row["updated_at"])
    return answer
