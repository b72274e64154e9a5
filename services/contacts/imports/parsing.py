"""Incremental readers of an import file: bytes in (chunks cut anywhere), records out, with
the 1-based line where each starts. Pure: no I/O.

Framing is done on bytes, before decoding, so that one bad record costs only itself:
- a record ends at a newline outside quotes. In RFC 4180 CSV a newline is inside a quoted
  field exactly when the record so far holds an odd number of ``"`` (a doubled quote
  counts twice), so counting quotes per physical line finds the record ends without
  parsing; the csv module then parses each complete record. NDJSON records are lines.
- each record is decoded as UTF-8 on its own: invalid UTF-8 rejects that record, with its
  line, instead of the whole stream (an incremental decoder raises for a whole chunk).
- a record longer than :data:`MAX_RECORD_BYTES` is rejected and skipped while it streams
  (a 10 MB line never sits in memory), and so is one holding a NUL byte.
The reader never holds more than one chunk plus one record.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass

MAX_RECORD_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Record:
    """A record of the file: the CSV row's cells or the JSON object, and where it starts."""

    line: int
    values: list[str] | dict[str, object]


@dataclass(frozen=True)
class Rejected:
    line: int
    field: str
    reason: str


class _Framer:
    """Cuts bytes into records (``quoted``: CSV quote-aware framing, else one per line)."""

    def __init__(self, quoted: bool, max_record_bytes: int) -> None:
        self._quoted = quoted
        self._max = max_record_bytes
        self._tail = b""  # an incomplete physical line
        self._parts: list[bytes] = []  # the lines of an open (quoted) record
        self._size = 0
        self._odd = False  # an odd number of quotes so far in the open record
        self._start = 1  # line where the open record starts
        self._line = 0  # physical lines complete so far
        self._oversized = False
        self._first = True

    def feed(self, chunk: bytes) -> Iterator[tuple[int, bytes | None]]:
        """Complete records in ``chunk``: ``(line, bytes)``, or ``(line, None)`` for a record
        over the limit (rejected, its bytes dropped)."""
        if self._first and chunk:
            data = self._tail + chunk
            if len(data) < len(_BOM) and _BOM.startswith(data):
                self._tail = data
                return
            self._first = False
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        else:
            data = self._tail + chunk if self._tail else chunk
        lines = data.split(b"\n")
        tail = lines.pop()
        for line in lines:
            yield from self._line_done(line)
        self._tail = b""
        self._grow(tail)

    def _grow(self, tail: bytes) -> None:
        """Keep the incomplete line unless the record is already over the limit."""
        if self._oversized:
            if self._quoted:
                self._odd ^= bool(tail.count(b'"') & 1)
            return
        if self._size + len(tail) > self._max:
            self._oversized = True
            self._parts = []
            if self._quoted:
                self._odd ^= bool(tail.count(b'"') & 1)
            return
        self._tail = tail

    def _line_done(self, line: bytes, *, final: bool = False) -> Iterator[tuple[int, bytes | None]]:
        self._line += 1
        if self._quoted:
            self._odd ^= bool(line.count(b'"') & 1)
        if not self._oversized:
            self._size += len(line) + 1
            if self._size > self._max + 1:
                self._oversized = True
                self._parts = []
            else:
                self._parts.append(line)
        if self._quoted and self._odd and not final:
            return  # a newline inside a quoted field: the record goes on
        self._odd = False
        start = self._start
        self._start = self._line + 1
        if self._oversized:
            self._oversized = False
            self._size = 0
            yield start, None
            return
        parts, self._parts, self._size = self._parts, [], 0
        yield start, parts[0] if len(parts) == 1 else b"\n".join(parts)

    def close(self) -> Iterator[tuple[int, bytes | None]]:
        """The last record, when the file does not end with a newline."""
        if self._tail or self._parts or self._oversized:
            tail, self._tail = self._tail, b""
            # An unterminated quote ends with the file: the csv module reports it.
            yield from self._line_done(tail, final=True)


def _decode(line: int, raw: bytes | None, limit: int) -> str | Rejected:
    if raw is None:
        return Rejected(line, "", f"record longer than {limit} bytes")
    if b"\x00" in raw:
        return Rejected(line, "", "contains a NUL byte")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return Rejected(line, "", f"invalid UTF-8 at byte {err.start} of the record")
    return text[:-1] if text.endswith("\r") else text


class CsvReader:
    """RFC 4180 CSV, UTF-8 (a BOM is skipped), first record = header."""

    def __init__(self, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        self._framer = _Framer(quoted=True, max_record_bytes=max_record_bytes)
        self._limit = max_record_bytes
        self.header: list[str] | None = None
        self.header_error: str | None = None

    def feed(self, chunk: bytes) -> list[Record | Rejected]:
        return self._parse(list(self._framer.feed(chunk)))

    def close(self) -> list[Record | Rejected]:
        return self._parse(list(self._framer.close()))

    def _parse(self, framed: list[tuple[int, bytes | None]]) -> list[Record | Rejected]:
        out: list[Record | Rejected] = []
        texts: list[tuple[int, str]] = []
        for line, raw in framed:
            decoded = _decode(line, raw, self._limit)
            if isinstance(decoded, Rejected):
                if self.header is None and self.header_error is None and not texts:
                    self.header_error = f"line {line}: {decoded.reason}"
                out.append(decoded)
            elif decoded:  # blank lines carry nothing
                texts.append((line, decoded))
        if not texts:
            return out
        try:
            rows = list(csv.reader([t for _, t in texts], strict=True))
            if len(rows) != len(texts):
                raise csv.Error("record count mismatch")
            parsed: list[list[str] | Rejected] = list(rows)
        except csv.Error:
            parsed = [self._one(line, text) for line, text in texts]
        for (line, _), row in zip(texts, parsed, strict=True):
            if isinstance(row, Rejected):
                out.append(row)
            elif self.header is None and self.header_error is None:
                self.header = [c.strip() for c in row]
            else:
                out.append(Record(line, row))
        out.sort(key=lambda r: r.line)
        return out

    @staticmethod
    def _one(line: int, text: str) -> list[str] | Rejected:
        try:
            return next(csv.reader([text], strict=True), [])
        except csv.Error as err:
            return Rejected(line, "", f"malformed CSV: {err}")


class NdjsonReader:
    """One JSON object per line, UTF-8; blank lines are skipped."""

    header: list[str] | None = None
    header_error: str | None = None

    def __init__(self, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        self._framer = _Framer(quoted=False, max_record_bytes=max_record_bytes)
        self._limit = max_record_bytes

    def feed(self, chunk: bytes) -> list[Record | Rejected]:
        return self._parse_all(self._framer.feed(chunk))

    def close(self) -> list[Record | Rejected]:
        return self._parse_all(self._framer.close())

    def _parse_all(self, framed: Iterator[tuple[int, bytes | None]]) -> list[Record | Rejected]:
        out: list[Record | Rejected] = []
        for line, raw in framed:
            if raw is None or raw.strip():
                out.append(self._parse(line, raw))
        return out

    def _parse(self, line: int, raw: bytes | None) -> Record | Rejected:
        decoded = _decode(line, raw, self._limit)
        if isinstance(decoded, Rejected):
            return decoded
        try:
            value = json.loads(decoded)
        except ValueError as err:
            return Rejected(line, "", f"malformed JSON: {err}")
        if not isinstance(value, dict):
            return Rejected(line, "", "not a JSON object")
        return Record(line, value)
