"""VERP (variable envelope return path): each mail's SMTP ``MAIL FROM`` names its message.

A bounce (DSN) or a feedback-loop report goes to the envelope sender, often without quoting
the original mail in a form one could parse. With ``bounces+<token>@<bounce domain>`` as the
sender, the address alone says which message bounced.

The token is base32 (lower case: some relays fold the local part's case, and base32 does not
care) of the message id's 16 bytes and the first 8 bytes of an HMAC-SHA256 of them under a
key of delivery's: 39 characters, so the local part (``bounces+`` and the token, 47) stays
under RFC 5321's 64. The HMAC makes the endpoint refuse guessed or altered addresses at RCPT
without a database read, and 64 bits leave nothing to guess. The workspace is not in the
token (two ids do not fit in 64 characters): a message id is unique across workspaces, and
the ledger row names its workspace.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid

PREFIX = "bounces+"
_MAC_BYTES = 8
_TOKEN_CHARS = 39  # base32 of 24 bytes, without its padding


def derive_key(secret: str) -> bytes:
    """A key of its own from a deployment secret (domain-separated, so a VERP token is never
    a valid tracking-link signature or the other way around)."""
    return hmac.new(secret.encode(), b"nudge-verp-v1", hashlib.sha256).digest()


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()[:_MAC_BYTES]


def token(key: bytes, message_id: str) -> str:
    raw = uuid.UUID(message_id).bytes
    return base64.b32encode(raw + _mac(key, raw)).decode().rstrip("=").lower()


def address(key: bytes, message_id: str, bounce_domain: str) -> str:
    """The envelope sender of the message ``message_id``."""
    return f"{PREFIX}{token(key, message_id)}@{bounce_domain}"


def message_of(key: bytes, recipient: str, bounce_domain: str) -> str | None:
    """The message id a VERP address names, or None when it is not one of ours (another
    domain, another shape, a token that is not signed by ``key``)."""
    local, at, domain = recipient.strip().strip("<>").rpartition("@")
    if not at or domain.lower().rstrip(".") != bounce_domain.lower():
        return None
    local = local.lower()
    if not local.startswith(PREFIX) or len(local) != len(PREFIX) + _TOKEN_CHARS:
        return None
    encoded = local[len(PREFIX) :]
    try:
        raw = base64.b32decode(encoded.upper() + "=")
    except (binascii.Error, ValueError):
        return None
    # The last character carries 3 unused bits, which decoding ignores: only the canonical
    # spelling is ours, so that one message has one address.
    if base64.b32encode(raw).decode().rstrip("=").lower() != encoded:
        return None
    message, mac = raw[:16], raw[16:]
    if not hmac.compare_digest(mac, _mac(key, message)):
        return None
    return str(uuid.UUID(bytes=message))
