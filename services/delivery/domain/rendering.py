"""Personalisation: subject and bodies are Jinja2 templates run in the sandbox, so a template
written by a manager cannot reach Python objects, files or attributes it was not given. The
sandbox, its filters and its limits (work, size) are services/common/templating.py's, the
same campaigns previews and checks with, so what was checked is what is sent.

Every mail but a transactional one ends with a link to the contact's preference page (beside
the List-Unsubscribe header's one-click link), appended here so that no template can leave it
out. Templates see the mail's links as ``links.preferences`` and, in a double opt-in
confirmation mail, ``links.confirm``."""

from __future__ import annotations

import html
from dataclasses import dataclass

from services.common import templating
from services.common.templating import compiled as _compiled


@dataclass(frozen=True)
class Rendered:
    subject: str
    body_text: str
    body_html: str


class RenderError(ValueError):
    pass


@dataclass(frozen=True)
class MailLinks:
    """Signed links of one mail (absolute URLs), empty when the mail has none."""

    preferences: str = ""  # every non-transactional mail
    confirm: str = ""  # the double opt-in confirmation mail


PREFERENCES_TEXT = "Manage your e-mail preferences"


def check_templates(subject: str, body_text: str, body_html: str) -> None:
    """Raises :class:`RenderError` unless every template compiles. Only compiles: the values
    (``contact``, ``vars``...) are known when the mail is sent, so rendering now with none
    would refuse every template that uses them."""
    try:
        _compiled(subject, False)
        _compiled(body_text, False)
        if body_html:
            _compiled(body_html, True)
    except templating.TEMPLATE_ERRORS as err:
        raise RenderError(f"{type(err).__name__}: {err}") from err


def render(
    subject: str,
    body_text: str,
    body_html: str,
    context: dict[str, object],
    links: MailLinks | None = None,
) -> Rendered:
    links = links or MailLinks()
    context = {**context, "links": {"preferences": links.preferences, "confirm": links.confirm}}
    try:
        rendered = Rendered(
            subject=" ".join(templating.render(_compiled(subject, False), context).split()),
            body_text=templating.render(_compiled(body_text, False), context),
            body_html=templating.render(_compiled(body_html, True), context) if body_html else "",
        )
    except templating.TEMPLATE_ERRORS as err:
        # Deep nesting fails in Python's parser or compiler, not as a TemplateError; a
        # template may also divide by zero or add a number to a text for this contact.
        raise RenderError(f"{type(err).__name__}: {err}") from err
    if not links.preferences:
        return rendered
    url = links.preferences
    return Rendered(
        subject=rendered.subject,
        body_text=f"{rendered.body_text.rstrip()}\n\n--\n{PREFERENCES_TEXT}: {url}\n",
        body_html=(
            f'{rendered.body_html}\n<p style="font-size:small">'
            f'<a href="{html.escape(url)}">{PREFERENCES_TEXT}</a></p>'
            if rendered.body_html
            else ""
        ),
    )
