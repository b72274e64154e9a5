"""The SMTP hand-off, as one traced span per message, and what its failures mean.

:meth:`SmtpSender.send` raises aiosmtplib's errors as they come (and
:class:`AmbiguousHandoff` when the data went out without an answer); any sender with the
same contract (a pooled one) can take its place. :func:`failure_of` reads such an error as
the domain sees it: the stage of the conversation and the server's reply, for
:func:`services.delivery.domain.ledger.classify`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiosmtplib
from opentelemetry import trace

from services.common.context import workspace_id_var
from services.delivery.domain.ledger import Stage

tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    use_tls: bool
    username: str | None
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> SmtpTarget:
        """``smtp://[user:pass@]host:port`` (STARTTLS when offered) or ``smtps://`` (TLS)."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"SMTP_URL must look like smtp://host:port, got {url!r}")
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if parts.scheme == "smtps" else 25),
            use_tls=parts.scheme == "smtps",
            username=parts.username,
            password=parts.password,
        )


class AmbiguousHandoff(Exception):
    """The message data went out but the server's answer never came (timeout, dropped
    connection): the server may have accepted it. Sending it again could mail twice."""


class SmtpSender:
    def __init__(self, target: SmtpTarget, timeout_s: float) -> None:
        self._target = target
        self._timeout = timeout_s

    async def send(
        self, raw: bytes, sender: str, recipient: str, message_id: str = "", *, contact_id: str = ""
    ) -> str:
        """Hand the mail over (its bytes, CRLF line ends: aiosmtplib dot-stuffs them); returns
        the server's reply. Raises aiosmtplib errors, or :class:`AmbiguousHandoff` when the
        outcome is unknown. ``message_id`` and ``contact_id`` name the span."""
        with tracer.start_as_current_span(
            "smtp send",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "server.address": self._target.host,
                "server.port": self._target.port,
                "nudge.message_id": message_id,
                "nudge.contact_id": contact_id,
                "nudge.workspace_id": workspace_id_var.get(),
            },
        ):
            client = aiosmtplib.SMTP(
                hostname=self._target.host,
                port=self._target.port,
                use_tls=self._target.use_tls,
                start_tls=None,
                username=self._target.username,
                password=self._target.password,
                timeout=self._timeout,
            )
            # Step by step rather than aiosmtplib.send: a refused recipient must surface as
            # its own reply code (send() wraps it in SMTPRecipientsRefused, without one),
            # and a failure after the data went out is not the same as one before it.
            async with client:  # connects, STARTTLS when offered, logs in
                await envelope(client, sender, recipient)
                try:
                    response = await client.data(raw)
                except aiosmtplib.SMTPResponseException:
                    raise  # the server answered: no doubt about the outcome
                except (aiosmtplib.SMTPException, OSError) as err:
                    client.close()
                    raise AmbiguousHandoff(repr(err)) from err
            return response.message


async def envelope(client: aiosmtplib.SMTP, sender: str, recipient: str) -> None:
    """MAIL and RCPT. A recipient with a non-ASCII local part (RFC 6531: contacts accepts
    ``zoé@example.org``; its domain is already in A-labels) needs a relay offering SMTPUTF8,
    and then goes with MAIL's SMTPUTF8 option and in UTF-8. Without it: SMTPNotSupported
    before any command, a refusal of this message (:func:`failure_of`), where aiosmtplib
    would raise a UnicodeEncodeError that reads as a bug and holds the request."""
    if recipient.isascii():
        await client.mail(sender)
        await client.rcpt(recipient)
        return
    if client.is_ehlo_or_helo_needed:
        await client.ehlo()
    if not client.supports_extension("smtputf8"):
        raise aiosmtplib.SMTPNotSupported(
            f"the relay does not offer SMTPUTF8, needed for {recipient!r}"
        )
    await client.mail(sender, options=["SMTPUTF8"])
    await client.rcpt(recipient, encoding="utf-8")


async def probe_session(target: SmtpTarget, timeout_s: float, sender: str) -> None:
    """Open a session as a hand-off would (connect, STARTTLS, login, MAIL FROM), then give
    it up: whether sending works again, without claiming a message. Raises what
    :meth:`SmtpSender.send` would. ``sender`` must be the kind of address real sends use
    (mail_auth.py ``MailAuth.probe_sender``: VERP at the bounce domain), or a relay that
    refuses only that would pass the probe and fail every send."""
    client = aiosmtplib.SMTP(
        hostname=target.host,
        port=target.port,
        use_tls=target.use_tls,
        start_tls=None,
        username=target.username,
        password=target.password,
        timeout=timeout_s,
    )
    async with client:
        await client.mail(sender)
        await client.rset()


@dataclass(frozen=True)
class HandoffFailure:
    """Where a hand-off stopped, and the server's reply code and text when it answered."""

    stage: Stage
    code: int | None
    text: str


def failure_of(err: BaseException) -> HandoffFailure | None:
    """The hand-off failure ``err`` stands for, or None when it is no SMTP failure (a bug,
    a cancellation): those propagate."""
    if isinstance(err, AmbiguousHandoff):
        return HandoffFailure(Stage.NO_ANSWER, None, str(err))
    if isinstance(err, aiosmtplib.SMTPRecipientRefused):
        return HandoffFailure(Stage.RCPT, err.code, err.message)
    if isinstance(err, aiosmtplib.SMTPSenderRefused):
        return HandoffFailure(Stage.MAIL, err.code, err.message)
    if isinstance(err, aiosmtplib.SMTPDataError):
        return HandoffFailure(Stage.DATA, err.code, err.message)
    if isinstance(err, aiosmtplib.SMTPAuthenticationError):
        return HandoffFailure(Stage.AUTH, err.code, err.message)
    if isinstance(err, aiosmtplib.SMTPHeloError):
        return HandoffFailure(Stage.HELO, err.code, err.message)
    if isinstance(err, aiosmtplib.SMTPConnectError):  # refused, timed out, greeted with 4xx/5xx
        code = err.code if isinstance(err, aiosmtplib.SMTPResponseException) else None
        return HandoffFailure(Stage.CONNECT, code, str(err))
    if isinstance(err, ssl.SSLError):
        return HandoffFailure(Stage.TLS, None, repr(err))
    if isinstance(err, aiosmtplib.SMTPNotSupported):
        # The server cannot take this address (SMTPUTF8): a refusal of this message only.
        return HandoffFailure(Stage.RCPT, 553, f"5.6.7 {err}")
    if isinstance(err, aiosmtplib.SMTPResponseException):
        return HandoffFailure(Stage.DISCONNECTED, err.code, err.message)
    if isinstance(err, aiosmtplib.SMTPException):
        text = str(err)
        lowered = text.lower()
        if "tls" in lowered:
            return HandoffFailure(Stage.TLS, None, text)
        if "auth" in lowered:
            return HandoffFailure(Stage.AUTH, None, text)
        return HandoffFailure(Stage.DISCONNECTED, None, text)
    if isinstance(err, OSError):  # a connection reset or a timeout before the data went out
        return HandoffFailure(Stage.DISCONNECTED, None, repr(err))
    return None
