"""Segment definitions: the built-in ones (code) and the workspace's custom ones (the
``segments`` table), and their create, update, delete in one transaction each.

A custom segment's rule is stored as written (normalized, ``{"segment": id}`` references
kept) with the ids it references in ``depends_on``; a query inlines the references when it
compiles the rule, so a change to a referenced segment reaches every segment built on it.
Every change of definitions in a workspace takes that workspace's advisory lock first: two
concurrent updates cannot each pass the cycle check and make a cycle together, and
membership (:mod:`services.segmentation.membership`) sees every definition change in the
order they commit.

Names are unique in a workspace case-insensitively (``segments_name`` index on
``lower(name)``), among custom segments and the built-ins' names and ids alike, so that a
manager reading a list never sees two "VIP".
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.common import clock
from services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Validator,
)
from services.common.ids import is_uuid
from services.segmentation import membership
from services.segmentation.domain import builtins, rules

log = logging.getLogger(__name__)

MAX_NAME = 200
MAX_DESCRIPTION = 2000
MAX_ID = 200  # longer ids are refused before any lookup
UPDATABLE = ("name", "description", "rule")


@dataclass(frozen=True)
class Definition:
    """A segment as the API shows it: built-in (``created_at`` None) or custom."""

    id: str
    name: str
    built_in: bool
    description: str
    rule: object  # the rule document (normalized for custom segments)
    version: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None
    depends_on: tuple[str, ...] = ()

    @property
    def rule_text(self) -> str:
        return rule_json(self.rule)


def rule_json(doc: object) -> str:
    """A rule document as compact JSON text (what the API carries)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=_decimal)


def _decimal(value: object) -> object:
    if isinstance(value, Decimal):
        # An exact decimal stays exact: an integral one as an int, another as its float
        # (JSON numbers are decimal text; json cannot emit a Decimal itself).
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def load_rule(text: str) -> object:
    """A stored (jsonb) rule document back as Python values, decimals exact."""
    return json.loads(text, parse_float=Decimal)


def built_in(b: builtins.BuiltIn) -> Definition:
    return Definition(id=b.id, name=b.name, built_in=True, description=b.description, rule=b.rule)


def _custom(row: asyncpg.Record) -> Definition:
    return Definition(
        id=row["id"],
        name=row["name"],
        built_in=False,
        description=row["description"],
        rule=load_rule(row["rule"]),
        version=int(row["version"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        depends_on=tuple(row["depends_on"]),
    )


_COLUMNS = "id, name, description, rule::text AS rule, depends_on, version, created_at, updated_at"


async def custom_segments(conn: asyncpg.Connection, workspace_id: str) -> list[Definition]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM segments WHERE workspace_id = $1 ORDER BY lower(name), id",
        uuid.UUID(workspace_id),
    )
    return [_custom(r) for r in rows]


class Catalogue:
    """Every segment of one workspace, read once: what resolves ``{"segment": id}``
    references and what a query compiles. Custom segments are few (a manager's), so reading
    them all is cheaper than one read per reference."""

    def __init__(self, custom: Iterable[Definition]) -> None:
        self.custom = {d.id: d for d in custom}

    @classmethod
    async def load(cls, conn: asyncpg.Connection, workspace_id: str) -> Catalogue:
        return cls(await custom_segments(conn, workspace_id))

    def all(self) -> list[Definition]:
        """Built-ins first (in domain.md's order), then custom ones by name."""
        return [built_in(b) for b in builtins.BUILT_IN] + list(self.custom.values())

    def get(self, segment_id: str) -> Definition | None:
        b = builtins.BY_ID.get(segment_id)
        if b is not None:
            return built_in(b)
        return self.custom.get(segment_id)

    def resolver(self, overrides: dict[str, object] | None = None) -> Callable[[str], object]:
        docs: dict[str, object] = {i: d.rule for i, d in self.custom.items()}
        docs.update(overrides or {})
        return docs.get

    def compile(self, definition: Definition) -> rules.Node:
        """The definition's rule with its references inlined. A stored rule was valid when
        stored and every change since re-checked it, so an error here is a bug."""
        b = builtins.BY_ID.get(definition.id)
        if b is not None and definition.built_in:
            return b.node
        return rules.parse_rule(definition.rule, resolve=self.resolver())

    def parse_text(
        self, text: str, overrides: dict[str, object] | None = None
    ) -> tuple[rules.Node, object]:
        """An ad-hoc or new rule (JSON text), validated against this workspace's segments;
        InvalidArgument with one violation per rule violation (field: the rule path)."""
        try:
            return rules.parse_rule_text(text, resolve=self.resolver(overrides))
        except rules.RuleError as err:
            raise InvalidArgument(rule_violations(err)) from err


def rule_violations(err: rules.RuleError) -> list[FieldViolation]:
    return [FieldViolation(path, message) for path, message in err.violations] or [
        FieldViolation("rule", str(err) or "is not a valid rule")
    ]


def check_segment_id(segment_id: str, field: str = "segment_id") -> None:
    v = Validator()
    v.check(bool(segment_id), field, "is required")
    v.check(len(segment_id) <= MAX_ID, field, f"longer than {MAX_ID} characters")
    v.check("\x00" not in segment_id, field, "contains a NUL character")
    v.raise_if_any()


def not_found(segment_id: str) -> NotFound:
    return NotFound(f"segment {segment_id[:100]!r} not found")


async def list_segments(pool: asyncpg.Pool, workspace_id: str) -> list[Definition]:
    async with pool.acquire() as conn:
        return (await Catalogue.load(conn, workspace_id)).all()


async def get_segment(pool: asyncpg.Pool, workspace_id: str, segment_id: str) -> Definition:
    check_segment_id(segment_id)
    b = builtins.BY_ID.get(segment_id)
    if b is not None:
        return built_in(b)
    if not is_uuid(segment_id):
        raise not_found(segment_id)
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM segments WHERE workspace_id = $1 AND id = $2",
            uuid.UUID(workspace_id),
            segment_id,
        )
    if row is None:
        raise not_found(segment_id)
    return _custom(row)


