"""Signed tracking links: the open pixel, click redirects and unsubscribe links in every mail.

Pure and standard-library only, and in ``services/common`` because two services share it:
delivery builds the links that tracking later verifies (neither imports the other)::

    path = sign_click(secret, workspace_id, message_id, contact_id, "https://shop.example/x")
    url = tracking_base_url + path          # "/c/<token>"
    claims = verify(secret, token)          # LinkClaims, or InvalidLink

A token is ``base64url(payload || mac)`` without padding, where ``mac`` is the first 16 bytes
of HMAC-SHA256(secret, payload). The payload is binary to keep links short: a version byte,
a kind byte (so an open token cannot serve as an unsubscribe token), then the workspace,
message and contact ids and, for clicks, the destination URL. Ids that are UUIDs take 16
bytes; any other id is stored as length-prefixed UTF-8. Changing any byte, the URL of a click
included, breaks the MAC. Links do not expire: a mail may be opened years later.

Two kinds serve consent (issue 12): the preference page of a mail (``/p/<token>``, which does
not expire either) and the double opt-in confirmation (``/k/<token>``), whose payload ends
with its expiry (8 bytes, big-endian Unix seconds, inside the MAC): :func:`verify` refuses
it afterwards with :class:`ExpiredLink`, so that tracking can say so instead of granting.

Issue 14: open and click links may also carry the time the mail was issued and, for a click,
the link's position in the mail (``sign_open(..., issued_at=...)``, ``sign_click(...,
link_index=..., issued_at=...)``). Such tokens use payload version 2: after the three ids come
the issue time (4 bytes, big-endian Unix seconds) and, for a click, the index (2 bytes) before
the URL. Both sit inside the MAC, so tracking can trust them to tell a scanner that clicks
within a second of delivery from a reader. Version 1 tokens (mails sent before) still verify,
with ``issued_at == 0`` and ``link_index == -1`` (unknown).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

VERSION = 1
VERSION_TRACKED = 2  # open and click tokens with the issue time (and the click's link index)
MAX_LINK_INDEX = 0xFFFF
MAX_ISSUED_AT = 0xFFFFFFFF
MAC_BYTES = 16  # 128 bits: forging one is as hard as guessing a random UUID, twice over
MAX_URL_BYTES = 4096
MAX_ID_BYTES = 255
MAX_TOKEN_CHARS = 6000
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_UUID_TAG = 0
_TEXT_TAG = 1


class LinkKind(Enum):
    OPEN = "o"
    CLICK = "c"
    UNSUBSCRIBE = "u"
    PREFERENCES = "p"
    CONFIRM = "k"


_KIND_BYTES = {
    LinkKind.OPEN: 1,
    LinkKind.CLICK: 2,
    LinkKind.UNSUBSCRIBE: 3,
    LinkKind.PREFERENCES: 4,
    LinkKind.CONFIRM: 5,
}
_KIND_BY_BYTE = {b: k for k, b in _KIND_BYTES.items()}


class InvalidLink(ValueError):
    """The token was not made by :func:`sign_open`, :func:`sign_click` or
    :func:`sign_unsubscribe` with this secret, or was altered since."""


class ExpiredLink(InvalidLink):
    """A genuine confirmation link, past its expiry."""


@dataclass(frozen=True)
class LinkClaims:
    kind: LinkKind
    workspace_id: str
    message_id: str
    contact_id: str
    url: str = ""  # the destination of a click link; empty for the other kinds
    expires_at: int = 0  # Unix seconds, for confirmation links; 0 for the other kinds
    issued_at: int = 0  # Unix seconds the mail was issued (version 2 opens/clicks); 0 unknown
    link_index: int = -1  # the click link's position in the mail, from 0; -1 unknown


def sign_open(
    secret: str,
    workspace_id: str,
    message_id: str,
    contact_id: str,
    *,
    issued_at: int | None = None,
) -> str:
    """The path of the open pixel: ``/o/<token>.gif``; with ``issued_at`` (Unix seconds) the
    token carries the mail's issue time (version 2)."""
    claims = LinkClaims(
        LinkKind.OPEN, workspace_id, message_id, contact_id, issued_at=_issued(issued_at)
    )
    return f"/o/{_sign(secret, claims)}.gif"


