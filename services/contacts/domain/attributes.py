"""Custom attributes: declared per workspace with a type, values checked against it. Pure.

A contact's attributes travel and are stored as strings (``map<string, string>``); the
declared type says which strings are valid and how two values compare: ``"12.50"`` and
``"12.5"`` are the same number, ``"TRUE"`` is refused rather than guessed.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal, InvalidOperation
from enum import IntEnum

from services.common.contact_limits import MAX_ATTRIBUTE_VALUE
from services.common.errors import Validator

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_DESCRIPTION = 500
MAX_DEFINITIONS = 200  # per workspace
# Numbers beyond this many digits are refused: PostgreSQL's numeric takes them, but nobody
# has a customer attribute with 60 significant digits, and the comparisons stay cheap.
MAX_NUMBER_DIGITS = 40
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class AttributeType(IntEnum):
    """The contract's AttributeType numbers, mirrored so the rules do not import gRPC."""

    STRING = 1
    NUMBER = 2
    BOOLEAN = 3
    DATE = 4


TYPE_HINTS = {
    AttributeType.STRING: "a string",
    AttributeType.NUMBER: 'a decimal number, e.g. "12.5"',
    AttributeType.BOOLEAN: '"true" or "false"',
    AttributeType.DATE: 'a date "YYYY-MM-DD"',
}


def parse_number(value: str) -> Decimal | None:
    """The decimal ``value`` spells (plain notation: no exponent, no NaN or infinity)."""
    text = value.strip()
    if (
        not text
        or len(text) > MAX_NUMBER_DIGITS + 2
        or not re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", text)
    ):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        return None


def parse_date(value: str) -> date | None:
    if not _DATE.match(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def is_valid(kind: int, value: str) -> bool:
    """Whether ``value`` is a value of the declared type ``kind``."""
    if kind == AttributeType.STRING:
        return len(value) <= MAX_ATTRIBUTE_VALUE
    if kind == AttributeType.NUMBER:
        return parse_number(value) is not None
    if kind == AttributeType.BOOLEAN:
        return value in ("true", "false")
    if kind == AttributeType.DATE:
        return parse_date(value) is not None
    return False


def check_values(
    v: Validator, attributes: dict[str, str], declared: dict[str, int], path: str
) -> None:
    """Every attribute named must be declared, and its value of the declared type; each
    refusal names its field as ``<path>.<name>`` (``contact.attributes.city``)."""
    for name, value in sorted(attributes.items()):
        field = f"{path}.{name[:64]}"
        kind = declared.get(name)
        if kind is None:
            v.check(
                False,
                field,
                "unknown attribute: declare it first (DefineAttribute, PUT /v1/attributes)",
            )
            continue
        if not is_valid(kind, value):
            v.check(False, field, f"must be {TYPE_HINTS[AttributeType(kind)]}, got {value[:50]!r}")


def check_definition(v: Validator, name: str, kind: int, description: str, path: str) -> None:
    v.check(NAME.match(name) is not None, f"{path}.name", "must match [a-z][a-z0-9_]{0,63}")
    v.check(
        kind in AttributeType.__members__.values(),
        f"{path}.type",
        "is required: STRING, NUMBER, BOOLEAN or DATE",
    )
    v.check(
        len(description) <= MAX_DESCRIPTION,
        f"{path}.description",
        f"longer than {MAX_DESCRIPTION} characters",
    )
    v.check("\x00" not in description, f"{path}.description", "contains a NUL character")
