"""Open pixel and rewritten links of a rendered mail: what is tracked, what is left alone, and
that the rest of the document stays byte for byte."""

from __future__ import annotations

import html
import re
import uuid
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest

from services.common import links
from services.delivery.domain.rendering import MailLinks, Rendered, render
from services.delivery.domain.tracking_links import add_tracking

SECRET = "unit-link-secret"
BASE = "https://t.shop.example"
WS, MSG, CONTACT = (str(uuid.uuid4()) for _ in range(3))
ISSUED = 1_790_000_000

NEWSLETTER = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="stylesheet" href="https://cdn.shop.example/mail.css">
<base href="https://shop.example/">
<!--[if mso]><style>td{font-family:Arial}</style><![endif]-->
</head>
<body style="margin:0">
<table role="presentation"><tr><td>
<a href="https://shop.example/?utm_source=nudge&amp;utm_medium=email"><img
 src="https://cdn.shop.example/logo.png" alt="Shop"></a>
<h1>Spring sale</h1>
<p>Up to 40% off. <A HREF='https://shop.example/sale'>Shop the sale</A></p>
<p><a class="btn"   href=https://shop.example/new>New in</a></p>
<p>Questions? <a href="mailto:help@shop.example">Write to us</a> or
<a href="tel:+441234567890">call</a>. <a href="#top">Back to top</a>
<a href="/relative/path">relative</a></p>
<!-- <a href="https://shop.example/commented-out">not a link</a> -->
<script>var x = "</body>";</script>
</td></tr></table>
</body>
</html>
"""

TEXT = """Spring sale: up to 40% off.

