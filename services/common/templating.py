"""The one Jinja2 sandbox personalisation runs in, for delivery (which renders every mail) and
campaigns (which previews and trial-renders a campaign's content before it is sent), so that
what a manager sees and what was checked is exactly what a contact gets.

The sandbox is Jinja2's :class:`ImmutableSandboxedEnvironment` (no attribute starting with
``_``, no mutation of lists or dicts), narrowed and bounded:

- **Names.** Globals are only ``range``; ``cycler``, ``joiner``, ``namespace``, ``lipsum``
  and ``dict`` are gone (``namespace`` would let a loop accumulate, ``lipsum`` makes text of
  any size). Filters are a short list of the ones personalisation needs
  (:data:`FILTERS`); string methods an allow-list (:data:`STR_METHODS`): no ``format``
  (its width is unbounded), ``ljust``, ``center``, ``replace``...
- **``default``** treats an empty value as missing: contacts answers "" for a field it
  does not know, and ``{{ contact.first_name | default("there") }}`` must never print a
  blank.
- **Work, counted rather than timed.** Every loop iteration and every call (macros,
  ``loop()`` of a recursive loop, methods) costs one step of a budget of
  :data:`MAX_STEPS` per render; past it the render stops with :class:`LimitExceeded`.
  Loops are counted by rewriting the parsed template before it is compiled: every
  ``{% for %}`` iterates through a counting filter. A step count, unlike a timer or a
  signal, stops a template that would loop forever at the same point on an idle and a
  loaded machine, in campaigns' trial render and in delivery alike (a timer would accept a
  template on one and refuse it on the other), needs no thread or ``sys.settrace``, and
  every step is itself small because of the size limits below.
- **Sizes.** Every value a template builds (``~`` and ``+`` concatenation, ``*``,
  ``replace``, ``join``, a call's result) and every rendered field is at most
  :data:`MAX_OUTPUT` characters: refused, never truncated. ``**`` takes small exponents,
  ``%`` does not format strings, calls take no integer above :data:`MAX_OUTPUT` (so no
  multi-gigabyte allocation happens before a check can see it).
- **Recursion** (a macro calling itself) ends in Python's RecursionError, which callers
  treat like any other template error.

Render only through :func:`render`: it sets up the step budget (a template rendered
otherwise refuses to loop)."""

from __future__ import annotations

import contextvars
import functools
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from jinja2 import Template, TemplateError, Undefined, nodes
from jinja2.exceptions import SecurityError
from jinja2.filters import do_striptags, do_truncate, do_wordcount
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer
from markupsafe import escape

MAX_OUTPUT = 100_000  # characters of any rendered field or built value
MAX_STEPS = 50_000  # loop iterations and calls in one render
MAX_EXPONENT = 64
# What a broken template can raise while it compiles or renders: Jinja2's errors (the limits
# among them), Python's RecursionError and SyntaxError (deep nesting), and the errors of the
# operations a template may do on the values it has ({{ 1 / 0 }}, {{ "a" + 1 }}, {{ x[5] }}).
TEMPLATE_ERRORS: tuple[type[Exception], ...] = (
    TemplateError,
    RecursionError,
    SyntaxError,
    ArithmeticError,
    TypeError,
    ValueError,
    LookupError,
    AttributeError,
)

STR_METHODS = frozenset(
    {
        "upper",
        "lower",
        "title",
        "capitalize",
        "casefold",
        "swapcase",
        "strip",
        "lstrip",
        "rstrip",
        "startswith",
        "endswith",
        "split",
        "isdigit",
        "isalpha",
        "isalnum",
        "isspace",
    }
)
MAPPING_METHODS = frozenset({"get", "items", "keys", "values"})


class LimitExceeded(SecurityError):
    """The template does more work or makes more text than a mail may (a TemplateError)."""


class _Budget:
    __slots__ = ("steps",)

    def __init__(self) -> None:
        self.steps = 0

    def spend(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > MAX_STEPS:
            raise LimitExceeded(
                f"the template does too much work: more than {MAX_STEPS} loop steps or calls"
            )


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "nudge_template_budget", default=None
)


