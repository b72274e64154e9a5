"""The inbound SMTP endpoint: bounces (DSN) and complaints (ARF, JMRP) sent to VERP addresses.

An aiosmtpd server inside delivery, on ``DELIVERY_INBOUND_SMTP_PORT`` (0: not started). The
bounce domain's MX points at it (docs/delivery-auth.md). What it does:

- ``RCPT TO``: only a VERP address of ours (signed token, the bounce domain) naming a message
  of the ledger; anything else is refused ``550 5.1.1`` there, before any data is sent.
- ``DATA``: larger than ``DELIVERY_INBOUND_MAX_MESSAGE_BYTES`` is refused ``552`` (the limit
  is announced with SIZE). A report (services/delivery/domain/reports.py) becomes, for the
  message its address names, one event on delivery.events.v1 through the outbox:
  ``MessageBounced`` (source "dsn"; permanent for a hard bounce, which also marks the
  ledger row BOUNCED) or ``MessageComplained``. Contacts suppresses the address for a hard
  bounce or a complaint. A mail that is no report is refused ``550 5.6.0``; a success notice
  is accepted and dropped.
- The event id is a function of the message and what happened, and each is recorded in
  ``inbound_reports`` in the transaction of the event: a report received twice publishes
  once. A database failure answers ``451`` so that the sender retries; nothing is half done.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import asyncpg
from aiosmtpd.smtp import SMTP, Envelope, Session
from nudge.delivery.v1 import events_pb2

from services.common import clock, runtime
from services.common.events import deterministic_id, new_envelope
from services.common.outbox import add_to_outbox
from services.common.topics import DELIVERY_EVENTS
from services.delivery.adapters.postgres import SCHEMA
from services.delivery.config import Settings
from services.delivery.domain import reports, verp
from services.delivery.domain.ledger import Status
from services.delivery.mail_auth import MailAuth
from services.delivery.outcome_metrics import OUTCOME_COUNTS
from services.delivery.privacy import ERASED_DETAIL

log = logging.getLogger(__name__)
MAX_RECIPIENTS = 10


@dataclass(frozen=True)
class LedgerMessage:
    message_id: str
    workspace_id: str
    contact_id: str
    campaign_id: str
    workflow_id: str
    erased: bool  # its contact was erased (services/delivery/privacy.py)
    kind: int = 0  # its MessageKind (nudge_delivery_outcomes_total)


async def find_message(pool: asyncpg.Pool, message_id: str) -> LedgerMessage | None:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT workspace_id, contact_id, campaign_id, workflow_id, detail, kind FROM messages"
            " WHERE message_id = $1",
            uuid.UUID(message_id),
        )
    if row is None:
        return None
    return LedgerMessage(
        message_id=message_id,
        workspace_id=str(row["workspace_id"]),
        contact_id=str(row["contact_id"]),
        campaign_id=row["campaign_id"],
        workflow_id=row["workflow_id"],
        erased=row["detail"] == ERASED_DETAIL,
        kind=row["kind"],
    )


def event_for(
    message: LedgerMessage, report: reports.Bounce | reports.Complaint
) -> tuple[str, str, events_pb2.MessageBounced | events_pb2.MessageComplained]:
    """(kind, deterministic event id, payload). A message bounces hard or is complained
    about once; soft bounces once per status code (a "still retrying" notice repeats)."""
    ids = {
        "message_id": message.message_id,
        "contact_id": message.contact_id,
        "campaign_id": message.campaign_id,
        "workflow_id": message.workflow_id,
    }
    if isinstance(report, reports.Complaint):
        kind = "complaint"
        event_id = deterministic_id("delivery-report", message.message_id, kind)
        return (
            kind,
            event_id,
            events_pb2.MessageComplained(
                **ids, feedback_type=report.feedback_type, reporter=report.reporter
            ),
        )
    kind = "hard_bounce" if report.permanent else "soft_bounce"
    parts = [message.message_id, kind] + ([] if report.permanent else [report.status_code])
    return (
        kind,
        deterministic_id("delivery-report", *parts),
        events_pb2.MessageBounced(
            **ids,
            permanent=report.permanent,
            smtp_response=report.diagnostic,
            source="dsn",
            status_code=report.status_code,
        ),
    )


async def record(
    pool: asyncpg.Pool, message: LedgerMessage, report: reports.Bounce | reports.Complaint
) -> bool:
    """Apply the report to the message once; True when it was new."""
    kind, event_id, payload = event_for(message, report)
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        fresh = await conn.fetchval(
            "INSERT INTO inbound_reports (event_id, workspace_id, message_id, kind, received_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING RETURNING 1",
            uuid.UUID(event_id),
            uuid.UUID(message.workspace_id),
            uuid.UUID(message.message_id),
            kind,
            now,
        )
        if fresh is None:
            return False
        if isinstance(report, reports.Bounce) and report.permanent:
            # The server took the mail (SENT) or we never heard (CLAIMED): now we know.
            await conn.execute(
                "UPDATE messages SET status = $2, detail = $3, updated_at = $4"
                " WHERE message_id = $1 AND status IN ($5, $6)",
                uuid.UUID(message.message_id),
                Status.BOUNCED,
                f"dsn {report.status_code} {report.diagnostic}"[:1000],
                now,
                Status.SENT,
                Status.CLAIMED,
            )
        await add_to_outbox(
            conn,
            SCHEMA,
            DELIVERY_EVENTS,
            message.contact_id,
            new_envelope(message.workspace_id, payload, event_id=event_id),
        )
    if isinstance(report, reports.Complaint):
        OUTCOME_COUNTS.count("complained", message.kind)
    else:
        OUTCOME_COUNTS.count("bounced_hard" if report.permanent else "bounced_soft", message.kind)
    return True


class ReportHandler:
    """aiosmtpd handler: the checks at RCPT and the reports at DATA (module docstring)."""

    def __init__(self, pool: asyncpg.Pool, auth: MailAuth) -> None:
        self.pool = pool
        self.auth = auth

    def _message_id(self, address: str) -> str | None:
        return verp.message_of(self.auth.verp_key, address, self.auth.bounce_domain)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        message_id = self._message_id(address)
        if message_id is None:
            return f"550 5.1.1 <{address}>: not a bounce address of this server"
        try:
            found = await find_message(self.pool, message_id)
        except (OSError, asyncpg.PostgresError) as err:
            log.warning("inbound: ledger unavailable at RCPT: %s", err)
            return "451 4.3.0 Temporary failure, try again later"
        if found is None:
            return f"550 5.1.1 <{address}>: no such message"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else str(content).encode()
        report = reports.parse(raw)
        if isinstance(report, reports.Ignored):
            verdict = "refused" if report.refuse else "ignored"
            log.info("inbound: %s from %s: %s", verdict, envelope.mail_from, report.reason)
            if report.refuse:
                return f"550 5.6.0 Not accepted: {report.reason}"
            return f"250 2.0.0 Accepted and ignored: {report.reason}"
        try:
            for address in envelope.rcpt_tos:
                message_id = self._message_id(address)
                found = None if message_id is None else await find_message(self.pool, message_id)
                if found is None:
                    continue  # checked at RCPT; gone since only if the ledger was reset
                if found.erased:
                    # The report quotes the address of someone who asked to be forgotten:
                    # their address is suppressed by the erasure already; keep nothing.
                    log.info("inbound: dropped a report on erased message %s", found.message_id)
                    continue
                fresh = await record(self.pool, found, report)
                log.info(
                    "inbound: %s for message %s (%s)",
                    type(report).__name__.lower(),
                    found.message_id,
                    "recorded" if fresh else "already recorded",
                )
        except (OSError, asyncpg.PostgresError) as err:
            log.warning("inbound: could not record a report: %s", err)
            return "451 4.3.0 Temporary failure, try again later"
        return "250 2.0.0 Report recorded"


async def start_inbound(
    service: runtime.Service, settings: Settings, pool: asyncpg.Pool, auth: MailAuth
) -> None:
    """Listen for reports on ``settings.inbound_smtp_port``, unless it is 0."""
    if settings.inbound_smtp_port == 0:
        return
    handler = ReportHandler(pool, auth)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            data_size_limit=settings.inbound_max_message_bytes,
            enable_SMTPUTF8=True,
            hostname=auth.bounce_domain,
            ident="Nudge bounce processor",
        ),
        settings.bind_host,
        settings.inbound_smtp_port,
    )

    async def close() -> None:
        server.close()
        await asyncio.wait_for(server.wait_closed(), timeout=5)

    service.push(close)
    log.info(
        "delivery receiving bounces and complaints for %s on port %s",
        auth.bounce_domain,
        settings.inbound_smtp_port,
    )
