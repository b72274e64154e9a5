"""The SMTP hand-off, as one traced span per message."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import urlsplit

import aiosmtplib
from opentelemetry import trace

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

    async def send(self, message: EmailMessage, sender: str, recipient: str) -> str:
        """Hand the message over; returns the server's reply. Raises aiosmtplib errors, or
        :class:`AmbiguousHandoff` when the outcome is unknown.

        The message goes as the bytes its own policy makes: aiosmtplib would flatten it again
        with a 78-column policy that RFC 2047-encodes long URLs in headers."""
        with tracer.start_as_current_span(
            "smtp send",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "server.address": self._target.host,
                "server.port": self._target.port,
                "nudge.message_id": str(message["X-Nudge-Message-Id"]),
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
                await client.mail(sender)
                await client.rcpt(recipient)
                try:
                    response = await client.data(message.as_bytes())
                except aiosmtplib.SMTPResponseException:
                    raise  # the server answered: no doubt about the outcome
                except (aiosmtplib.SMTPException, OSError) as err:
                    client.close()
                    raise AmbiguousHandoff(repr(err)) from err
            return response.message
