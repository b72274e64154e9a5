"""The bytes of an outgoing mail, written directly rather than through ``email.message``.

Pure: no I/O. Why not ``EmailMessage``: building one per mail (header objects parsed and
folded by the header registry) and flattening it with ``as_bytes()`` cost ~3.7 ms of CPU a
mail, a third of delivery's CPU (bench/RESULTS.md, issue 14); a campaign's mails all have
the same simple shape, which this module writes in tens of microseconds. What a reader gets
is the same mail: tests/unit/delivery/test_mime.py parses these bytes with the standard
library and compares every header and body with what went in and with what
``EmailMessage`` made.

What is written, and the rules it keeps:

- Headers From, To, Reply-To (when given), Subject, Date, Message-ID, X-Nudge-Message-Id,
  X-Nudge-Workspace-Id, X-Nudge-Test (a campaign's test send), List-Unsubscribe and
  List-Unsubscribe-Post (RFC 8058, when a one-click URL is given),
  MIME-Version, Content-Type, Content-Transfer-Encoding. CRLF line ends throughout.
- Addresses with an internationalised domain are written with its A-labels (xn--).
- No header injection: a CR or LF in a subject or a display name is folded away (replaced
  by a space); one in a structural value (an address, an id, the unsubscribe URL) is
  refused with :class:`MailError`, as are spaces, controls and angle brackets there.
- Subjects and display names (RFC 5322, RFC 2047): plain when they are printable ASCII
  words (a display name with specials in a quoted-string), otherwise UTF-8 base64
  encoded-words of at most 75 characters, one per folded line, so no header line passes
  78 columns (but an unbreakable ASCII word, which is kept as it is up to 900 characters).
  Text containing ``=?`` is encoded too, or a reader would decode it as an encoded-word.
- Bodies in UTF-8 (RFC 2045): ``7bit`` when the text is ASCII, ends with a line end, has
  no line over 998 octets and no whitespace at a line's end (which relays strip);
  otherwise quoted-printable, or base64 when that is shorter (mostly non-Latin text). A
  body that does not end with a line end ends with a soft line break, so that it
  round-trips exactly. Text alone is ``text/plain``; with HTML, ``multipart/alternative``
  with a random boundary starting ``=_``, which neither quoted-printable nor base64 can
  produce, and which is checked against a ``7bit`` body.
- Dot-stuffing is not done here: it is the SMTP client's (aiosmtplib quotes a line
  starting with ``.`` in DATA).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from email_validator import EmailNotValidError, validate_email

MAX_LINE = 78  # RFC 5322 2.1.1: SHOULD not exceed 78 characters, excluding CRLF
MAX_PLAIN_WORD = 900  # longer unbreakable words are encoded (the hard limit is 998 octets)
# A UTF-8 chunk of 42 bytes is 56 base64 characters: "=?utf-8?b?" + 56 + "?=" = 68, and
# with "Subject: " in front the first line still fits in 78.
_CHUNK = 42
_EW_OPEN = "=?utf-8?b?"
_EW_CLOSE = "?="

# RFC 5322 atext words separated by single spaces: a display name that needs no quotes.
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?: [A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
# Printable ASCII words separated by single spaces: an unstructured value written as it is.
_PLAIN_TEXT = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")
# Line breaks and other controls in a subject or display name: folded to one space (a line
# break would start a new header; the others are flagged by readers as defects).
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")
# Structural values (addresses, ids, URLs) take none of these: whitespace and controls
# (header injection), angle brackets (they would end the address or URL early).
_NOT_STRUCTURAL = re.compile(r"[\x00-\x20\x7f<>]")


class MailError(ValueError):
    """A value cannot be written into a mail header safely: the message says which."""


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    """One mail as delivery sends it. ``list_unsubscribe`` is the RFC 8058 one-click URL
    (without angle brackets), empty for mail that carries none (transactional)."""

    message_id: str
    workspace_id: str
    from_address: str
    from_name: str
    to_address: str
    to_name: str
    subject: str
    body_text: str
    body_html: str
    date: datetime
    list_unsubscribe: str = ""
    reply_to: str = ""  # an address, or empty: no Reply-To header
    test: bool = False  # a campaign's test send: an X-Nudge-Test header


def to_bytes(mail: OutgoingMail) -> bytes:
    """The mail as it goes into SMTP DATA (CRLF line ends, not dot-stuffed)."""
    from_address = ascii_address(_structural("from_address", mail.from_address))
    domain = from_address.rpartition("@")[2]
    if "@" not in from_address or not domain:
        raise MailError("from_address: no domain")
    headers = [
        "From: " + _mailbox(mail.from_name, from_address),
        "To: " + _mailbox(mail.to_name, ascii_address(_structural("to_address", mail.to_address))),
    ]
    if mail.reply_to:
        headers.append("Reply-To: " + ascii_address(_structural("reply_to", mail.reply_to)))
    headers += [
        "Subject: " + _unstructured("Subject: ", mail.subject),
        "Date: " + format_datetime(mail.date),
        f"Message-ID: <{_structural('message_id', mail.message_id)}@{domain}>",
        "X-Nudge-Message-Id: " + mail.message_id,
        "X-Nudge-Workspace-Id: " + _structural("workspace_id", mail.workspace_id),
    ]
    if mail.test:
        headers.append("X-Nudge-Test: yes")
    if mail.list_unsubscribe:
        url = _structural("list_unsubscribe", mail.list_unsubscribe)
        headers.append(f"List-Unsubscribe: <{url}>")
        headers.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    headers.append("MIME-Version: 1.0")
    text_cte, text = _body(mail.body_text)
    if not mail.body_html:
        headers.append('Content-Type: text/plain; charset="utf-8"')
        headers.append("Content-Transfer-Encoding: " + text_cte)
        return ("\r\n".join(headers) + "\r\n\r\n").encode() + text
    html_cte, html = _body(mail.body_html)
    boundary = _boundary(text, html)
    headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    delimiter = b"\r\n--" + boundary.encode()
    return b"".join(
        (
            ("\r\n".join(headers) + "\r\n\r\n").encode(),
            delimiter[2:],
            b'\r\nContent-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: ',
            text_cte.encode(),
            b"\r\n\r\n",
            text,
            delimiter,
            b'\r\nContent-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: ',
            html_cte.encode(),
            b"\r\n\r\n",
            html,
            delimiter,
            b"--\r\n",
        )
    )


def ascii_address(address: str) -> str:
    """The address with an internationalised domain in its ASCII form (IDNA 2008 A-labels,
    ``ada@xn--bcher-kva.example``), which every relay and header reader takes: contacts
    keeps addresses with the Unicode domain. A non-ASCII local part has no ASCII form: it
    is returned as it is (RFC 6531/6532: only a relay offering SMTPUTF8 takes it, and
    aiosmtplib refuses to send it to one that does not)."""
    if address.isascii():
        return address
    try:
        return validate_email(address, check_deliverability=False).ascii_email or address
    except EmailNotValidError:
        return address


def _structural(field: str, value: str) -> str:
    if not value or _NOT_STRUCTURAL.search(value):
        raise MailError(f"{field}: empty, or contains whitespace, a control or <>: {value!r}")
    return value


def _one_line(text: str) -> str:
    """Controls (CR and LF among them) folded away: a subject "x\\r\\nBcc: y" stays one
    header, read as "x Bcc: y"."""
    return _CONTROLS.sub(" ", text) if _CONTROLS.search(text) else text


def _unstructured(prefix: str, text: str) -> str:
    """A Subject value: plain words folded at spaces, or encoded-words."""
    text = _one_line(text)
    if not _PLAIN_TEXT.fullmatch(text) or "=?" in text:
        return _encoded_words(text)
    if len(prefix) + len(text) <= MAX_LINE:
        return text
    lines: list[str] = []
    line = ""
    width = len(prefix)
    for word in text.split(" "):
        if len(word) > MAX_PLAIN_WORD:
            return _encoded_words(text)
        if line and width + 1 + len(word) > MAX_LINE:
            lines.append(line)
            line, width = word, 1 + len(word)  # the continuation line starts with a space
        elif line:
            line += " " + word
            width += 1 + len(word)
        else:
            line, width = word, width + len(word)
    lines.append(line)
    return "\r\n ".join(lines)


def _encoded_words(text: str) -> str:
    """RFC 2047 'B' encoded-words of UTF-8, cut only between characters (never inside a
    multi-byte sequence), one per line; readers drop the folding between them."""
    data = text.encode("utf-8", "replace")
    words = []
    start = 0
    while start < len(data):
        end = min(start + _CHUNK, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a continuation byte
            end -= 1
        words.append(_EW_OPEN + base64.b64encode(data[start:end]).decode() + _EW_CLOSE)
        start = end
    return "\r\n ".join(words) if words else ""


def _mailbox(name: str, address: str) -> str:
    """``name <address>`` (RFC 5322 name-addr), or the bare address without a name."""
    name = _one_line(name)
    if not name:
        return address
    if "=?" not in name:
        if _ATOM_PHRASE.fullmatch(name):
            phrase = name
        elif _PRINTABLE.fullmatch(name) and len(name) <= MAX_PLAIN_WORD:
            phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            phrase = ""
        if phrase:
            return f"{phrase} <{address}>"
    phrase = _encoded_words(name)
    last_line = phrase.rpartition("\n")[2]
    fold = "\r\n " if len(last_line) + len(address) + 3 > MAX_LINE else " "
    return f"{phrase}{fold}<{address}>"


_TRAILING_SPACE = (b" \n", b"\t\n")


def _body(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, the encoded body with CRLF line ends)."""
    if "\r" in text:
        text = _LINE_BREAKS.sub("\n", text)
    data = text.encode("utf-8", "replace")
    if (
        text.isascii()
        and text.endswith("\n")
        and not any(space in data for space in _TRAILING_SPACE)
        and "\x00" not in text
        and max(map(len, data.split(b"\n"))) <= 998
    ):
        return "7bit", data.replace(b"\n", b"\r\n")
    quoted = binascii.b2a_qp(data, istext=True)
    if not text.endswith("\n"):
        quoted += b"=\n"  # a soft line break: the text ends without a line end
    if not text.isascii():
        canonical = data.replace(b"\n", b"\r\n")  # base64 text has CRLF inside the encoding
        base64_size = -(-len(canonical) // 3) * 4 * 78 // 76  # with a CRLF every 76
        quoted_size = len(quoted) + quoted.count(b"\n")
        if 3 * quoted_size > 4 * base64_size:
            # Quoted-printable would be more than a third longer (mostly non-Latin text):
            # base64 in 76 columns. Otherwise QP, which leaves ASCII readable.
            return "base64", base64.encodebytes(canonical).replace(b"\n", b"\r\n")
    return "quoted-printable", quoted.replace(b"\n", b"\r\n")


def _boundary(*bodies: bytes) -> str:
    """A random boundary; "=_" cannot occur in quoted-printable or base64, and a 7bit body
    is checked (RFC 2046 5.1.1: it must not occur in any part)."""
    while True:
        boundary = "=_" + secrets.token_hex(12)
        marker = boundary.encode()
        if not any(marker in body for body in bodies):
            return boundary