def _spend(n: int = 1) -> None:
    budget = _budget.get()
    if budget is None:
        raise LimitExceeded("templates are rendered through services.common.templating.render")
    budget.spend(n)


def _sized(value: Any) -> Any:
    if isinstance(value, str | list | tuple) and len(value) > MAX_OUTPUT:
        raise LimitExceeded(f"the template builds a value of more than {MAX_OUTPUT} characters")
    return value


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _spend()
        yield item


# ---------------------------------------------------------------- filters


def is_missing(value: Any) -> bool:
    """Undefined, None, or a blank string: what ``default`` replaces."""
    return (
        isinstance(value, Undefined)
        or value is None
        or (isinstance(value, str) and not value.strip())
    )


def do_default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """Jinja2's ``default``, but an empty value counts as missing too (``boolean`` is kept
    for compatibility: any falsy value then counts as missing)."""
    if is_missing(value) or (boolean and not value):
        return default_value
    return value


def do_replace(value: Any, old_value: Any, new_value: Any, count: int | None = None) -> str:
    s, old, new = str(value), str(old_value), str(new_value)
    times = s.count(old) if old else len(s) + 1
    if count is not None:
        times = min(times, max(count, 0))
    if len(s) + times * (len(new) - len(old)) > MAX_OUTPUT:
        raise LimitExceeded(f"replace would make more than {MAX_OUTPUT} characters")
    return s.replace(old, new, -1 if count is None else count)


def do_join(value: Iterable[Any], d: str = "") -> str:
    parts: list[str] = []
    size = 0
    for item in value:
        _spend()
        text = str(item)
        size += len(text) + len(d)
        if size > MAX_OUTPUT:
            raise LimitExceeded(f"join would make more than {MAX_OUTPUT} characters")
        parts.append(text)
    return str(d).join(parts)


def _length(value: Any) -> int:
    return len(value)


def _first(value: Iterable[Any]) -> Any:
    for item in value:
        return item
    return Undefined(hint="no first item")


def _last(value: Any) -> Any:
    items = list(_counted(value))
    return items[-1] if items else Undefined(hint="no last item")


def _truncate(s: Any, length: int = 255, killwords: bool = False, end: str = "...") -> str:
    return do_truncate(_ENV, str(s), min(length, MAX_OUTPUT), killwords, end)


def _to_int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return default