Shop the sale: https://shop.example/sale.
New in (https://shop.example/new) and our blog (https://en.wikipedia.org/wiki/Sale_(disambiguation)).
Write to help@shop.example.
"""


def track(rendered: Rendered) -> Rendered:
    return add_tracking(
        rendered,
        base_url=BASE,
        secret=SECRET,
        workspace_id=WS,
        message_id=MSG,
        contact_id=CONTACT,
        issued_at=ISSUED,
    )


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a":
            self.hrefs.append(values.get("href") or "")
        if tag == "img":
            self.imgs.append(values.get("src") or "")


def parsed(document: str) -> _Anchors:
    anchors = _Anchors()
    anchors.feed(document)
    return anchors


def claims_of(url: str, kind: links.LinkKind) -> links.LinkClaims:
    assert url.startswith(BASE + "/"), url
    token = urlsplit(url).path.split("/")[2].removesuffix(".gif")
    return links.verify(SECRET, token, kind)


def test_every_web_link_of_the_html_becomes_a_signed_click_with_its_index_and_time() -> None:
    out = track(Rendered("Spring", TEXT, NEWSLETTER))
    hrefs = parsed(out.body_html).hrefs
    tracked = [h for h in hrefs if h.startswith(BASE)]
    assert len(tracked) == 3
    claims = [claims_of(h, links.LinkKind.CLICK) for h in tracked]
    assert [c.url for c in claims] == [
        "https://shop.example/?utm_source=nudge&utm_medium=email",  # the entity decoded
        "https://shop.example/sale",
        "https://shop.example/new",
    ]
    assert [c.link_index for c in claims] == [0, 1, 2]
    for c in claims:
        assert (c.workspace_id, c.message_id, c.contact_id) == (WS, MSG, CONTACT)
        assert c.issued_at == ISSUED


def test_mailto_tel_anchors_relative_head_and_commented_links_are_left_alone() -> None:
    out = track(Rendered("Spring", TEXT, NEWSLETTER))
    hrefs = parsed(out.body_html).hrefs
    for kept in ("mailto:help@shop.example", "tel:+441234567890", "#top", "/relative/path"):
        assert kept in hrefs
    assert '<link rel="stylesheet" href="https://cdn.shop.example/mail.css">' in out.body_html
    assert '<base href="https://shop.example/">' in out.body_html
    assert '<a href="https://shop.example/commented-out">' in out.body_html
    assert 'src="https://cdn.shop.example/logo.png"' in out.body_html  # images are not links


def test_the_rest_of_the_document_is_unchanged_byte_for_byte() -> None:
    out = track(Rendered("Spring", TEXT, NEWSLETTER))
    # Put the original URLs back in place of the signed ones and drop the pixel: the result
    # must be the template's document exactly (quotes, case, spacing, comments and all).
    restored = re.sub(
        r'<img src="https://t\.shop\.example/o/[^"]+"[^>]*>', "", out.body_html, count=1
    )

    def original(match: re.Match[str]) -> str:
        url = html.unescape(match.group(1))
        return html.escape(claims_of(url, links.LinkKind.CLICK).url, quote=True)

    restored = re.sub(r"(https://t\.shop\.example/c/[A-Za-z0-9_-]+)", original, restored)
    expected = NEWSLETTER.replace(
        "href=https://shop.example/new", 'href="https://shop.example/new"'
    )
    assert restored == expected


def test_the_open_pixel_goes_before_the_real_end_of_body_and_verifies() -> None:
    out = track(Rendered("Spring", TEXT, NEWSLETTER))
    imgs = [src for src in parsed(out.body_html).imgs if src.startswith(BASE)]
    assert len(imgs) == 1
    opened = claims_of(html.unescape(imgs[0]), links.LinkKind.OPEN)
    assert (opened.message_id, opened.issued_at) == (MSG, ISSUED)
    # Before the last </body>, not the one inside the script's string.
    assert out.body_html.index(imgs[0]) > out.body_html.index('var x = "</body>"')
    assert out.body_html.rstrip().endswith('border:0"></body>\n</html>'.rstrip())


def test_a_fragment_without_body_gets_the_pixel_at_the_end() -> None:
    out = track(Rendered("Hi", "Hi", "<p>Hello <a href='https://shop.example/'>shop</a></p>"))
    assert out.body_html.startswith("<p>Hello <a href='https://t.shop.example/c/")
    assert out.body_html.endswith('border:0">')


def test_plain_text_links_are_tracked_without_the_prose_punctuation() -> None:
    out = track(Rendered("Spring", TEXT, NEWSLETTER))
    found = re.findall(r"https://t\.shop\.example/c/[A-Za-z0-9_-]+", out.body_text)
    claims = [claims_of(u, links.LinkKind.CLICK) for u in found]
    assert [c.url for c in claims] == [
        "https://shop.example/sale",
        "https://shop.example/new",
        "https://en.wikipedia.org/wiki/Sale_(disambiguation)",
    ]
    # The same destination as in the HTML keeps its index; a text-only one gets the next.
    assert [c.link_index for c in claims] == [1, 2, 3]
    assert "Shop the sale: https://t.shop.example/c/" in out.body_text
    assert re.search(r"/c/[A-Za-z0-9_-]+\.\n", out.body_text)  # the full stop stays after it
    assert re.search(r"\(https://t\.shop\.example/c/[A-Za-z0-9_-]+\)\.\n", out.body_text)
    assert "Write to help@shop.example." in out.body_text


def test_nudges_own_preference_link_is_not_wrapped() -> None:
    prefs = BASE + links.sign_preferences(SECRET, WS, MSG, CONTACT)
    rendered = render(
        "Hi",
        "Sale: https://shop.example/sale",
        '<p><a href="https://shop.example/sale">Sale</a></p>',
        {},
        MailLinks(preferences=prefs),
    )
    out = track(rendered)
    assert f'<a href="{html.escape(prefs)}">' in out.body_html
    assert f": {prefs}\n" in out.body_text
    assert out.body_text.count("/c/") == 1 and out.body_html.count("/c/") == 1


def test_a_text_only_mail_gets_tracked_links_and_no_pixel() -> None:
    out = track(Rendered("Hi", "See https://shop.example/x", ""))
    assert out.body_html == ""
    assert "/c/" in out.body_text and "/o/" not in out.body_text


def test_subject_is_untouched_and_a_mail_without_links_only_gains_the_pixel() -> None:
    source = "<html><body><p>Thanks for your order.</p></body></html>"
    out = track(Rendered("Order https://shop.example/", "Thanks", source))
    assert out.subject == "Order https://shop.example/"
    assert out.body_text == "Thanks"
    assert out.body_html.startswith("<html><body><p>Thanks for your order.</p><img src=")


@pytest.mark.parametrize("scheme", ["javascript:alert(1)", "data:text/html,x", "ftp://x.example/"])
def test_non_web_schemes_are_not_tracked(scheme: str) -> None:
    source = f'<a href="{scheme}">x</a>'
    out = track(Rendered("s", "t", source))
    assert out.body_html.startswith(source)
