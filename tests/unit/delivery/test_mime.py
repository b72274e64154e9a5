"""The lean MIME writer (services/delivery/domain/mime.py): what the standard library's parser
reads from its bytes is what went in, over a table of hard cases, and the same as what
``EmailMessage`` made for the same inputs (the writer replaced it for speed, not to change
the mail)."""

from __future__ import annotations

import base64
import email
import email.policy
import re
import secrets
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any

import pytest

from services.delivery.domain import mime
from services.delivery.domain.mime import MailError, OutgoingMail

WHEN = datetime(2026, 12, 1, 22, 30, 5, tzinfo=UTC)
UNSUBSCRIBE = "https://t.example.com/u/" + "x" * 300 + "?s=ab-_c"
BASE = OutgoingMail(
    message_id=str(uuid.UUID(int=1)),
    workspace_id=str(uuid.UUID(int=2)),
    from_address="no-reply@shop.example.com",
    from_name="Shop",
    to_address="ada@example.org",
    to_name="Ada Lovelace",
    subject="Hello Ada",
    body_text="Hi Ada,\nwelcome.\n",
    body_html="<p>Hi <b>Ada</b></p>\n",
    date=WHEN,
    list_unsubscribe=UNSUBSCRIBE,
)

LONG_SUBJECT = " ".join(f"word{n}" for n in range(60))
CASES: dict[str, dict[str, Any]] = {
    "plain ascii": {},
    "text only": {"body_html": ""},
    "no list-unsubscribe (transactional)": {"list_unsubscribe": ""},
    "accented": {"from_name": "Bücher & Co", "to_name": "Zoé Ćwik", "subject": "Grüße, Zoé"},
    "cjk": {"from_name": "漢字の店", "to_name": "山田 太郎", "subject": "漢字 " * 40},
    "emoji": {"from_name": "Shop 🛍️", "subject": "🎉 Sale 👨‍👩‍👧 " * 10, "body_text": "🎉\n"},
    "very long ascii subject": {"subject": LONG_SUBJECT},
    "long unbreakable subject": {"subject": "x" * 1200},
    "name with quotes, commas, @": {
        "from_name": "Bücher & Co, “the shop”",
        "to_name": 'Lovelace, Ada "the Countess" <ada@evil> \\ (x)',
    },
    "ascii name with specials": {"to_name": "Lovelace, Ada (Countess) @home"},
    "encoded-word look-alike": {"subject": "=?utf-8?q?Hi?= there", "to_name": "=?utf-8?b?QQ==?="},
    "5000-char line": {"body_text": "a" * 5000 + "\n", "body_html": "<p>" + "b" * 5000 + "</p>"},
    "From and dot line starts": {
        "body_text": "From the shop\n.\n.hidden\n..two\nend\n",
        "body_html": ".\n<p>From</p>\n.x",
    },
    "empty html": {"body_html": ""},
    "trailing whitespace": {"body_text": "line with space \nand tab\t\n  \n", "subject": "x  y"},
    "text only, no final line end": {"body_text": "no newline", "body_html": ""},
    "no final line end": {"body_text": "no newline at the end", "body_html": "<p>x</p>"},
    "crlf and cr line ends": {"body_text": "a\r\nb\rc\n", "body_html": "<p>a</p>\r\n<p>b</p>"},
    "mostly non-latin body": {
        "body_text": "日本語のテキスト。\n" * 50,
        "body_html": "<p>日本語</p>" * 30,
    },
    "control characters": {"subject": "tab\there\x07bell\x00", "to_name": "A\x07B\x1b"},
    "no names": {"from_name": "", "to_name": ""},
    "a line that looks like a boundary": {"body_text": "--=_\n--\n=_\n"},
}


