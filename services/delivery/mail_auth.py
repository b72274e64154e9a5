"""What the send path adds to a mail so that receivers can trust it and bounces find it: the
DKIM signature of its From domain's key, and its VERP envelope sender (docs/delivery-auth.md).

The send path (services/delivery/handlers.py) calls :meth:`MailAuth.envelope_sender` for the
``MAIL FROM`` and :meth:`MailAuth.sign` on the finished mail's bytes just before the hand-off.
"""

from __future__ import annotations

import logging

from services.delivery.adapters.dkim_keys import KeyCache
from services.delivery.config import Settings
from services.delivery.domain import dkim, verp
from services.delivery.domain.mime import ascii_address

log = logging.getLogger(__name__)
PROBE_MESSAGE_ID = "00000000-0000-0000-0000-000000000000"


class MailAuth:
    def __init__(self, keys: KeyCache, verp_key: bytes, bounce_domain: str) -> None:
        self.keys = keys
        self.verp_key = verp_key
        self.bounce_domain = bounce_domain

    def envelope_sender(self, message_id: str) -> str:
        return verp.address(self.verp_key, message_id, self.bounce_domain)

    def probe_sender(self) -> str:
        """The ``MAIL FROM`` of the paused-sending probe (adapters/smtp.py probe_session):
        an address of the same kind as a real send's, VERP at the bounce domain, so that a
        relay refusing that domain refuses the probe too and sending stays paused. It names
        the nil message id, which no message has."""
        return self.envelope_sender(PROBE_MESSAGE_ID)

    async def sign(self, workspace_id: str, from_address: str, raw: bytes) -> bytes:
        """The mail ``raw`` (domain/mime.py's bytes, whose From is ``from_address``) signed
        with the workspace's key for that address's domain: dkimpy's ``DKIM-Signature``
        line put in front, unchanged (first among the headers, RFC 6376 5.6); ``raw`` as it
        is when there is no key. The signature covers exactly these bytes, which the SMTP
        sender hands over as they are: nothing may change them after this call."""
        # The key store holds A-label domains; so does the From header (domain/mime.py).
        domain = ascii_address(from_address).rpartition("@")[2].lower()
        if not domain:
            return raw
        key = await self.keys.get(workspace_id, domain)
        if key is None:
            return raw
        return dkim.sign(raw, key.domain, key.selector, key.material) + raw


def mail_auth(settings: Settings, keys: KeyCache) -> MailAuth:
    """The VERP key is derived from the link secret (one secret fewer to provision); the
    bounce domain defaults to the From address's."""
    bounce_domain = settings.bounce_domain or settings.from_address.rpartition("@")[2]
    return MailAuth(keys, verp.derive_key(settings.link_secret), bounce_domain.lower())
