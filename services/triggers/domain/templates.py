"""The workflow templates a manager starts from: every one a valid, publishable definition
with default texts in English (services/triggers/templates/<id>.json, docs/triggers.md
"Templates").

Each template is a JSON file in the canonical export form (:func:`definition.export`), so a
template reads and diffs like any workflow a manager keeps in a repository, and is checked
by the same :func:`definition.parse` as what the API receives: a template that stopped being
valid fails at import, not when a manager picks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from services.triggers.domain import definition
from services.triggers.domain.model import Definition

# The order the console lists them in: the most useful first.
ORDER = (
    "abandoned_cart",
    "welcome",
    "post_purchase",
    "order_details",
    "browse_abandonment",
    "search_follow_up",
    "win_back",
    "birthday",
    "signup_anniversary",
    "password_reminder",
    "value_threshold",
)


@dataclass(frozen=True)
class TemplateInfo:
    id: str
    name: str
    description: str
    definition: Definition


def _load() -> tuple[TemplateInfo, ...]:
    folder = resources.files("services.triggers").joinpath("templates")
    found: list[TemplateInfo] = []
    for template_id in ORDER:
        text = folder.joinpath(f"{template_id}.json").read_text(encoding="utf-8")
        parsed = definition.parse(text)
        found.append(TemplateInfo(template_id, parsed.name, parsed.description, parsed))
    return tuple(found)


TEMPLATES: tuple[TemplateInfo, ...] = _load()
_BY_ID = {t.id: t for t in TEMPLATES}


def template(template_id: str) -> TemplateInfo | None:
    """The template with this id, or None (the API answers NOT_FOUND)."""
    return _BY_ID.get(template_id)


__all__ = ["TEMPLATES", "TemplateInfo", "template"]
