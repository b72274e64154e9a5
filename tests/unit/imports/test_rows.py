"""From a record to a row to upsert: the column mapping, conversions, consent cells, and
the CreateContact rules, reported with the file's column."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from nudge.contacts.v1 import contacts_pb2, imports_pb2

from services.common.errors import InvalidArgument
from services.contacts.imports.parsing import Record, Rejected
from services.contacts.imports.rows import Row, check_header, plan_from_options, prepare

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_mapped_and_same_named_columns_fill_their_fields() -> None:
    p = plan_from_options(
        imports_pb2.ImportOptions(
            format=imports_pb2.IMPORT_FORMAT_CSV,
            columns={"Mail": "email", "Stadt": "attributes.city"},
            consent_columns=[
                imports_pb2.ConsentColumn(
                    column="news", purpose=contacts_pb2.CONSENT_PURPOSE_MARKETING
                )
            ],
            tags=["imported"],
        )
    )
    header = ["Mail", "Stadt", "First_Name", "tags", "vip", "score", "news", "signed_up_at"]
    targets = check_header(p, header)
    values = ["A@x.io", "Rome", "Ada", "b; a", "yes", "-3", "no", "2026-01-02T03:04:05"]
    row = prepare(p, header, targets, Record(2, values), NOW)
    assert isinstance(row, Row)
    assert (row.email, row.first_name, row.attributes) == ("A@x.io", "Ada", {"city": "Rome"})
    assert row.tags == ["b", "a", "imported"] and row.vip is True and row.score == -3
    assert row.consents == [2]  # WITHDRAWN
    assert row.signed_up_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_the_create_contact_rules_reject_a_row_with_the_files_column() -> None:
    p = plan_from_options(
        imports_pb2.ImportOptions(
            format=imports_pb2.IMPORT_FORMAT_CSV, columns={"Mail": "email", "TZ": "time_zone"}
        )
    )
    header = ["Mail", "TZ", "birthday"]
    targets = check_header(p, header)
    out = prepare(p, header, targets, Record(7, ["nope", "Mars/Base", "2023-02-30"]), NOW)
    assert isinstance(out, list)
    assert {(r.line, r.field) for r in out} == {(7, "Mail"), (7, "TZ"), (7, "birthday")}


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("vip", "maybe", "must be true or false"),
        ("score", "1.5", "must be a whole number"),
        ("birthday", "yesterday", "a date YYYY-MM-DD, or --MM-DD without a year"),
        ("signed_up_at", "soon", "an ISO 8601 time, e.g. 2026-03-01T10:00:00Z"),
    ],
)
def test_wrong_types_are_rejected_with_their_column(column: str, value: str, reason: str) -> None:
    p = plan_from_options(imports_pb2.ImportOptions(format=imports_pb2.IMPORT_FORMAT_CSV))
    header = ["email", column]
    out = prepare(p, header, check_header(p, header), Record(3, ["a@x.io", value]), NOW)
    assert out == [Rejected(3, column, reason)]


def test_ndjson_unknown_keys_and_wrong_types_are_rejected_per_row() -> None:
    p = plan_from_options(imports_pb2.ImportOptions(format=imports_pb2.IMPORT_FORMAT_NDJSON))
    out = prepare(p, None, None, Record(4, {"email": "a@x.io", "shoe": 4, "first_name": [1]}), NOW)
    assert out == [
        Rejected(4, "shoe", "unknown field"),
        Rejected(4, "first_name", "must be a string"),
    ]
    row = prepare(
        p, None, None, Record(5, {"email": "a@x.io", "attributes": {"n": 3}, "tags": ["x"]}), NOW
    )
    assert isinstance(row, Row) and row.attributes == {"n": "3"} and row.tags == ["x"]


def test_options_are_checked_all_at_once() -> None:
    with pytest.raises(InvalidArgument) as err:
        plan_from_options(
            imports_pb2.ImportOptions(
                columns={"a": "email", "b": "email", "c": "password"},
                tags=["Not OK"],
                import_key="k" * 201,
            )
        )
    fields = {v.field for v in err.value.violations}
    assert {"options.format", "options.columns", "options.columns[c]", "options.tags[0]"} <= fields
    assert "options.import_key" in fields


def test_the_header_must_name_known_columns_and_an_email() -> None:
    p = plan_from_options(imports_pb2.ImportOptions(format=imports_pb2.IMPORT_FORMAT_CSV))
    with pytest.raises(InvalidArgument) as err:
        check_header(p, ["first_name", "first_name", "password"])
    fields = {v.field for v in err.value.violations}
    assert fields == {"header[password]", "header"}


def test_a_repeat_is_the_same_import_only_with_the_same_options() -> None:
    a = plan_from_options(imports_pb2.ImportOptions(file_name="a.csv", tags=["x"], import_key="k"))
    b = plan_from_options(
        imports_pb2.ImportOptions(
            format=imports_pb2.IMPORT_FORMAT_CSV, file_name="b.csv", tags=["x"], import_key="k"
        )
    )
    c = plan_from_options(imports_pb2.ImportOptions(file_name="a.csv", tags=["y"], import_key="k"))
    assert a.options_hash == b.options_hash != c.options_hash
