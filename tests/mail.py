"""Reading the mail the session's SMTP sink received, whichever sink it is.

The ``infra`` fixture points ``SMTP_URL`` at the local aiosmtpd sink (``NUDGE_MAILDIR``) or,
when a Docker engine answers, at Mailpit (``MAILPIT_URL``). Tests read mail only through
:func:`mails` so that they pass on both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from email.message import EmailMessage

from deploy.local.smtp_sink import MailReader, mail_reader


def reader(environ: Mapping[str, str] | None = None) -> MailReader:
    found = mail_reader(os.environ if environ is None else environ)
    if found is None:
        raise RuntimeError("no mail to read: neither NUDGE_MAILDIR nor MAILPIT_URL is set")
    return found


def mails(environ: Mapping[str, str] | None = None) -> list[EmailMessage]:
    """Every mail the sink holds, oldest first."""
    return reader(environ).messages()


def mails_with(
    header: str, value: str, environ: Mapping[str, str] | None = None
) -> list[EmailMessage]:
    return [m for m in mails(environ) if str(m.get(header, "")) == value]
