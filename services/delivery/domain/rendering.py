"""Personalisation: subject and bodies are Jinja2 templates run in the sandbox, so a template
written by a manager cannot reach Python objects, files or attributes it was not given."""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_env = ImmutableSandboxedEnvironment(autoescape=False)
_html_env = ImmutableSandboxedEnvironment(autoescape=True)


@dataclass(frozen=True)
class Rendered:
    subject: str
    body_text: str
    body_html: str


class RenderError(ValueError):
    pass


def render(subject: str, body_text: str, body_html: str, context: dict[str, object]) -> Rendered:
    try:
        return Rendered(
            subject=" ".join(_env.from_string(subject).render(context).split()),
            body_text=_env.from_string(body_text).render(context),
            body_html=_html_env.from_string(body_html).render(context) if body_html else "",
        )
    except (TemplateError, RecursionError, SyntaxError) as err:
        # Deep nesting fails in Python's parser or compiler, not as a TemplateError.
        raise RenderError(f"{type(err).__name__}: {err}") from err