def _check_name(v: Validator, name: str) -> None:
    v.check(bool(name.strip()), "name", "is required (and not only white space)")
    v.check(len(name) <= MAX_NAME, "name", f"longer than {MAX_NAME} characters")
    v.check("\x00" not in name, "name", "contains a NUL character")


def _check_description(v: Validator, description: str) -> None:
    v.check(
        len(description) <= MAX_DESCRIPTION,
        "description",
        f"longer than {MAX_DESCRIPTION} characters",
    )
    v.check("\x00" not in description, "description", "contains a NUL character")


def _builtin_name_clash(name: str) -> bool:
    folded = name.lower()
    return any(folded in (b.id.lower(), b.name.lower()) for b in builtins.BUILT_IN)


async def _lock(conn: asyncpg.Connection, workspace_id: str) -> None:
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('segments:' || $1, 0))", workspace_id
    )


def _parse_rule_field(v: Validator, catalogue: Catalogue, text: str, overrides: Any = None) -> Any:
    """(node, normalized document) of a request's rule text, or None with its violations
    added to ``v``."""
    if not text:
        v.check(False, "rule", "is required")
        return None
    try:
        return catalogue.parse_text(text, overrides)
    except InvalidArgument as err:
        v.violations.extend(err.violations)
        return None


async def create_segment(
    pool: asyncpg.Pool, workspace_id: str, name: str, description: str, rule_text: str
) -> Definition:
    v = Validator()
    _check_name(v, name)
    _check_description(v, description)
    now = clock.now()
    segment_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn, workspace_id)
        catalogue = await Catalogue.load(conn, workspace_id)
        parsed = _parse_rule_field(v, catalogue, rule_text)
        v.raise_if_any()
        node, doc = parsed
        if _builtin_name_clash(name):
            raise AlreadyExists(f"a built-in segment is named {name!r}")
        depends_on = sorted(rules.referenced_segments(doc))
        try:
            row = await conn.fetchrow(
                "INSERT INTO segments (workspace_id, id, name, description, rule, depends_on,"
                " version, created_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5::jsonb, $6, 1, $7, $7)"
                f" RETURNING {_COLUMNS}",
                uuid.UUID(workspace_id),
                segment_id,
                name,
                description,
                rule_json(doc),
                depends_on,
                now,
            )
        except asyncpg.UniqueViolationError as err:
            raise AlreadyExists(f"a segment named {name!r} exists already") from err
        await membership.on_segment_created(conn, workspace_id, segment_id, node, 1, now)
    return _custom(row)


