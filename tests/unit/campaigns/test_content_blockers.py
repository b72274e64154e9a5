"""send_blockers(): what SendCampaign refuses, so that no sent mail shows a blank or an error."""

from __future__ import annotations

import pytest

from services.campaigns.domain.content import personalisation, send_blockers
from services.common import templating

OK = 'Hi {{ contact.first_name | default("there") }}'


def fields_of(blockers: list[tuple[str, str]]) -> list[str]:
    return [field for field, _ in blockers]


@pytest.mark.parametrize(
    "text",
    [
        OK,
        "Hi {% if contact.first_name %}{{ contact.first_name }}{% else %}there{% endif %}",
        '{{ contact.first_name if contact.first_name else "there" }}',
        "Write to {{ contact.email }} {{ workspace.name }} {{ links.preferences }}",
        "{% for i in range(3) %}{{ i }}{% endfor %}{% set n = 2 %}{{ n }}",
        '{{ vars.code | default("none") }}',
    ],
)
def test_content_that_always_renders_a_value_is_sendable(text: str) -> None:
    assert send_blockers("Subject", text, "", "") == []


@pytest.mark.parametrize(
    "text",
    [
        "Hi {{ contact.first_name }}",
        "Hi {{ contact['last_name'] | upper }}",
        'Hi {{ "dear " ~ contact.first_name }}',
        "{% if contact.email %}{{ contact.locale }}{% endif %}",
        "{{ vars.code }}",
    ],
)
def test_a_contact_field_printed_without_default_blocks_the_send(text: str) -> None:
    blockers = send_blockers("Subject", text, "", "")
    assert fields_of(blockers) == ["body_text"]
    assert "without a default" in blockers[0][1]


def test_each_field_is_named_subjects_and_html_included() -> None:
    blockers = send_blockers(
        "Hi {{ contact.first_name }}",
        OK,
        "<p>{{ contact.last_name }}</p>",
        "",
        ("A {{ contact.locale }}", "B"),
    )
    assert fields_of(blockers) == ["subject", "ab_test.subjects[0]", "body_html"]


def test_markdown_is_checked_under_its_own_name() -> None:
    assert fields_of(send_blockers("S", "", "", "**{{ contact.first_name }}**")) == [
        "body_markdown"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ oops", "not a valid template"),
        ("{{ contact.nickname | default('x') }}", "contact.nickname does not exist"),
        ("{{ shop }}", "shop does not exist"),
        ("{{ 1 / 0 }}", "fails for a contact with no data"),
        ("{{ ''.__class__.__mro__ }}", "SecurityError"),
        ("{{ cycler.__init__.__globals__ }}", "cycler does not exist"),
        (
            "{% for i in range(50000) %}{% for j in range(50000) %}{% endfor %}{% endfor %}",
            "too much work",
        ),
        ("{% for i in range(20000) %}0123456789{% endfor %}", "longer than"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursive"),
        ("x" * (templating.MAX_OUTPUT + 1), "longer than"),
    ],
)
def test_broken_attacking_or_oversized_templates_block_the_send(text: str, expected: str) -> None:
    blockers = send_blockers("Subject", text, "", "")
    assert fields_of(blockers)[:1] == ["body_text"]
    assert any(expected in message for _, message in blockers), blockers


def test_a_template_failing_only_for_a_full_contact_blocks_the_send() -> None:
    text = "{% if contact.first_name %}{{ 1 / 0 }}{% endif %}"
    assert any("full contact" in m for _, m in send_blockers("S", text, "", ""))


def test_personalisation_lists_what_a_template_reads() -> None:
    found = personalisation(
        templating.environment(False).parse(
            "{{ contact.first_name }}{{ contact.nick }}{{ x }}{% set y = 1 %}{{ y }}"
        )
    )
    assert found.unknown == ("contact.nick", "x")
    assert found.without_default == ("contact.first_name",)
