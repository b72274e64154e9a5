"""A campaign's content as delivery receives it: subject and bodies as Jinja2 templates.

Markdown (``body_markdown``), when given, is rendered here once per campaign to both the
plain text and the HTML body, so delivery renders only templates. Pure, no I/O.

Rendering here (previews, trial renders) uses the sandbox delivery uses
(services/common/templating.py) with the context delivery builds: ``contact`` (first_name,
last_name, email, locale), ``workspace`` (name), ``vars`` (none for a campaign) and
``links`` (preferences, confirm), so a preview is the mail a contact gets, before tracking
and the preference footer delivery adds.

What stops a campaign from being sent (:func:`send_blockers`), so that "a missing value
never renders as a blank or an error in a sent mail" holds:

- a template that does not compile in the sandbox, or is longer than
  :data:`templating.MAX_OUTPUT`;
- a trial render that fails or passes the sandbox's limits, with the sample contact (every
  field empty, as contacts answers for unknown fields) and with a full one;
- a name the mail will not have (``{{ contact.nickname }}``, ``{{ shop }}``): it would
  print nothing;
- a contact field (or a ``vars`` value) printed without a ``default``
  (``{{ contact.first_name }}`` alone): blank for a contact without a first name. Found by
  walking the parsed template (jinja2.nodes): a field is fine under a ``default`` filter,
  or inside ``{% if contact.first_name %}``; ``contact.email`` always has a value (nobody
  without an address is mailed).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from markdown_it import MarkdownIt

from services.common import templating

_markdown = MarkdownIt("commonmark", {"html": False})

# What a template may name: contact.<CONTACT_FIELDS>, workspace.name, vars.<anything>,
# links.<LINK_NAMES> (delivery's), and what the template itself defines (loop variables, set,
# macros) or the sandbox's globals (range).
CONTACT_FIELDS = ("first_name", "last_name", "email", "locale")
LINK_NAMES = ("preferences", "confirm")
ALWAYS_SET = frozenset({"email"})  # a contact without an address is never mailed
DEFAULT_FILTERS = frozenset({"default", "d"})

SAMPLE_CONTACT: dict[str, str] = dict.fromkeys(CONTACT_FIELDS, "")
FULL_CONTACT: dict[str, str] = {
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "ada@example.com",
    "locale": "en",
}
# In trial renders and checks: a link of the shape delivery gives.
SAMPLE_LINKS = {"preferences": "https://nudge.example/p/sample", "confirm": ""}


@dataclass(frozen=True)
class MessageTemplates:
    subject: str
    body_text: str
    body_html: str


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    body_text: str
    body_html: str


def message_templates(
    subject: str, body_text: str, body_html: str, body_markdown: str
) -> MessageTemplates:
    """The templates delivery renders for each contact. With ``body_markdown``: its HTML
    rendering and the Markdown itself as the text body (Markdown reads as plain text)."""
    if body_markdown:
        return MessageTemplates(subject, body_markdown, markdown_to_html(body_markdown))
    return MessageTemplates(subject, body_text, body_html)


# Jinja2's expressions, statements and comments, kept whole through the Markdown rendering.
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)


def markdown_to_html(body_markdown: str) -> str:
    """The HTML of a Markdown template, its Jinja2 tags left as they were written: rendered
    as they are, Markdown would escape the quotes of ``default("there")`` into ``&quot;``
    (no longer a template) or read ``*`` and ``_`` inside a tag as emphasis. Each tag is
    swapped for a letters-and-digits placeholder Markdown leaves alone, and put back after."""
    tags: list[str] = []

    def hide(match: re.Match[str]) -> str:
        tags.append(match.group(0))
        return f"nudgetag{len(tags) - 1}x{nonce}"

    nonce = secrets.token_hex(4)
    while nonce in body_markdown:
        nonce = secrets.token_hex(4)
    html: str = _markdown.render(_JINJA.sub(hide, body_markdown))
    for i, tag in enumerate(tags):
        html = html.replace(f"nudgetag{i}x{nonce}", tag, 1)
    return html


def context_for(
    contact: Mapping[str, str], workspace_name: str, links: Mapping[str, str] | None = None
) -> dict[str, object]:
    """The context delivery renders with (services/delivery/handlers.py)."""
    return {
        "contact": {field: contact.get(field, "") for field in CONTACT_FIELDS},
        "workspace": {"name": workspace_name},
        "vars": {},
        "links": dict(links or {"preferences": "", "confirm": ""}),
    }


def render_message(templates: MessageTemplates, context: Mapping[str, object]) -> RenderedMessage:
    """As delivery renders it (the subject's whitespace folded to single spaces). Raises
    one of :data:`templating.TEMPLATE_ERRORS`."""
    subject = templating.render(templating.compiled(templates.subject, False), context)
    return RenderedMessage(
        subject=" ".join(subject.split()),
        body_text=templating.render(templating.compiled(templates.body_text, False), context),
        body_html=(
            templating.render(templating.compiled(templates.body_html, True), context)
            if templates.body_html
            else ""
        ),
    )


# ---------------------------------------------------------------- the parsed template


@dataclass(frozen=True)
class Reference:
    """A name the template reads: ``contact.first_name`` -> ("contact", "first_name")."""

    root: str
    attribute: str | None


@dataclass(frozen=True)
class Personalisation:
    unknown: tuple[str, ...]  # names the mail will not have, as written ("contact.nickname")
    without_default: tuple[str, ...]  # fields printed with no default ("contact.first_name")


def _reference(node: nodes.Node) -> Reference | None:
    if isinstance(node, nodes.Name):
        return Reference(node.name, None)
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
        return Reference(node.node.name, node.attr)
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.node, nodes.Name)
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
    ):
        return Reference(node.node.name, node.arg.value)
    return None


def _spelled(ref: Reference) -> str:
    return f"{ref.root}.{ref.attribute}" if ref.attribute else ref.root


def _is_unknown(ref: Reference, defined: frozenset[str]) -> bool:
    if ref.root in defined or ref.root in templating.environment(False).globals:
        return False
    if ref.root == "contact":
        return ref.attribute is not None and ref.attribute not in CONTACT_FIELDS
    if ref.root == "workspace":
        return ref.attribute is not None and ref.attribute != "name"
    if ref.root == "links":
        return ref.attribute is not None and ref.attribute not in LINK_NAMES
    return ref.root != "vars"


def _may_be_blank(ref: Reference) -> bool:
    if ref.root == "contact":
        return ref.attribute in CONTACT_FIELDS and ref.attribute not in ALWAYS_SET
    return ref.root == "vars" and ref.attribute is not None


def _printed(expr: nodes.Node, guarded: frozenset[str]) -> Iterator[Reference]:
    """Fields ``expr`` prints as they are: not under a default filter, not only tested."""
    ref = _reference(expr)
    if ref is not None:
        if _spelled(ref) not in guarded:
            yield ref
        return
    if isinstance(expr, nodes.Filter) and expr.name in DEFAULT_FILTERS:
        return
    if isinstance(expr, nodes.CondExpr):
        inner = guarded | _tested(expr.test)
        yield from _printed(expr.expr1, inner)
        if expr.expr2 is not None:
            yield from _printed(expr.expr2, guarded)
        return
    if isinstance(expr, nodes.Test | nodes.Compare | nodes.Not | nodes.And | nodes.Or):
        return  # prints True/False, never the value
    for child in expr.iter_child_nodes():
        yield from _printed(child, guarded)


def _tested(test: nodes.Node) -> frozenset[str]:
    """Fields that are non-empty where ``test`` holds (``{% if contact.first_name %}``,
    ``... and ...``, ``is defined`` is not enough: "" is defined)."""
    ref = _reference(test)
    if ref is not None:
        return frozenset({_spelled(ref)})
    if isinstance(test, nodes.And):
        return _tested(test.left) | _tested(test.right)
    return frozenset()


def _walk(node: nodes.Node, guarded: frozenset[str]) -> Iterator[Reference]:
    if isinstance(node, nodes.Output):
        for expr in node.nodes:
            if not isinstance(expr, nodes.TemplateData):
                yield from _printed(expr, guarded)
        return
    if isinstance(node, nodes.If):
        inner = guarded | _tested(node.test)
        for statement in node.body:
            yield from _walk(statement, inner)
        for branch in node.elif_:
            yield from _walk(branch, guarded)
        for other in node.else_:
            yield from _walk(other, guarded)
        return
    for child in node.iter_child_nodes():
        yield from _walk(child, guarded)


def personalisation(tree: nodes.Template) -> Personalisation:
    """What a parsed template reads that the mail will not have, and what it prints that may
    be blank."""
    defined = frozenset(
        [n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")]
        + [m.name for m in tree.find_all(nodes.Macro)]
    )
    unknown: dict[str, None] = {}
    for node in tree.find_all((nodes.Name, nodes.Getattr, nodes.Getitem)):
        ref = _reference(node)
        if ref is None or (isinstance(node, nodes.Name) and node.ctx != "load"):
            continue
        if ref.attribute is None and ref.root in ("contact", "workspace", "links", "vars"):
            continue  # the root of a Getattr seen on its own
        if _is_unknown(ref, defined):
            unknown[_spelled(ref)] = None
    blank = {
        _spelled(ref): None
        for ref in _walk(tree, frozenset())
        if ref.root not in defined and _may_be_blank(ref)
    }
    return Personalisation(tuple(unknown), tuple(blank))


# ---------------------------------------------------------------- what blocks a send


def content_fields(
    subject: str,
    body_text: str,
    body_html: str,
    body_markdown: str,
    ab_subjects: tuple[str, ...] = (),
) -> list[tuple[str, str, bool]]:
    """(field name as the manager wrote it, template, is HTML) of every template sent. With
    Markdown, its HTML rendering is checked under the name ``body_markdown`` too."""
    fields = [("subject", subject, False)]
    fields += [(f"ab_test.subjects[{i}]", s, False) for i, s in enumerate(ab_subjects)]
    if body_markdown:
        templates = message_templates(subject, body_text, body_html, body_markdown)
        fields += [("body_markdown", body_markdown, False)]
        fields += [("body_markdown", templates.body_html, True)]
    else:
        fields += [("body_text", body_text, False)]
        if body_html:
            fields += [("body_html", body_html, True)]
    return fields


def template_problems(source: str, html: bool) -> list[str]:
    """Why one template cannot be sent (empty: it can)."""
    if len(source) > templating.MAX_OUTPUT:
        return [f"longer than {templating.MAX_OUTPUT} characters"]
    env = templating.environment(html)
    try:
        tree = env.parse(source)
        templating.compiled(source, html)
    except templating.TEMPLATE_ERRORS as err:
        return [f"not a valid template: {_describe(err)}"]
    found = personalisation(tree)
    problems = [f"{name} does not exist: it would print nothing" for name in found.unknown]
    problems += [
        f"{name} is printed without a default: a contact without it would see a blank;"
        f' write {{{{ {name} | default("...") }}}}'
        for name in found.without_default
    ]
    for label, contact in (
        ("a contact with no data", SAMPLE_CONTACT),
        ("a full contact", FULL_CONTACT),
    ):
        try:
            templating.render(
                templating.compiled(source, html),
                context_for(contact, "Workspace", SAMPLE_LINKS),
            )
        except templating.TEMPLATE_ERRORS as err:
            problems.append(f"fails for {label}: {_describe(err)}")
            break
    return problems


def _describe(err: BaseException) -> str:
    if isinstance(err, RecursionError):
        return "too deeply nested or recursive"
    return f"{type(err).__name__}: {err}"[:300]


def send_blockers(
    subject: str,
    body_text: str,
    body_html: str,
    body_markdown: str,
    ab_subjects: tuple[str, ...] = (),
) -> list[tuple[str, str]]:
    """What stops the campaign from being sent, as (field, message) pairs: SendCampaign
    refuses it with these as field violations (module docstring)."""
    problems: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for field, source, html in content_fields(
        subject, body_text, body_html, body_markdown, ab_subjects
    ):
        for message in template_problems(source, html):
            if (field, message) not in seen:
                seen.add((field, message))
                problems.append((field, message))
    return problems


def sample_context(workspace_name: str) -> dict[str, Any]:
    """The sample contact (every field missing), for previews without a contact."""
    return context_for(SAMPLE_CONTACT, workspace_name)