def _to_float(value: Any, default: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return number if math.isfinite(number) else default


def _round(value: Any, precision: int = 0) -> float:
    return round(_to_float(value), max(0, min(precision, 10)))


def _string_filter(method: str) -> Callable[[Any], str]:
    def apply(value: Any) -> str:
        return str(getattr(str(value), method)())

    return apply


FILTERS: dict[str, Callable[..., Any]] = {
    "default": do_default,
    "d": do_default,
    "upper": _string_filter("upper"),
    "lower": _string_filter("lower"),
    "title": _string_filter("title"),
    "capitalize": _string_filter("capitalize"),
    "trim": _string_filter("strip"),
    "replace": do_replace,
    "join": do_join,
    "length": _length,
    "count": _length,
    "first": _first,
    "last": _last,
    "truncate": _truncate,
    "wordcount": do_wordcount,
    "striptags": do_striptags,
    "escape": escape,
    "e": escape,
    "string": str,
    "int": _to_int,
    "float": _to_float,
    "round": _round,
    "abs": abs,
    # What the rewriting of the parsed template inserts (see _Guard).
    "nudge_steps": _counted,
    "nudge_size": _sized,
}


# ---------------------------------------------------------------- the environment


class _Undefined(Undefined):
    """Jinja2's lenient undefined (a missing value prints as nothing: campaigns refuses such
    templates before sending, see services/campaigns/domain/content.py), except that an
    attribute the sandbox refused (``{{ x.__class__ }}``) raises its SecurityError when
    printed rather than printing nothing: an attack is an error, never a blank."""

    __slots__ = ()

    def __str__(self) -> str:
        if issubclass(self._undefined_exception, SecurityError):
            self._fail_with_undefined_error()
        return super().__str__()


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, bounded in work and size (module docstring)."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(autoescape=autoescape, undefined=_Undefined)
        self.globals = {"range": _safe_range}
        self.filters = dict(FILTERS)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if isinstance(obj, str):
            return attr in STR_METHODS
        if isinstance(obj, Mapping) and callable(value):
            return attr in MAPPING_METHODS
        return True

    def wrap_str_format(self, value: Any) -> None:
        """No ``str.format`` at all (Jinja2 would hand out a sandboxed one): a width in the
        format string is an allocation of any size before any check could see it."""
        return None

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _spend()
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_OUTPUT:
                raise LimitExceeded(f"a call with a number above {MAX_OUTPUT}")
            _sized(arg)
        if isinstance(__obj, LoopContext) and args:
            # loop(children) of a recursive loop iterates its argument: counted like a loop.
            args = (_counted(args[0]), *args[1:])
        return _sized(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "%" and isinstance(left, str):
            raise SecurityError("%-formatting of strings is not available in templates")
        if operator_ == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise LimitExceeded(f"an exponent above {MAX_EXPONENT}")
        if operator_ == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_OUTPUT
                ):
                    raise LimitExceeded(
                        f"the template builds a value of more than {MAX_OUTPUT} characters"
                    )
        return _sized(_BINOPS[operator_](left, right))

    def compile_source(self, source: str) -> Template:
        """Parse, add the step and size guards (:class:`_Guard`), compile."""
        tree = self.parse(source)
        return self.from_string(_Guard().visit(tree))


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "*": operator.mul,
    "**": operator.pow,
    "%": operator.mod,
}


def _safe_range(*args: int) -> range:
    """``range`` of at most :data:`MAX_STEPS` numbers (it could not be looped over anyway)."""
    numbers = range(*args)
    if len(numbers) > MAX_STEPS:
        raise LimitExceeded(f"a range of more than {MAX_STEPS} numbers")
    return numbers


class _Guard(NodeTransformer):
    """Every ``{% for %}`` loops through ``nudge_steps`` (one step an iteration) and every
    ``~`` concatenation's result goes through ``nudge_size``."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "nudge_steps", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(node, "nudge_size", [], [], None, None, lineno=node.lineno)


_ENV = Sandbox(autoescape=False)
_HTML_ENV = Sandbox(autoescape=True)


def environment(html: bool) -> Sandbox:
    """The sandbox for a text field (subject, plain text) or an HTML body (autoescaped)."""
    return _HTML_ENV if html else _ENV


@functools.lru_cache(maxsize=128)
def compiled(source: str, html: bool) -> Template:
    """A campaign sends the same subject and bodies to every contact: compiling them once
    rather than for every mail saves ~2.5 ms of CPU a mail (bench/RESULTS.md, issue 14).
    Compiled templates are immutable; a template that fails to compile is not cached."""
    return environment(html).compile_source(source)


def render(template: Template, context: Mapping[str, Any]) -> str:
    """The template rendered with ``context`` within :data:`MAX_STEPS` and
    :data:`MAX_OUTPUT` (streamed: a template printing without end is stopped as soon as its
    output passes the limit). Raises a Jinja2 TemplateError (:class:`LimitExceeded` for the
    limits), RecursionError or another exception a broken template causes."""
    token = _budget.set(_Budget())
    try:
        parts: list[str] = []
        size = 0
        for part in template.generate(context):
            size += len(part)
            if size > MAX_OUTPUT:
                raise LimitExceeded(f"the rendered text is longer than {MAX_OUTPUT} characters")
            parts.append(part)
        return "".join(parts)
    finally:
        _budget.reset(token)


__all__ = [
    "MAX_OUTPUT",
    "MAX_STEPS",
    "TEMPLATE_ERRORS",
    "LimitExceeded",
    "Sandbox",
    "compiled",
    "do_default",
    "environment",
    "is_missing",
    "render",
]
