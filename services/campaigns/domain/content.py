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


def send_blockers(
    subject: str,
    body_text: str,
    body_html: str,
    body_markdown: str,
    ab_subjects: tuple[str, ...] = (),
) -> list[tuple[str, str]]:
    """What stops the campaign from being sent, as (field, message) pairs: SendCampaign
    refuses it with these as field violations. Today: templates that do not compile in the
    sandbox. (The CONTENT part of issue 15 adds a trial render within limits and contact
    fields output without a default, so that no mail ever shows a blank.)"""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(autoescape=False)
    fields = {"subject": subject, "body_text": body_text, "body_html": body_html}
    fields["body_markdown"] = body_markdown
    for i, s in enumerate(ab_subjects):
        fields[f"ab_test.subjects[{i}]"] = s
    problems: list[tuple[str, str]] = []
    for field, source in fields.items():
        try:
            env.parse(source)
        except (TemplateError, RecursionError) as err:
            problems.append((field, f"not a valid template: {err}"))
    return problems
