"""What an import's options mean, and how one record of the file becomes a contact to upsert.
Pure: no I/O. A row is checked by the same rules as CreateContact
(:func:`services.contacts.domain.model.validate_new_contact`), called, not copied.

An empty cell (or a JSON ``null``) leaves the field as it is: an import fills in and
updates, it never blanks a field out. Tags and attributes are added to what the contact
has; every other field given replaces the stored value.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nudge.contacts.v1 import imports_pb2

from services.common.errors import InvalidArgument, Validator
from services.contacts.domain import model
from services.contacts.imports.parsing import Record, Rejected

FIELDS = frozenset(
    {
        "email",
        "external_id",
        "first_name",
        "last_name",
        "locale",
        "time_zone",
        "birthday",
        "signed_up_at",
        "vip",
        "tags",
        "score",
    }
)
ATTRIBUTE_PREFIX = "attributes."
MAX_KEY = 200
MAX_WORDING = 2000
MAX_COLUMNS = 200
GRANT = frozenset({"true", "yes", "1", "granted", "y"})
WITHDRAW = frozenset({"false", "no", "0", "withdrawn", "n"})
INT64 = 2**63 - 1


@dataclass(frozen=True)
class ConsentColumn:
    column: str
    purpose: int
    source: int
    wording: str


@dataclass(frozen=True)
class Plan:
    """The options of an import, checked, and what each column of the file is."""

    format: int
    match: int  # ImportMatch
    columns: Mapping[str, str]  # file column -> field (explicit mapping)
    consents: tuple[ConsentColumn, ...]
    tags: tuple[str, ...]
    import_key: str
    file_name: str
    options_hash: bytes

    def target(self, column: str) -> str | int | None:
        """The field a column fills, the index of its consent column, or None."""
        mapped = self.columns.get(column)
        if mapped is not None:
            return mapped
        for i, consent in enumerate(self.consents):
            if consent.column == column:
                return i
        name = column.strip().lower()
        if name in FIELDS or (name.startswith(ATTRIBUTE_PREFIX) and len(name) > 11):
            return name if name in FIELDS else ATTRIBUTE_PREFIX + column.strip()[11:]
        return None


def _valid_target(target: str) -> bool:
    if target in FIELDS:
        return True
    return target.startswith(ATTRIBUTE_PREFIX) and 0 < len(target) - 11 <= 64


def plan_from_options(options: imports_pb2.ImportOptions) -> Plan:
    """The checked options; INVALID_ARGUMENT with every mistake at once."""
    v = Validator()
    v.strings(options, "options", max_length=MAX_WORDING)
    fmt = int(options.format)
    if fmt == imports_pb2.IMPORT_FORMAT_UNSPECIFIED:
        name = options.file_name.lower()
        if name.endswith(".csv"):
            fmt = imports_pb2.IMPORT_FORMAT_CSV
        elif name.endswith((".ndjson", ".jsonl")):
            fmt = imports_pb2.IMPORT_FORMAT_NDJSON
    v.check(
        fmt in (imports_pb2.IMPORT_FORMAT_CSV, imports_pb2.IMPORT_FORMAT_NDJSON),
        "options.format",
        "is required: CSV or NDJSON (or a file_name ending in .csv or .ndjson)",
    )
    match = int(options.match or imports_pb2.IMPORT_MATCH_EMAIL)
    v.check(
        match in (imports_pb2.IMPORT_MATCH_EMAIL, imports_pb2.IMPORT_MATCH_EXTERNAL_ID),
        "options.match",
        "must be EMAIL or EXTERNAL_ID",
    )
    v.check(len(options.columns) <= MAX_COLUMNS, "options.columns", f"more than {MAX_COLUMNS}")
    for column, target in options.columns.items():
        v.check(bool(column.strip()), "options.columns", "a column name is empty")
        v.check(
            _valid_target(target),
            f"options.columns[{column[:64]}]",
            f"unknown field {target[:64]!r}: one of {', '.join(sorted(FIELDS))}"
            " or attributes.<name>",
        )
    targets = list(options.columns.values())
    v.check(len(set(targets)) == len(targets), "options.columns", "two columns map to one field")
    purposes: set[int] = set()
    consents: list[ConsentColumn] = []
    for i, c in enumerate(options.consent_columns):
        path = f"options.consent_columns[{i}]"
        v.check(bool(c.column.strip()), f"{path}.column", "is required")
        v.check(c.column not in options.columns, f"{path}.column", "is also in columns")
        v.check(
            int(c.purpose) in model.CONSENT_PURPOSES,
            f"{path}.purpose",
            "must be MARKETING, TARGETED_MESSAGES or AUTOMATIONS",
        )
        v.check(c.purpose not in purposes, f"{path}.purpose", "given twice")
        purposes.add(c.purpose)
        source = c.source or model.ConsentSource.IMPORT
        v.check(source in model.RECORDABLE_SOURCES, f"{path}.source", "unknown source")
        consents.append(ConsentColumn(c.column, c.purpose, source, c.wording))
    v.check(len(options.tags) <= model.MAX_TAGS, "options.tags", f"more than {model.MAX_TAGS}")
    for i, tag in enumerate(options.tags):
        v.check(
            model.TAG.match(tag) is not None, f"options.tags[{i}]", "lower-case [a-z0-9_:-], 1-64"
        )
    v.check(len(options.import_key) <= MAX_KEY, "options.import_key", f"longer than {MAX_KEY}")
    v.check(len(options.file_name) <= MAX_KEY, "options.file_name", f"longer than {MAX_KEY}")
    v.raise_if_any()
    # What makes a repeat the same import: everything but the file name.
    same = imports_pb2.ImportOptions()
    same.CopyFrom(options)
    same.ClearField("file_name")
    same.format = fmt  # type: ignore[assignment]
    same.match = match  # type: ignore[assignment]
    return Plan(
        format=fmt,
        match=match,
        columns=dict(options.columns),
        consents=tuple(consents),
        tags=tuple(dict.fromkeys(options.tags)),
        import_key=options.import_key,
        file_name=options.file_name,
        options_hash=hashlib.sha256(same.SerializeToString(deterministic=True)).digest(),
    )


def check_header(plan: Plan, header: list[str]) -> list[str | int | None]:
    """The target of each CSV column; INVALID_ARGUMENT (the whole import) for a column that
    is nothing, a column given twice, or no e-mail column."""
    v = Validator()
    v.check(len(header) <= MAX_COLUMNS, "header", f"more than {MAX_COLUMNS} columns")
    targets = [plan.target(c) for c in header]
    for column, target in zip(header, targets, strict=True):
        v.check(
            target is not None,
            f"header[{column[:64]}]",
            "unknown column: map it with columns (options) or remove it",
        )
    v.check(len(set(header)) == len(header), "header", "a column is named twice")
    named = [t for t in targets if t is not None]
    v.check(len(set(named)) == len(named), "header", "two columns fill the same field")
    v.check("email" in targets, "header", "no column for email")
    if plan.match == imports_pb2.IMPORT_MATCH_EXTERNAL_ID:
        v.check("external_id" in targets, "header", "no column for external_id (match by it)")
    for c in plan.consents:
        v.check(c.column in header, f"header[{c.column[:64]}]", "consent column missing")
    v.raise_if_any()
    return targets


@dataclass
class Row:
    """One accepted row, in the shape of the staging table."""

    line: int
    email: str
    external_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    locale: str | None = None
    time_zone: str | None = None
    birthday: tuple[int, int, int] | None = None
    signed_up_at: datetime | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    vip: bool | None = None
    tags: list[str] = field(default_factory=list)
    score: int | None = None
    consents: list[int] = field(default_factory=list)  # per consent column: 0, 1 or 2

    def key(self, match: int) -> str:
        if match == imports_pb2.IMPORT_MATCH_EXTERNAL_ID:
            return self.external_id or ""
        return model.normalize_email(self.email)

    def record(self) -> tuple[object, ...]:
        b = self.birthday or (None, None, None)
        return (
            self.line,
            self.email.strip(),
            self.external_id,
            self.first_name,
            self.last_name,
            self.locale,
            self.time_zone,
            b[0] or None,
            b[1],
            b[2],
            self.signed_up_at,
            json.dumps(self.attributes) if self.attributes else "{}",
            self.vip,
            self.tags,
            self.score,
            self.consents,
        )


class _Bad(Exception):
    pass


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise _Bad("must be a string")


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).strip().lower()
    if text in GRANT:
        return True
    if text in WITHDRAW:
        return False
    raise _Bad("must be true or false")


def _birthday(value: object) -> tuple[int, int, int]:
    text = _text(value).strip()
    parts = text.split("-")
    try:
        if len(parts) == 3 and parts[0]:  # YYYY-MM-DD
            return int(parts[0]), int(parts[1]), int(parts[2])
        if len(parts) == 4 and parts[:2] == ["", ""]:  # --MM-DD (no year)
            return 0, int(parts[2]), int(parts[3])
        if len(parts) == 2:  # MM-DD
            return 0, int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise _Bad("a date YYYY-MM-DD, or --MM-DD without a year")


def _timestamp(value: object) -> datetime:
    try:
        parsed = datetime.fromisoformat(_text(value).strip())
    except ValueError as err:
        raise _Bad("an ISO 8601 time, e.g. 2026-03-01T10:00:00Z") from err
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _score(value: object) -> int:
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise _Bad("must be a whole number")
    try:
        number = int(value) if isinstance(value, int | float) else int(_text(value).strip())
    except ValueError as err:
        raise _Bad("must be a whole number") from err
    if isinstance(value, bool) or not -INT64 <= number <= INT64:
        raise _Bad("must be a whole number in 64 bits")
    return number


def _tags(value: object) -> list[str]:
    if isinstance(value, list):
        return [_text(t).strip() for t in value if t is not None and _text(t).strip()]
    return [t.strip() for t in _text(value).replace(";", ",").split(",") if t.strip()]


def _consent(value: object) -> int:
    if isinstance(value, bool):
        return model.ConsentStatus.GRANTED if value else model.ConsentStatus.WITHDRAWN
    text = _text(value).strip().lower()
    if text in GRANT:
        return model.ConsentStatus.GRANTED
    if text in WITHDRAW:
        return model.ConsentStatus.WITHDRAWN
    raise _Bad("true/yes/1/granted or false/no/0/withdrawn")


def _set(row: Row, target: str, value: object) -> None:
    if target.startswith(ATTRIBUTE_PREFIX):
        row.attributes[target[11:]] = _text(value)
    elif target == "birthday":
        row.birthday = _birthday(value)
    elif target == "signed_up_at":
        row.signed_up_at = _timestamp(value)
    elif target == "vip":
        row.vip = _bool(value)
    elif target == "tags":
        row.tags = _tags(value)
    elif target == "score":
        row.score = _score(value)
    else:
        setattr(row, target, _text(value))


def _column_of(violation_field: str, columns: Mapping[str, str]) -> str:
    """The file's column for a field path of the model (``contact.first_name`` -> the column
    that filled it)."""
    name = violation_field.removeprefix("contact.")
    base = name.split("[", 1)[0]
    if base == "attributes" and "[" in name:
        base = ATTRIBUTE_PREFIX + name.split("[", 1)[1].rstrip("]")
    return columns.get(base, name)


def prepare(
    plan: Plan,
    header: list[str] | None,
    targets: list[str | int | None] | None,
    record: Record,
    now: datetime,
) -> Row | list[Rejected]:
    """The row to upsert, or the reasons it is rejected (each with its column)."""
    row = Row(line=record.line, email="", consents=[0] * len(plan.consents))
    problems: list[Rejected] = []
    filled: dict[str, str] = {}  # field -> the column that filled it
    if isinstance(record.values, list):
        assert header is not None and targets is not None
        if len(record.values) != len(targets):
            return [
                Rejected(
                    record.line, "", f"{len(record.values)} cells, the header has {len(targets)}"
                )
            ]
        pairs: list[tuple[str, str | int | None, object]] = list(
            zip(header, targets, record.values, strict=True)
        )
    else:
        pairs = []
        for column, value in record.values.items():
            if column == "attributes" and isinstance(value, dict):
                pairs.extend((f"attributes.{k}", f"attributes.{k}", v) for k, v in value.items())
                continue
            target = plan.target(column)
            if target is None:
                problems.append(Rejected(record.line, column[:200], "unknown field"))
                continue
            pairs.append((column, target, value))
    for column, target, value in pairs:
        if value is None or value == "":
            continue
        try:
            if isinstance(target, int):
                row.consents[target] = _consent(value)
            elif target is not None:
                _set(row, target, value)
                filled[target] = column
        except _Bad as err:
            problems.append(Rejected(record.line, column[:200], str(err)))
    if problems:
        return problems
    if plan.match == imports_pb2.IMPORT_MATCH_EXTERNAL_ID and not row.external_id:
        return [
            Rejected(record.line, filled.get("email", "external_id"), "external_id is required")
        ]
    row.tags = list(dict.fromkeys([*row.tags, *plan.tags]))
    try:
        model.validate_new_contact(
            model.NewContact(
                email=row.email,
                external_id=row.external_id or "",
                first_name=row.first_name or "",
                last_name=row.last_name or "",
                locale=row.locale or "",
                time_zone=row.time_zone or "",
                birthday=row.birthday,
                signed_up_at=row.signed_up_at,
                attributes=row.attributes,
                vip=bool(row.vip),
                tags=row.tags,
                consent_source=model.ConsentSource.IMPORT,
            ),
            now,
        )
    except InvalidArgument as err:
        return [
            Rejected(record.line, _column_of(v.field, filled)[:200], v.description)
            for v in err.violations
        ]
    return row
