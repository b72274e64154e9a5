import pytest

from services.delivery.domain.rendering import RenderError, render


def test_templates_are_personalised() -> None:
    out = render(
        "Welcome to {{ workspace.name }}",
        "Hi {{ contact.first_name or 'there' }}",
        "<p>Hi {{ contact.first_name }}</p>",
        {"contact": {"first_name": "<Ada>"}, "workspace": {"name": "Bottega"}},
    )
    assert out.subject == "Welcome to Bottega"
    assert out.body_text == "Hi <Ada>"
    assert out.body_html == "<p>Hi &lt;Ada&gt;</p>"  # escaped in HTML, not in text


def test_a_subject_cannot_carry_header_breaks() -> None:
    out = render("Hi\r\nBcc: victim@example.com", "x", "", {})
    assert "\n" not in out.subject and "\r" not in out.subject


def test_a_template_cannot_reach_python_internals() -> None:
    with pytest.raises(RenderError):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", "x", "", {})


def test_a_broken_template_is_a_render_error() -> None:
    with pytest.raises(RenderError):
        render("{% if %}", "x", "", {})


@pytest.mark.parametrize(
    "template",
    [
        "{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}",
        "{% for a in b %}" * 40 + "x" + "{% endfor %}" * 40,
    ],
    ids=["deep-expression", "deep-loops"],
)
def test_pathological_nesting_is_a_render_error_not_a_crash(template: str) -> None:
    with pytest.raises(RenderError):
        render(template, "x", "", {"b": []})
