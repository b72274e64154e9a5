"""Open pixel and click tracking for a rendered mail (issue 14), pure.

:func:`add_tracking` turns every http(s) link of a non-transactional mail into a signed click
link of the tracking service (services/common/links.py, which tracking verifies) and adds an
open pixel to the HTML body. The HTML is read with the standard library's HTML parser, and
only the ``href`` values of ``<a>`` and ``<area>`` tags are replaced in the original text:
every other byte of the document (comments, conditional comments for Outlook, odd spacing,
entities) stays as the template made it, because mail clients are picky about markup that a
re-serialising parser would "fix".

Left alone, on purpose:

- ``mailto:``, ``tel:``, ``#anchors``, relative and other non-web links (nothing to redirect);
- links that already point at the tracking service (the preference, unsubscribe and
  confirmation links Nudge put in itself: wrapping them would hide the link from the
  reader's status bar and from mail providers' unsubscribe detection);
- anything inside ``<head>`` (``<base>``, ``<link>``: not clickable).

Every link carries its index (its position among the mail's tracked links, HTML first in
document order, then the plain-text links whose URL is not already in the HTML) and the
mail's issue time, so that tracking can tell "every link clicked at once" and "clicked a
second after delivery" from a reader.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from html.parser import attrfind_tolerant as _ATTR  # type: ignore[attr-defined]
from html.parser import tagfind_tolerant as _TAG  # type: ignore[attr-defined]

from services.common import links
from services.delivery.domain.rendering import Rendered

_LINK_TAGS = ("a", "area")
# A URL in plain text: scheme, then anything up to white space or a character that cannot end
# a URL in prose. Trailing punctuation is trimmed below (the full stop after a link).
_TEXT_URL = re.compile(r"https?://[^\s<>\"'\x00-\x1f\x7f]+", re.IGNORECASE)
_TRAILING = ".,;:!?'\")]}>"


@dataclass(frozen=True)
class _Href:
    start: int  # offset of the attribute value's text in the document (quotes excluded)
    end: int
    quoted: bool
    url: str  # the value with entities decoded


class _LinkFinder(HTMLParser):
    """Collects where each link's href value sits in the source, and where ``</body>`` is."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[_Href] = []
        self.body_end: int | None = None
        self._in_head = False
        self._line_starts = [0]
        for match in re.finditer("\n", source):
            self._line_starts.append(match.end())

    def _offset(self) -> int:
        line, column = self.getpos()
        return self._line_starts[line - 1] + column

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "head":
            self._in_head = True
        elif tag == "body":
            self._in_head = False
        if tag not in _LINK_TAGS or self._in_head:
            return
        raw = self.get_starttag_text() or ""
        start = self._offset()
        # The parser's own attribute pattern, over this tag's text only: the same reading of
        # the attributes as the parser's, with their positions.
        name_match = _TAG.match(raw, 1)
        pos = name_match.end() if name_match else len(tag) + 1
        while match := _ATTR.match(raw, pos):
            if match.end() == pos:
                break
            pos = match.end()
            name, value = match.group(1), match.group(3)
            if name is None or name.lower() != "href" or value is None:
                continue
            value_start = match.start(3)
            quoted = value[:1] in ("'", '"') and value[:1] == value[-1:] and len(value) >= 2
            inner_start = value_start + 1 if quoted else value_start
            inner = value[1:-1] if quoted else value
            self.hrefs.append(
                _Href(
                    start + inner_start,
                    start + inner_start + len(inner),
                    quoted,
                    html.unescape(inner).strip(),
                )
            )
            break  # the first href wins, as in browsers

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self._in_head = False
        elif tag == "body":
            self.body_end = self._offset()


class _Signer:
    """Gives each distinct tracked occurrence its index and signed URL."""

    def __init__(
        self, base_url: str, secret: str, ids: tuple[str, str, str], issued_at: int
    ) -> None:
        self.base = base_url.rstrip("/")
        self._secret = secret
        self._ids = ids
        self._issued_at = issued_at
        self.count = 0
        self.by_url: dict[str, int] = {}

    def trackable(self, url: str) -> bool:
        return (
            links.is_web_url(url)
            and not url.startswith(self.base + "/")
            and len(url.encode()) <= links.MAX_URL_BYTES
        )

    def sign(self, url: str, index: int | None = None) -> str:
        if index is None:
            index = self.count
            self.count += 1
            self.by_url.setdefault(url, index)
        path = links.sign_click(
            self._secret, *self._ids, url, link_index=index, issued_at=self._issued_at
        )
        return self.base + path


def add_tracking(
    rendered: Rendered,
    *,
    base_url: str,
    secret: str,
    workspace_id: str,
    message_id: str,
    contact_id: str,
    issued_at: int,
) -> Rendered:
    """``rendered`` with its links tracked and an open pixel (HTML only; a text-only mail has
    nowhere to put one). ``base_url`` is the tracking service's public base, ``issued_at`` the
    Unix seconds the mail is sent at (carried, signed, in every link)."""
    signer = _Signer(base_url, secret, (workspace_id, message_id, contact_id), issued_at)
    body_html = _track_html(rendered.body_html, signer) if rendered.body_html else ""
    body_text = _track_text(rendered.body_text, signer)
    if body_html:
        pixel_path = links.sign_open(
            secret, workspace_id, message_id, contact_id, issued_at=issued_at
        )
        pixel = (
            f'<img src="{html.escape(signer.base + pixel_path)}" width="1" height="1" alt=""'
            ' style="display:block;width:1px;height:1px;border:0">'
        )
        body_html = _insert_pixel(body_html, pixel)
    return Rendered(subject=rendered.subject, body_text=body_text, body_html=body_html)


def _track_html(source: str, signer: _Signer) -> str:
    finder = _LinkFinder(source)
    finder.feed(source)
    finder.close()
    out: list[str] = []
    last = 0
    for href in finder.hrefs:
        if not signer.trackable(href.url):
            continue
        signed = html.escape(signer.sign(href.url), quote=True)
        out.append(source[last : href.start])
        # An unquoted value is quoted now: a signed URL has no spaces, but quoting is safer.
        out.append(signed if href.quoted else f'"{signed}"')
        last = href.end
    out.append(source[last:])
    return "".join(out)


def _insert_pixel(document: str, pixel: str) -> str:
    """Before the last ``</body>`` as the parser sees it (not one inside a comment or a
    script), else at the end."""
    finder = _LinkFinder(document)
    finder.feed(document)
    finder.close()
    if finder.body_end is None:
        return document + pixel
    return document[: finder.body_end] + pixel + document[finder.body_end :]


def _track_text(text: str, signer: _Signer) -> str:
    out: list[str] = []
    last = 0
    for match in _TEXT_URL.finditer(text):
        url = match.group(0)
        # Trim prose punctuation; keep a closing parenthesis that closes one in the URL.
        while url and url[-1] in _TRAILING:
            if url[-1] == ")" and url.count("(") >= url.count(")"):
                break
            url = url[:-1]
        if not signer.trackable(url):
            continue
        start = match.start()
        out.append(text[last:start])
        out.append(signer.sign(url, signer.by_url.get(url)))
        last = start + len(url)
    out.append(text[last:])
    return "".join(out)
