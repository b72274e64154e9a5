"""The shared personalisation sandbox (services/common/templating.py): defaults that treat
an empty value as missing, and templates that attack the sandbox or never end refused."""

from __future__ import annotations

import time

import pytest
from jinja2.exceptions import SecurityError

from services.common import templating
from services.common.templating import MAX_OUTPUT, LimitExceeded
from services.delivery.domain.rendering import RenderError, render

SAMPLE = {"contact": {"first_name": "", "last_name": "", "email": "", "locale": ""}}


def run(source: str, context: dict[str, object] | None = None, html: bool = False) -> str:
    return templating.render(templating.compiled(source, html), context or SAMPLE)


def test_default_replaces_an_empty_contact_field() -> None:
    assert run('Hi {{ contact.first_name | default("there") }}!') == "Hi there!"
    assert run('Hi {{ contact.first_name | d("there") }}!') == "Hi there!"
    assert (
        run('{{ contact.first_name | default("there") }}', {"contact": {"first_name": " "}})
        == "there"
    )


def test_default_keeps_a_present_value_and_replaces_an_undefined_one() -> None:
    ctx = {"contact": {"first_name": "Ada"}}
    assert run('{{ contact.first_name | default("there") }}', ctx) == "Ada"
    assert run('{{ contact.nickname | default("you") }}', ctx) == "you"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ contact.__class__ }}",
        "{{ ''.format }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ '%999999999d' % 1 }}",
    ],
)
def test_access_to_python_internals_is_refused(source: str) -> None:
    with pytest.raises(SecurityError):
        run(source)


@pytest.mark.parametrize(
    "source",
    [
        # Nested loops: 10^10 iterations if nothing stopped them.
        "{% for i in range(50000) %}{% for j in range(50000) %}{% endfor %}{% endfor %}",
        # A recursive loop widening at every level.
        "{% for x in range(1000) recursive %}{% if loop.depth < 9 %}"
        "{{ loop(range(1000)) }}{% endif %}{% endfor %}",
        "{% for i in range(10) %}{{ range(100000000) | length }}{% endfor %}",
    ],
)
def test_a_template_that_would_loop_for_ages_is_stopped_by_its_step_budget(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(LimitExceeded):
        run(source)
    # Counted, not timed: the bound is generous so a loaded machine cannot fail it.
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 1000000000 }}",
        "{% for i in range(20000) %}0123456789{% endfor %}",
        "{% set a = 'x' * 90000 %}{% set b = a ~ a %}{{ b | length }}",
        "{% set a = 'x' * 90000 %}{{ (a + a) | length }}",
        "{% macro grow(s) %}{{ grow(s ~ s) }}{% endmacro %}{{ grow('x') }}",
        "{{ 'x'.upper() * 200000 }}",
        "{{ 'aaaa' | replace('a', 'x' * 50000) }}",
        "{{ range(40000) | join('------') }}",
    ],
)
def test_a_huge_output_or_value_is_refused_not_truncated(source: str) -> None:
    with pytest.raises(LimitExceeded):
        run(source)


def test_output_at_the_limit_is_rendered_whole() -> None:
    assert len(run(f"{{{{ 'x' * {MAX_OUTPUT} }}}}")) == MAX_OUTPUT


def test_a_template_rendered_outside_the_budget_cannot_loop() -> None:
    with pytest.raises(LimitExceeded):
        templating.compiled("{% for i in range(3) %}{{ i }}{% endfor %}", False).render()


def test_html_bodies_escape_contact_values() -> None:
    html = run("<p>{{ contact.first_name }}</p>", {"contact": {"first_name": "<b>"}}, html=True)
    assert html == "<p>&lt;b&gt;</p>"


@pytest.mark.parametrize(
    "source",
    [
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "{{ 1 / 0 }}",
        "{{ contact.first_name + 1 }}",
        "{{ ''.__class__ }}",
        "{% for i in range(50000) %}{% for j in range(50000) %}{% endfor %}{% endfor %}",
    ],
)
def test_delivery_turns_every_render_failure_into_a_render_error(source: str) -> None:
    """Delivery's consumer finishes such a message as FAILED rather than crashing."""
    with pytest.raises(RenderError):
        render(source, "body", "", dict(SAMPLE))
