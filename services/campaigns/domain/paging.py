"""Keyset pagination of campaign lists, newest first, on (created_at, id).

A page token is opaque to callers: the position after the last campaign of the previous
page, as ``v1.<microseconds since the epoch>.<campaign id hex>`` in URL-safe base64. Keyset,
not offset, so a page stays right while campaigns are being created.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# The limits live in services/common, shared with the gateway.
from services.common.campaign_limits import DEFAULT_PAGE_SIZE as DEFAULT_PAGE_SIZE
from services.common.campaign_limits import MAX_PAGE_SIZE as MAX_PAGE_SIZE
from services.common.campaign_limits import MAX_PAGE_TOKEN
from services.common.errors import Validator

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    id: uuid.UUID


def page_size_of(v: Validator, requested: int) -> int:
    """The page size to use: ``requested``, or the default when it is 0 (unset)."""
    v.check(0 <= requested <= MAX_PAGE_SIZE, "page_size", f"must be 1-{MAX_PAGE_SIZE}")
    return requested or DEFAULT_PAGE_SIZE


def encode_token(cursor: Cursor) -> str:
    micros = (cursor.created_at - _EPOCH) // _MICROSECOND
    raw = f"v1.{micros}.{cursor.id.hex}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> Cursor | None:
    """The cursor in ``token``, or None when it is not a token this service made."""
    if len(token) > MAX_PAGE_TOKEN:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        version, micros, id_hex = raw.split(".")
        if version != "v1" or not micros.lstrip("-").isdigit():
            return None
        return Cursor(_EPOCH + int(micros) * _MICROSECOND, uuid.UUID(hex=id_hex))
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        return None
