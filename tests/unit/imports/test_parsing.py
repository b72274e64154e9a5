"""The incremental readers: records and their lines are the same however the bytes are cut,
and hostile input (NUL, bad UTF-8, a huge line, broken quoting) costs only its own row."""

from __future__ import annotations

import pytest

from services.contacts.imports.parsing import CsvReader, NdjsonReader, Record, Rejected

CSV = (
    (
        "\ufeffemail,first_name\r\n"
        'a@x.io,"An\nna"\r\n'  # 2-3
        "\r\n"  # 4: blank
        "b@x.io,Bob\r\n"  # 5
        '"bad"x,1\n'  # 6
        "c@x.io,\x00\n"  # 7
    ).encode()
    + b"d@x.io,\xff\n"
    + b"e@x.io,"
    + b"z" * 500
    + b"\nf@x.io,F"
)  # 8, 9, 10


def read(reader: CsvReader | NdjsonReader, data: bytes, size: int) -> list[Record | Rejected]:
    out: list[Record | Rejected] = []
    for i in range(0, len(data), size):
        out += reader.feed(data[i : i + size])
    return out + reader.close()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 100_000])
def test_csv_records_and_lines_do_not_depend_on_where_chunks_are_cut(size: int) -> None:
    reader = CsvReader(max_record_bytes=100)
    out = read(reader, CSV, size)
    assert reader.header == ["email", "first_name"]
    assert [(type(r).__name__, r.line) for r in out] == [
        ("Record", 2),
        ("Record", 5),
        ("Rejected", 6),
        ("Rejected", 7),
        ("Rejected", 8),
        ("Rejected", 9),
        ("Record", 10),
    ]
    assert out[0] == Record(2, ["a@x.io", "An\nna"])
    reasons = [r.reason for r in out if isinstance(r, Rejected)]
    assert reasons[0].startswith("malformed CSV")
    assert reasons[1] == "contains a NUL byte"
    assert "invalid UTF-8" in reasons[2]
    assert reasons[3] == "record longer than 100 bytes"


def test_a_huge_line_is_never_held_whole() -> None:
    reader = CsvReader(max_record_bytes=1024)
    reader.feed(b"email\n")
    for _ in range(100):
        assert reader.feed(b"y" * 10_000) == []
        assert len(reader._framer._tail) <= 1024
    out = reader.feed(b"\nok@x.io\n")
    assert out == [Rejected(2, "", "record longer than 1024 bytes"), Record(3, ["ok@x.io"])]


def test_an_unterminated_quote_at_the_end_is_a_rejected_row() -> None:
    out = read(CsvReader(), b'email\n"a@x.io\n', 3)
    assert len(out) == 1 and isinstance(out[0], Rejected) and out[0].line == 2


def test_a_bad_header_is_reported() -> None:
    reader = CsvReader()
    reader.feed(b"em\xffail\nx@y.io\n")
    assert reader.header is None and reader.header_error is not None
    assert "line 1" in reader.header_error


@pytest.mark.parametrize("size", [1, 5, 1000])
def test_ndjson_lines(size: int) -> None:
    data = b'{"email":"a@b.c"}\n\n[1]\n{bad\n{"x":"\xff"}\n{"x":1}'
    out = read(NdjsonReader(), data, size)
    assert [(type(r).__name__, r.line) for r in out] == [
        ("Record", 1),
        ("Rejected", 3),
        ("Rejected", 4),
        ("Rejected", 5),
        ("Record", 6),
    ]
    assert out[1] == Rejected(3, "", "not a JSON object")
