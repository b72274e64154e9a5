"""Personalisation: subject and bodies are Jinja2 templates run in the sandbox, so a template
written by a manager cannot reach Python objects, files or attributes it was not given.

Every mail but a transactional one ends with a link to the contact's preference page (beside
the List-Unsubscribe header's one-click link), appended here so that no template can leave it
out. Templates see the mail's links as ``links.preferences`` and, in a double opt-in
confirmation mail, ``links.confirm``."""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass

from jinja2 import Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_env = ImmutableSandboxedEnvironment(autoescape=False)
_html_env = ImmutableSandboxedEnvironment(autoescape=True)


@functools.lru_cache(maxsize=128)
def _compiled(source: str, html_escaped: bool) -> Template:
    """A campaign sends the same subject and bodies to every contact: compiling them once
    rather than for every mail saves ~2.5 ms of CPU a mail (bench/RESULTS.md, issue 14).
    Compiled templates are immutable; a template that fails to compile is not cached."""
    return (_html_env if html_escaped else _env).from_string(source)


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
    except (TemplateError, RecursionError, SyntaxError) as err:
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
            subject=" ".join(_compiled(subject, False).render(context).split()),
            body_text=_compiled(body_text, False).render(context),
            body_html=_compiled(body_html, True).render(context) if body_html else "",
        )
    except (TemplateError, RecursionError, SyntaxError) as err:
        # Deep nesting fails in Python's parser or compiler, not as a TemplateError.
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
