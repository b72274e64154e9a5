"""Markdown bodies keep their Jinja2 tags intact through the Markdown rendering, so the HTML
delivery receives is still the template the manager wrote."""

from __future__ import annotations

from services.campaigns.domain.content import (
    FULL_CONTACT,
    SAMPLE_CONTACT,
    context_for,
    message_templates,
    render_message,
    send_blockers,
)

MARKDOWN = (
    'Hi **{{ contact.first_name | default("there") }}**,\n\n'
    'see [our shop](https://shop.example/{{ contact.locale | default("en") }}/new) & <b>\n\n'
    "{% if contact.last_name %}*{{ contact.last_name }}*{% endif %} {# a_note_with_underscores #}"
)


def test_tags_survive_markdown_with_their_quotes_and_underscores() -> None:
    templates = message_templates("S", "", "", MARKDOWN)
    assert templates.body_text == MARKDOWN
    assert '<strong>{{ contact.first_name | default("there") }}</strong>' in templates.body_html
    assert 'href="https://shop.example/{{ contact.locale | default("en") }}/new"' in (
        templates.body_html
    )
    assert "{# a_note_with_underscores #}" in templates.body_html
    assert "&amp; &lt;b&gt;" in templates.body_html  # the Markdown's own text is still escaped


def test_a_markdown_campaign_is_sendable_and_renders_for_every_contact() -> None:
    assert send_blockers("S", "", "", MARKDOWN) == []
    templates = message_templates("S", "", "", MARKDOWN)
    sample = render_message(templates, context_for(SAMPLE_CONTACT, "Shop"))
    assert "<strong>there</strong>" in sample.body_html
    assert 'href="https://shop.example/en/new"' in sample.body_html
    full = render_message(templates, context_for(FULL_CONTACT, "Shop"))
    assert "<strong>Ada</strong>" in full.body_html and "<em>Lovelace</em>" in full.body_html


def test_text_that_looks_like_a_placeholder_is_left_alone() -> None:
    templates = message_templates("S", "", "", "nudgetag0x {{ contact.email }}")
    assert templates.body_html == "<p>nudgetag0x {{ contact.email }}</p>\n"
