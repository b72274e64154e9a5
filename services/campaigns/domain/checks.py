"""The warnings CheckContent returns before a campaign is sent: what a manager should look at,
not what stops the send (that is :func:`services.campaigns.domain.content.send_blockers`,
whose findings come back here too, as ``broken_personalisation`` and ``missing_default``).
Pure functions, no I/O.

Codes and their rules:

- ``too_many_lines``: the text body has more than :data:`MAX_LINES` non-empty lines
  (seed 000: a short message of four lines), counted on the body rendered for a full contact.
- ``subject_without_workspace_name``: the subject (each A/B subject), rendered, does not
  contain the workspace's name, compared case- and accent-insensitively (NFKD, combining
  marks dropped, casefolded, spaces folded): "Café Lumière" matches "CAFE LUMIERE".
- ``spam_like``: a small, documented rule set (:data:`SPAM_PHRASES` and the rules in
  :func:`spam_findings`): a subject in capitals (at least 5 letters, none lower case);
  "!!!" (three or more "!" in a row) anywhere; phrases spam filters score (case-insensitive);
  more than :data:`MAX_CURRENCY_SIGNS` currency signs ($ € £) in one field; more than
  :data:`MAX_LINKS_PER_LINE` links on one line of the text body.
- ``broken_personalisation``: a template that does not compile, names what the mail will
  not have (only contact.first_name, last_name, email, locale, workspace.name, vars.* and
  links.preferences/confirm exist), or fails a trial render (sandbox limits included).
- ``missing_default``: a contact field printed without ``default``.
- ``bad_link``: every ``href`` and ``src`` of the HTML body (read with the standard library's
  HTML parser after rendering) and every URL-looking token of the text body must be an
  absolute http(s) URL with a host. ``mailto:`` with a valid address is accepted in an HTML
  ``href`` (a "write to us" link is legitimate and is not tracked); ``javascript:``,
  ``data:``, relative links, bare fragments and other schemes are flagged; a text token
  "www.shop.example" without a scheme is flagged too (many readers do not link it).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email

from services.campaigns.domain.content import (
    FULL_CONTACT,
    SAMPLE_LINKS,
    content_fields,
    context_for,
    personalisation,
    template_problems,
)
from services.common import templating

MAX_LINES = 4
MAX_CURRENCY_SIGNS = 3
MAX_LINKS_PER_LINE = 2
SPAM_PHRASES = (
    "free money",
    "100% free",
    "act now",
    "risk free",
    "risk-free",
    "click here",
    "you are a winner",
    "guaranteed income",
    "no credit check",
    "earn cash",
)
_EXCLAMATIONS = re.compile(r"!{3,}")
_CURRENCY = re.compile(r"[$€£]")
# URL-looking tokens of a text: a scheme followed by "//" or ":", or "www." (a scheme-less
# address many readers would not link).
_TEXT_URL = re.compile(
    r"(?<![\w@])(?:[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s<>()\[\]\"']*"
    r"|(?:javascript|data|vbscript|file):[^\s<>()\[\]\"']+"
    r"|www\.[^\s<>()\[\]\"']+)"
)
_TRAILING = ".,;:!?'\")]}"


@dataclass(frozen=True)
class ContentWarning:
    code: str
    field: str
    message: str


def fold(text: str) -> str:
    """For comparisons a reader would make: accents dropped, case folded, spaces folded."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.casefold().split())


def link_problem(url: str, *, html: bool) -> str | None:
    """Why ``url`` is not a link a mail should carry, or None."""
    url = url.strip()
    if html and url.lower().startswith("mailto:"):
        address = url[len("mailto:") :].split("?", 1)[0]
        try:
            validate_email(address, check_deliverability=False)
        except EmailNotValidError:
            return f"{url!r} is not a valid mailto: address"
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return f"{url!r} is not a valid URL"
    if parts.scheme.lower() not in ("http", "https"):
        if not parts.scheme:
            return f"{url!r} is not an absolute http(s) URL (no scheme)"
        return f"{url!r} is a {parts.scheme}: link, not http(s)"
    if not host or "." not in host.strip("."):
        return f"{url!r} has no valid host"
    return None


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src"):
                self.urls.append(value or "")