def sign_click(
    secret: str,
    workspace_id: str,
    message_id: str,
    contact_id: str,
    url: str,
    *,
    link_index: int | None = None,
    issued_at: int | None = None,
) -> str:
    """The path of a tracked link to ``url`` (http or https only): ``/c/<token>``; with
    ``link_index`` and ``issued_at`` (both or neither) the token carries them (version 2)."""
    if not is_web_url(url):
        raise ValueError(f"only absolute http(s) URLs can be tracked, not {url[:80]!r}")
    if (link_index is None) != (issued_at is None):
        raise ValueError("give both link_index and issued_at, or neither")
    if link_index is not None and not 0 <= link_index <= MAX_LINK_INDEX:
        raise ValueError(f"link_index must be 0-{MAX_LINK_INDEX}")
    claims = LinkClaims(
        LinkKind.CLICK,
        workspace_id,
        message_id,
        contact_id,
        url,
        issued_at=_issued(issued_at),
        link_index=-1 if link_index is None else link_index,
    )
    return f"/c/{_sign(secret, claims)}"


def _issued(issued_at: int | None) -> int:
    if issued_at is None:
        return 0
    if not 0 < issued_at <= MAX_ISSUED_AT:
        raise ValueError("issued_at must be positive Unix seconds (32 bits)")
    return issued_at


def sign_unsubscribe(secret: str, workspace_id: str, message_id: str, contact_id: str) -> str:
    """The path of the unsubscribe link and of the RFC 8058 one-click target: ``/u/<token>``."""
    token = _sign(secret, LinkClaims(LinkKind.UNSUBSCRIBE, workspace_id, message_id, contact_id))
    return f"/u/{token}"


def sign_preferences(secret: str, workspace_id: str, message_id: str, contact_id: str) -> str:
    """The path of a mail's preference page: ``/p/<token>``."""
    token = _sign(secret, LinkClaims(LinkKind.PREFERENCES, workspace_id, message_id, contact_id))
    return f"/p/{token}"


def sign_confirm(
    secret: str, workspace_id: str, message_id: str, contact_id: str, expires_at: int
) -> str:
    """The path of a double opt-in confirmation link, valid until ``expires_at`` (Unix
    seconds): ``/k/<token>``."""
    if expires_at <= 0:
        raise ValueError("a confirmation link needs an expiry")
    claims = LinkClaims(
        LinkKind.CONFIRM, workspace_id, message_id, contact_id, expires_at=expires_at
    )
    return f"/k/{_sign(secret, claims)}"


def verify(
    secret: str, token: str, kind: LinkKind | None = None, *, now: float | None = None
) -> LinkClaims:
    """The claims of ``token`` (the part of the path after ``/o/``, ``/c/`` or ``/u/``).

    Raises :class:`InvalidLink` when the token is malformed, was signed with another secret,
    was altered, or (when ``kind`` is given) is of another kind.
    """
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN.fullmatch(token):
        raise InvalidLink("not base64url")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as err:
        raise InvalidLink("not base64url") from err
    if _b64(raw) != token:  # unused low bits of the last character: one token, one spelling
        raise InvalidLink("not canonical base64url")
    if len(raw) <= MAC_BYTES + 2:
        raise InvalidLink("too short")
    payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        raise InvalidLink("bad signature")
    # Only payloads we signed get this far, so a decoding error below is a bug or a secret
    # shared with something else; either way the link is not ours to follow.
    claims = _decode(payload)
    if kind is not None and claims.kind is not kind:
        raise InvalidLink(f"a {claims.kind.name.lower()} link, not a {kind.name.lower()} link")
    if claims.kind is LinkKind.CLICK and not is_web_url(claims.url):
        raise InvalidLink("click destination is not an http(s) URL")
    if claims.kind is LinkKind.CONFIRM and claims.expires_at <= (
        time.time() if now is None else now
    ):
        raise ExpiredLink("the confirmation link has expired")
    return claims


