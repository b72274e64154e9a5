"""CheckContent's warnings (services/campaigns/domain/checks.py), one rule at a time."""

from __future__ import annotations

import pytest

from services.campaigns.domain.checks import content_warnings, fold, link_problem, text_links

GOOD_SUBJECT = "News from Café Lumière"
GOOD_TEXT = (
    'Hi {{ contact.first_name | default("there") }},\n'
    "new beans are in.\nSee https://cafe.example/beans\nCafé Lumière"
)


def codes(**fields: str) -> list[tuple[str, str]]:
    args = {
        "subject": GOOD_SUBJECT,
        "body_text": GOOD_TEXT,
        "body_html": "",
        "body_markdown": "",
        "workspace_name": "Café Lumière",
    }
    args.update(fields)
    return [(w.code, w.field) for w in content_warnings(**args)]  # type: ignore[arg-type]


def test_a_good_four_line_message_has_no_warning() -> None:
    assert codes() == []


def test_more_than_four_lines_is_too_many() -> None:
    assert ("too_many_lines", "body_text") in codes(body_text="a\nb\n\nc\nd\ne")
    assert ("too_many_lines", "body_text") not in codes(body_text="a\n\n\nb\nc\nd\n")


def test_the_subject_must_name_the_workspace_whatever_the_case_and_accents() -> None:
    assert codes(subject="CAFE LUMIERE NEW BEANS") == [("spam_like", "subject")]
    assert codes(subject="Cafe lumiere has new beans") == []
    assert codes(subject="New beans") == [("subject_without_workspace_name", "subject")]
    assert codes(subject="{{ workspace.name }}: new beans") == []
    assert ("subject_without_workspace_name", "ab_test.subjects[1]") in [
        (w.code, w.field)
        for w in content_warnings(
            GOOD_SUBJECT, GOOD_TEXT, "", "", "Café Lumière", ("Café Lumière 1", "Other")
        )
    ]


@pytest.mark.parametrize(
    ("subject", "text"),
    [
        ("CAFÉ LUMIÈRE NEWS", GOOD_TEXT),
        (GOOD_SUBJECT + "!!!", GOOD_TEXT),
        (GOOD_SUBJECT, "Free money for you, Café Lumière"),
        (GOOD_SUBJECT, "100% FREE beans"),
        (GOOD_SUBJECT, "$$$$ off"),
        (GOOD_SUBJECT, "https://a.example https://b.example https://c.example"),
    ],
)
def test_spam_like_content_is_flagged(subject: str, text: str) -> None:
    assert any(code == "spam_like" for code, _ in codes(subject=subject, body_text=text))


def test_broken_personalisation_and_missing_defaults_are_warnings() -> None:
    found = codes(body_text="Hi {{ contact.first_name }} {{ contact.nickname | default('x') }}")
    assert ("missing_default", "body_text") in found
    assert ("broken_personalisation", "body_text") in found
    assert ("broken_personalisation", "subject") in codes(subject="{{ oops")
    assert ("broken_personalisation", "body_text") in codes(body_text="{{ 1 / 0 }}")


@pytest.mark.parametrize(
    "href",
    [
        "javascript:alert(1)",
        "/relative",
        "#top",
        "http://",
        "ftp://x.example/f",
        "data:text/html,x",
    ],
)
def test_bad_links_in_html_are_flagged(href: str) -> None:
    html = f'<p>Café Lumière <a href="{href}">x</a></p>'
    assert ("bad_link", "body_html") in codes(body_html=html)


def test_good_links_in_html_pass_mailto_included() -> None:
    html = (
        '<a href="https://cafe.example/a?b=1">x</a><img src="http://cafe.example/i.png">'
        '<a href="mailto:owner@cafe.example">write</a>'
    )
    assert codes(body_html=html) == []
    assert link_problem("mailto:not an address", html=True) is not None


def test_url_tokens_in_text_must_be_http_links() -> None:
    assert text_links("see https://a.example/x. and www.b.example, javascript:alert(1)") == [
        "https://a.example/x",
        "www.b.example",
        "javascript:alert",
    ]
    found = codes(body_text="Café Lumière: www.cafe.example\njavascript:alert(1)")
    assert found.count(("bad_link", "body_text")) == 2


def test_markdown_is_checked_as_text_and_as_its_html() -> None:
    found = codes(body_text="", body_markdown="Hi [there](javascript:alert(1))\n\nCafé Lumière")
    assert ("bad_link", "body_markdown") in found


def test_fold_ignores_case_accents_and_spacing() -> None:
    assert fold("  Café   LUMIÈRE ") == "cafe lumiere"