def html_links(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    parser.close()
    return parser.urls


def text_links(text: str) -> list[str]:
    return [m.group(0).rstrip(_TRAILING) for m in _TEXT_URL.finditer(text)]


def spam_findings(text: str, *, is_subject: bool) -> list[str]:
    findings: list[str] = []
    letters = [c for c in text if c.isalpha()]
    if is_subject and len(letters) >= 5 and not any(c.islower() for c in letters):
        findings.append("the subject is in capital letters")
    if _EXCLAMATIONS.search(text):
        findings.append('"!!!": several exclamation marks in a row')
    lowered = fold(text)
    findings += [
        f'"{phrase}" is a phrase spam filters score' for phrase in SPAM_PHRASES if phrase in lowered
    ]
    signs = len(_CURRENCY.findall(text))
    if signs > MAX_CURRENCY_SIGNS:
        findings.append(f"{signs} currency signs (more than {MAX_CURRENCY_SIGNS})")
    if not is_subject:
        for line in text.splitlines():
            links = len(text_links(line))
            if links > MAX_LINKS_PER_LINE:
                findings.append(f"{links} links on one line (more than {MAX_LINKS_PER_LINE})")
                break
    return findings


def content_warnings(
    subject: str,
    body_text: str,
    body_html: str,
    body_markdown: str,
    workspace_name: str,
    ab_subjects: tuple[str, ...] = (),
) -> list[ContentWarning]:
    """Every warning of the campaign's content (module docstring), in field order."""
    warnings: list[ContentWarning] = []
    context = context_for(FULL_CONTACT, workspace_name, SAMPLE_LINKS)
    for field, source, html in content_fields(
        subject, body_text, body_html, body_markdown, ab_subjects
    ):
        problems = template_problems(source, html)
        for problem in problems:
            code = "missing_default" if "without a default" in problem else "broken_personalisation"
            warnings.append(ContentWarning(code, field, problem))
        rendered = _rendered(source, html, context)
        is_subject = field == "subject" or field.startswith("ab_test.subjects")
        if is_subject and workspace_name and fold(workspace_name) not in fold(rendered):
            warnings.append(
                ContentWarning(
                    "subject_without_workspace_name",
                    field,
                    f'the subject does not name the workspace ("{workspace_name}"):'
                    " recipients recognise the sender by it",
                )
            )
        if not html and not is_subject:
            lines = [line for line in rendered.splitlines() if line.strip()]
            if len(lines) > MAX_LINES:
                warnings.append(
                    ContentWarning(
                        "too_many_lines",
                        field,
                        f"{len(lines)} lines of text: keep it to {MAX_LINES} or fewer",
                    )
                )
        findings = spam_findings(
            rendered if not html else _text_of(rendered), is_subject=is_subject
        )
        warnings += [ContentWarning("spam_like", field, f) for f in findings]
        urls = html_links(rendered) if html else text_links(rendered)
        if not is_subject:
            for url in urls:
                issue = link_problem(url, html=html)
                if issue is not None:
                    warnings.append(ContentWarning("bad_link", field, issue))
    return _unique(warnings)


def _rendered(source: str, html: bool, context: Mapping[str, object]) -> str:
    """The template rendered for a full contact; its source when it cannot render (the
    problem is reported as broken personalisation already)."""
    try:
        return templating.render(templating.compiled(source, html), context)
    except templating.TEMPLATE_ERRORS:
        return source


def _text_of(html: str) -> str:
    class _Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []

        def handle_data(self, data: str) -> None:
            self.parts.append(data)

    parser = _Text()
    parser.feed(html)
    parser.close()
    return " ".join(parser.parts)


def _unique(warnings: list[ContentWarning]) -> list[ContentWarning]:
    return list(dict.fromkeys(warnings))


__all__ = ["ContentWarning", "content_warnings", "fold", "link_problem", "personalisation"]