def is_web_url(url: str) -> bool:
    """True for absolute http and https URLs with a host (never javascript:, data:, //x)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and url.isprintable()


def _mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:MAC_BYTES]


def _sign(secret: str, claims: LinkClaims) -> str:
    if not secret:
        raise ValueError("an empty link secret would let anyone forge links")
    payload = _encode(claims)
    return _b64(payload + _mac(secret, payload))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _encode(claims: LinkClaims) -> bytes:
    tracked = claims.issued_at > 0 and claims.kind in (LinkKind.OPEN, LinkKind.CLICK)
    out = bytearray((VERSION_TRACKED if tracked else VERSION, _KIND_BYTES[claims.kind]))
    for value in (claims.workspace_id, claims.message_id, claims.contact_id):
        out += _encode_id(value)
    if tracked:
        out += claims.issued_at.to_bytes(4, "big")
        if claims.kind is LinkKind.CLICK:
            out += claims.link_index.to_bytes(2, "big")
    if claims.kind is LinkKind.CLICK:
        url = claims.url.encode()
        if len(url) > MAX_URL_BYTES:
            raise ValueError(f"URL longer than {MAX_URL_BYTES} bytes")
        out += url  # the rest of the payload
    elif claims.kind is LinkKind.CONFIRM:
        out += claims.expires_at.to_bytes(8, "big")
    return bytes(out)


def _encode_id(value: str) -> bytes:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        parsed = None
    if parsed is not None and str(parsed) == value:  # only canonical text round-trips
        return bytes((_UUID_TAG,)) + parsed.bytes
    data = value.encode()
    if not data or len(data) > MAX_ID_BYTES:
        raise ValueError(f"an id must be 1-{MAX_ID_BYTES} bytes")
    return bytes((_TEXT_TAG, len(data))) + data


def _decode(payload: bytes) -> LinkClaims:
    if payload[0] not in (VERSION, VERSION_TRACKED) or payload[1] not in _KIND_BY_BYTE:
        raise InvalidLink("unknown version or kind")
    kind = _KIND_BY_BYTE[payload[1]]
    tracked = payload[0] == VERSION_TRACKED
    if tracked and kind not in (LinkKind.OPEN, LinkKind.CLICK):
        raise InvalidLink("only open and click links carry an issue time")
    pos = 2
    ids: list[str] = []
    for _ in range(3):
        value, pos = _decode_id(payload, pos)
        ids.append(value)
    if tracked:
        extra = 6 if kind is LinkKind.CLICK else 4
        if len(payload) < pos + extra:
            raise InvalidLink("truncated")
        issued_at = int.from_bytes(payload[pos : pos + 4], "big")
        index = int.from_bytes(payload[pos + 4 : pos + 6], "big") if extra == 6 else -1
        rest = payload[pos + extra :]
        if kind is LinkKind.OPEN and rest:
            raise InvalidLink("trailing bytes")
        try:
            url = rest.decode()
        except UnicodeDecodeError as err:
            raise InvalidLink("URL is not UTF-8") from err
        return LinkClaims(kind, ids[0], ids[1], ids[2], url, issued_at=issued_at, link_index=index)
    rest = payload[pos:]
    if kind is LinkKind.CONFIRM:
        if len(rest) != 8:
            raise InvalidLink("no expiry")
        return LinkClaims(kind, ids[0], ids[1], ids[2], expires_at=int.from_bytes(rest, "big"))
    if kind is not LinkKind.CLICK and rest:
        raise InvalidLink("trailing bytes")
    try:
        url = rest.decode()
    except UnicodeDecodeError as err:
        raise InvalidLink("URL is not UTF-8") from err
    return LinkClaims(kind, ids[0], ids[1], ids[2], url)


def _decode_id(payload: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(payload):
        raise InvalidLink("truncated")
    tag = payload[pos]
    if tag == _UUID_TAG and pos + 17 <= len(payload):
        # str(uuid.UUID(bytes=...)) spelled out: a third of the cost of verifying an open
        # token went to building UUID objects (tracking verifies one per pixel and click).
        h = payload[pos + 1 : pos + 17].hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", pos + 17
    if tag == _TEXT_TAG and pos + 1 < len(payload):
        end = pos + 2 + payload[pos + 1]
        if end <= len(payload):
            try:
                return payload[pos + 2 : end].decode(), end
            except UnicodeDecodeError as err:
                raise InvalidLink("id is not UTF-8") from err
    raise InvalidLink("truncated")