async def update_segment(
    pool: asyncpg.Pool,
    workspace_id: str,
    segment_id: str,
    *,
    paths: list[str],
    name: str,
    description: str,
    rule_text: str,
    expected_version: int,
) -> Definition:
    check_segment_id(segment_id)
    if segment_id in builtins.BY_ID:
        raise FailedPrecondition(f"built-in segment {segment_id!r} cannot be changed")
    v = Validator()
    v.check(bool(paths), "update_mask", "is required: name, description, rule")
    for i, path in enumerate(paths):
        v.check(path in UPDATABLE, f"update_mask.paths[{i}]", f"unknown path {path[:100]!r}")
    v.check(len(set(paths)) == len(paths), "update_mask", "names a path twice")
    v.check(expected_version >= 0, "expected_version", "must not be negative")
    if "name" in paths:
        _check_name(v, name)
    if "description" in paths:
        _check_description(v, description)
    v.raise_if_any()
    if not is_uuid(segment_id):
        raise not_found(segment_id)
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn, workspace_id)
        catalogue = await Catalogue.load(conn, workspace_id)
        current = catalogue.custom.get(segment_id)
        if current is None:
            raise not_found(segment_id)
        if expected_version and expected_version != current.version:
            raise Aborted(
                f"segment is at version {current.version}, not {expected_version}: read it again"
            )
        node: rules.Node | None = None
        doc = current.rule
        if "rule" in paths:
            # The segment itself resolves to its new rule: a reference back to it (directly
            # or through others) is inlined into itself, a cycle the parser names.
            overrides = {segment_id: _raw(rule_text)}
            parsed = _parse_rule_field(v, catalogue, rule_text, overrides)
            if parsed is not None:
                node, doc = parsed
                _check_dependents(v, catalogue, segment_id, {segment_id: doc})
            v.raise_if_any()
        new_name = name if "name" in paths else current.name
        if "name" in paths and _builtin_name_clash(new_name):
            raise AlreadyExists(f"a built-in segment is named {new_name!r}")
        try:
            row = await conn.fetchrow(
                "UPDATE segments SET name = $3, description = $4, rule = $5::jsonb,"
                " depends_on = $6, version = version + 1, updated_at = $7"
                f" WHERE workspace_id = $1 AND id = $2 RETURNING {_COLUMNS}",
                uuid.UUID(workspace_id),
                segment_id,
                new_name,
                description if "description" in paths else current.description,
                rule_json(doc),
                sorted(rules.referenced_segments(doc)),
                now,
            )
        except asyncpg.UniqueViolationError as err:
            raise AlreadyExists(f"a segment named {new_name!r} exists already") from err
        updated = _custom(row)
        if node is None:
            node = catalogue.compile(current)
        await membership.on_segment_updated(
            conn, workspace_id, segment_id, node, updated.version, now
        )
    return updated


def _raw(text: str) -> object:
    """The JSON document of ``text`` as written (None when it is not JSON: the parser then
    reports that)."""
    try:
        return json.loads(text, parse_float=Decimal)
    except (ValueError, RecursionError):
        return None


def _check_dependents(
    v: Validator, catalogue: Catalogue, segment_id: str, overrides: dict[str, object]
) -> None:
    """Every segment that references ``segment_id`` (directly or not) must stay valid with
    its new rule inlined (depth and size limits after inlining)."""
    resolve = catalogue.resolver(overrides)
    for other in catalogue.custom.values():
        if other.id == segment_id or not _reaches(catalogue, other.id, segment_id):
            continue
        try:
            rules.parse_rule(other.rule, resolve=resolve)
        except rules.RuleError as err:
            first = err.violations[0][1] if err.violations else str(err)
            v.check(
                False,
                "rule",
                f"segment {other.name!r} references this one and would become invalid: {first}",
            )


def _reaches(catalogue: Catalogue, start: str, target: str) -> bool:
    seen: set[str] = set()
    todo = [start]
    while todo:
        current = catalogue.custom.get(todo.pop())
        if current is None or current.id in seen:
            continue
        seen.add(current.id)
        if target in current.depends_on:
            return True
        todo.extend(current.depends_on)
    return False


async def delete_segment(
    pool: asyncpg.Pool, workspace_id: str, segment_id: str, expected_version: int
) -> None:
    check_segment_id(segment_id)
    v = Validator()
    v.check(expected_version >= 0, "expected_version", "must not be negative")
    v.raise_if_any()
    if segment_id in builtins.BY_ID:
        raise FailedPrecondition(f"built-in segment {segment_id!r} cannot be deleted")
    if not is_uuid(segment_id):
        raise not_found(segment_id)
    async with pool.acquire() as conn, conn.transaction():
        await _lock(conn, workspace_id)
        row = await conn.fetchrow(
            "SELECT version FROM segments WHERE workspace_id = $1 AND id = $2",
            uuid.UUID(workspace_id),
            segment_id,
        )
        if row is None:
            raise not_found(segment_id)
        if expected_version and expected_version != row["version"]:
            raise Aborted(
                f"segment is at version {row['version']}, not {expected_version}: read it again"
            )
        users = await conn.fetch(
            "SELECT name FROM segments WHERE workspace_id = $1 AND $2 = ANY(depends_on)"
            " ORDER BY lower(name)",
            uuid.UUID(workspace_id),
            segment_id,
        )
        if users:
            names = ", ".join(repr(r["name"]) for r in users[:10])
            raise FailedPrecondition(f"segment is referenced by {names}: change those first")
        await conn.execute(
            "DELETE FROM segments WHERE workspace_id = $1 AND id = $2",
            uuid.UUID(workspace_id),
            segment_id,
        )
        await membership.on_segment_deleted(conn, workspace_id, segment_id)


def validate_rule(catalogue: Catalogue, text: str) -> tuple[list[FieldViolation], object | None]:
    """ValidateRule: the violations as data, or the normalized document."""
    if not text:
        return [FieldViolation("rule", "is required")], None
    try:
        _, doc = catalogue.parse_text(text)
    except InvalidArgument as err:
        return err.violations, None
    return [], doc
