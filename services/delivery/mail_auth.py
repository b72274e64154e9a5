"""What the send path adds to a mail so that receivers can trust it and bounces find it: the
DKIM signature of its From domain's key, and its VERP envelope sender (docs/delivery-auth.md).

The send path (services/delivery/handlers.py) calls :meth:`MailAuth.envelope_sender` for the
``MAIL FROM`` and :meth:`MailAuth.sign` on the finished message just before the hand-off.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import parseaddr

from services.delivery.adapters.dkim_keys import KeyCache
from services.delivery.config import Settings
from services.delivery.domain import dkim, verp

log = logging.getLogger(__name__)
DKIM_HEADER = "DKIM-Signature"


class MailAuth:
    def __init__(self, keys: KeyCache, verp_key: bytes, bounce_domain: str) -> None:
        self.keys = keys
        self.verp_key = verp_key
        self.bounce_domain = bounce_domain

    def envelope_sender(self, message_id: str) -> str:
        return verp.address(self.verp_key, message_id, self.bounce_domain)

    async def sign(self, workspace_id: str, message: EmailMessage) -> EmailMessage:
        """Sign ``message`` in place with the workspace's key for its From domain, the
        signature first among its headers (RFC 6376 5.6); unchanged when there is no key.

        The signature covers the bytes ``message.as_bytes()`` makes, which is how the SMTP
        sender serialises it: the message must not change after this call."""
        domain = parseaddr(str(message.get("From", "")))[1].rpartition("@")[2].lower()
        if not domain:
            return message
        key = await self.keys.get(workspace_id, domain)
        if key is None:
            return message
        line = dkim.sign(message.as_bytes(), key.domain, key.selector, key.material)
        # Unfolded: the email package refuses line breaks in a value and folds at its own
        # limit; relaxed canonicalisation makes the two foldings sign the same.
        value = line.decode("ascii").split(":", 1)[1].replace("\r\n", "").strip()
        headers = message.items()
        for name in {name for name, _ in headers}:
            del message[name]
        message[DKIM_HEADER] = value
        for name, header in headers:
            message[name] = header
        return message


def mail_auth(settings: Settings, keys: KeyCache) -> MailAuth:
    """The VERP key is derived from the link secret (one secret fewer to provision); the
    bounce domain defaults to the From address's."""
    bounce_domain = settings.bounce_domain or settings.from_address.rpartition("@")[2]
    return MailAuth(keys, verp.derive_key(settings.link_secret), bounce_domain.lower())