def one_line(text: str) -> str:
    """What a subject or display name reads as: each run of controls (line breaks among
    them) folded to one space."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text)


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def lines(text: str) -> str:
    """Line ends as a reader sees them: CRLF on the wire, LF or CRLF from the parser."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def text_of(parsed: EmailMessage, subtype: str) -> str | None:
    part = parsed.get_body((subtype,))
    if part is None or part.get_content_type() != f"text/{subtype}":
        return None
    content = part.get_content()
    assert isinstance(content, str)
    return content


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_header_and_body_reads_back_as_it_went_in(case: dict[str, Any]) -> None:
    mail = replace(BASE, **case)
    raw = mime.to_bytes(mail)
    parsed = parse(raw)
    assert not parsed.defects
    for name in parsed:
        assert not parsed[name].defects, (name, parsed[name].defects)

    # CRLF line ends only (the last line too: what DKIM signs is what arrives), no line over
    # RFC 5322's 998 octets.
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998

    sender, recipient = parsed["From"].addresses, parsed["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in sender] == [
        (one_line(mail.from_name), mail.from_address)
    ]
    assert [(a.display_name, a.addr_spec) for a in recipient] == [
        (one_line(mail.to_name), mail.to_address)
    ]
    assert parsed["Subject"] == one_line(mail.subject)
    assert parsed["Date"].datetime == WHEN
    assert parsed["Message-ID"] == f"<{mail.message_id}@shop.example.com>"
    assert parsed["X-Nudge-Message-Id"] == mail.message_id
    assert parsed["X-Nudge-Workspace-Id"] == mail.workspace_id
    assert parsed["MIME-Version"] == "1.0"
    if mail.list_unsubscribe:
        assert parsed["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
        assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    else:
        assert "List-Unsubscribe" not in parsed and "List-Unsubscribe-Post" not in parsed
    assert sorted(parsed.keys()) == sorted(set(parsed.keys()))  # no header twice

    assert text_of(parsed, "plain") is not None
    assert lines(text_of(parsed, "plain") or "") == lines(mail.body_text)
    if mail.body_html:
        assert parsed.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
        assert lines(text_of(parsed, "html") or "") == lines(mail.body_html)
    else:
        assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() in (None, "utf-8")


def test_headers_fold_within_78_columns_but_the_unsubscribe_url() -> None:
    """And each encoded-word holds whole characters (RFC 2047 5: a multi-byte character is
    never split across two), which a strict reader needs to decode each on its own."""
    for case in ("cjk", "emoji", "very long ascii subject", "name with quotes, commas, @"):
        raw = mime.to_bytes(replace(BASE, **CASES[case]))
        head = raw.split(b"\r\n\r\n", 1)[0]
        for word in re.findall(rb"=\?utf-8\?b\?([^?]*)\?=", head):
            assert len(word) + 12 <= 75
            base64.b64decode(word).decode("utf-8")  # strict: raises on a split character
        long = [line for line in head.split(b"\r\n") if len(line) > 78]
        assert all(line.startswith(b"List-Unsubscribe: <") for line in long), (case, long)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "x\r\nBcc: victim@example.org"),
        ("subject", "x\nBcc: victim@example.org"),
        ("subject", "x\rBcc: victim@example.org"),
        ("subject", "Grüße\r\nBcc: victim@example.org"),
        ("from_name", "Shop\r\nBcc: victim@example.org"),
        ("to_name", "Ada\nBcc: victim@example.org"),
        ("to_name", "Zoé\r\n\r\nbody injected"),
    ],
)
def test_a_line_break_in_a_subject_or_name_is_folded_away_and_adds_no_header(
    field: str, value: str
) -> None:
    parsed = parse(mime.to_bytes(replace(BASE, **dict[str, Any]({field: value}))))
    assert "Bcc" not in parsed
    folded = one_line(value)
    assert folded.count(" ") == value.count(" ") + 1
    if field == "subject":
        assert parsed["Subject"] == folded
    else:
        header = "From" if field == "from_name" else "To"
        assert parsed[header].addresses[0].display_name == folded
    assert lines(text_of(parsed, "plain") or "") == lines(BASE.body_text)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("to_address", "ada@example.org\r\nBcc: victim@example.org"),
        ("to_address", "ada@example.org>, victim@example.org"),
        ("to_address", "ada @example.org"),
        ("to_address", ""),
        ("from_address", "no-reply@shop.example.com\nBcc: x@y"),
        ("from_address", "no-reply"),
        ("message_id", "id\r\nBcc: x@y"),
        ("workspace_id", "ws\nBcc: x@y"),
        ("list_unsubscribe", "https://t.example.com/u\r\nBcc: x@y"),
        ("list_unsubscribe", "https://t.example.com/u> <https://evil.example"),
    ],
)
def test_a_structural_value_with_a_line_break_space_or_bracket_is_refused(
    field: str, value: str
) -> None:
    with pytest.raises(MailError, match=field):
        mime.to_bytes(replace(BASE, **dict[str, Any]({field: value})))


