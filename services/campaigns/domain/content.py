"""A campaign's content as delivery receives it: subject and bodies as Jinja2 templates.

Markdown (``body_markdown``), when given, is rendered here once per campaign to both the
plain text and the HTML body, so delivery renders only templates. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from markdown_it import MarkdownIt

_markdown = MarkdownIt("commonmark", {"html": False})


@dataclass(frozen=True)
class MessageTemplates:
    subject: str
    body_text: str
    body_html: str


def message_templates(
    subject: str, body_text: str, body_html: str, body_markdown: str
) -> MessageTemplates:
    """The templates delivery renders for each contact. With ``body_markdown``: its HTML
    rendering and the Markdown itself as the text body (Markdown reads as plain text)."""
    if body_markdown:
        return MessageTemplates(subject, body_markdown, _markdown.render(body_markdown))
    return MessageTemplates(subject, body_text, body_html)