def test_an_internationalised_domain_is_written_in_its_ascii_form() -> None:
    mail = replace(BASE, to_address="ada@bücher.example", from_address="news@straße.example")
    raw = mime.to_bytes(mail)
    assert raw.isascii()
    parsed = parse(raw)
    assert parsed["To"].addresses[0].addr_spec == "ada@xn--bcher-kva.example"
    # IDNA 2008: ß is its own letter (IDNA 2003 would make it "strasse", another domain).
    assert parsed["From"].addresses[0].addr_spec == "news@xn--strae-oqa.example"
    assert parsed["Message-ID"] == f"<{mail.message_id}@xn--strae-oqa.example>"
    assert mime.ascii_address("ada@example.org") == "ada@example.org"
    # No ASCII form: as given, for a relay with SMTPUTF8 (RFC 6532 headers).
    assert mime.ascii_address("zoé@example.org") == "zoé@example.org"
    assert "zoé@example.org".encode() in mime.to_bytes(replace(BASE, to_address="zoé@example.org"))


def test_bodies_use_7bit_when_they_can_and_never_8bit() -> None:
    def encodings(raw: bytes) -> list[str]:
        return [
            str(p["Content-Transfer-Encoding"])
            for p in parse(raw).walk()
            if p.is_multipart() is False
        ]

    assert encodings(mime.to_bytes(BASE)) == ["7bit", "7bit"]
    assert encodings(
        mime.to_bytes(
            replace(BASE, **CASES["accented"], body_text="Grüße aus Berlin, liebe Zoé!\n")
        )
    ) == [
        "quoted-printable",
        "7bit",
    ]
    assert encodings(mime.to_bytes(replace(BASE, **CASES["mostly non-latin body"]))) == [
        "base64",
        "base64",
    ]
    # Relays strip whitespace at a line's end: such a body is quoted-printable (=20).
    assert encodings(mime.to_bytes(replace(BASE, **CASES["trailing whitespace"])))[0] == (
        "quoted-printable"
    )
    for case in CASES.values():
        raw = mime.to_bytes(replace(BASE, **case))
        assert raw.isascii()  # no 8bit anywhere: headers encoded, bodies QP or base64


def test_the_boundary_is_random_and_never_one_that_occurs_in_a_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = (
        parse(mime.to_bytes(BASE)).get_boundary(),
        parse(mime.to_bytes(BASE)).get_boundary(),
    )
    assert first and second and first != second
    tokens = iter(["a" * 32, "b" * 32])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(tokens))
    body = "before\n--=_" + "a" * 32 + "\nafter\n"
    parsed = parse(mime.to_bytes(replace(BASE, body_text=body)))
    assert parsed.get_boundary() == "=_" + "b" * 32
    assert lines(text_of(parsed, "plain") or "") == body


# The old build_email (handlers.py before the writer), kept here as the reference.
OLD_POLICY = email.policy.SMTP.clone(max_line_length=998)


def old_build_email(mail: OutgoingMail) -> bytes:
    message = EmailMessage(policy=OLD_POLICY)
    message["From"] = formataddr((mail.from_name, mail.from_address))
    message["To"] = formataddr((mail.to_name, mail.to_address))
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(mail.date)
    message["Message-ID"] = f"<{mail.message_id}@{mail.from_address.rpartition('@')[2]}>"
    message["X-Nudge-Message-Id"] = mail.message_id
    message["X-Nudge-Workspace-Id"] = mail.workspace_id
    message.set_content(mail.body_text)
    if mail.body_html:
        message.add_alternative(mail.body_html, subtype="html")
    if mail.list_unsubscribe:
        message["List-Unsubscribe"] = f"<{mail.list_unsubscribe}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return message.as_bytes()


COMPARED = [
    name
    for name in CASES
    # Deliberate differences: the old writer kept controls in a subject or name (readers
    # flag them as defects), the new one folds them to spaces; and the old one wrote
    # "=?utf-8?q?Hi?=" as it is, which readers decode to "Hi", the new one encodes it.
    if name not in ("control characters", "encoded-word look-alike")
]


@pytest.mark.parametrize("case", [CASES[name] for name in COMPARED], ids=COMPARED)
def test_a_reader_sees_the_same_mail_as_the_old_email_message_made(case: dict[str, Any]) -> None:
    mail = replace(BASE, **case)
    new, old = parse(mime.to_bytes(mail)), parse(old_build_email(mail))
    assert sorted(new.keys()) == sorted(old.keys())
    for name in new:
        if name == "Content-Type":
            assert new.get_content_type() == old.get_content_type()
        elif name != "Content-Transfer-Encoding":
            assert str(new[name]) == str(old[name]), name
    for subtype in ("plain", "html"):
        before, after = text_of(old, subtype), text_of(new, subtype)
        assert (before is None) == (after is None)
        # The old one added a line end to a body without one; the new one keeps it exact.
        assert lines(after or "").rstrip("\n") == lines(before or "").rstrip("\n"), subtype
