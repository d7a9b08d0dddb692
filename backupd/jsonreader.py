"""Reading a JSON v2.0 export back as a stream: table by table, row by row, in bounded memory.

Two layouts are read:

- backupd's own (`JsonDocumentWriter`): a header line, then one row per line. Read as bytes
  (`_LineLayoutReader`): blocks of whole rows are cut with one split each and handed over
  without being decoded or parsed here; whoever loads them (PostgreSQL, or backupd.copytext)
  checks them.
- any other valid JSON document (the Jarvis app's own export, pretty-printed or on one huge line):
  each row is found with the C JSON scanner, and its original text (never a re-serialisation, so
  numerics such as `12.50` stay exact) is passed on with raw newlines turned into spaces (a raw
  newline can only sit between tokens in valid JSON).

The top-level keys may come in any order. `version` must be one this release reads ("2.0"),
checked as soon as it is seen and again at the end; a document that ends early, holds trailing
garbage or is not valid JSON raises IntegrityError. The whole stream is always read to its end,
so a verifying stream below (sha256, size) has had its say before `read` returns.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, BinaryIO, Protocol

from backupd.errors import IntegrityError
from backupd.lines import MAX_LINE_BYTES, line_too_long

SUPPORTED_EXPORT_VERSIONS = ("2.0",)
READ_CHUNK = 1 << 20
BATCH_ROWS = 2000
_WHITESPACE = " \t\n\r"


class RowSink(Protocol):
    """Receives one table's rows: JSON objects as UTF-8 text, one per bytes, without newlines."""

    def write_rows(self, rows: list[bytes]) -> None:
        """Take a batch of rows."""
        ...

    def finish(self, keys: list[str]) -> None:
        """The table ended; `keys` are the column names its rows carried."""
        ...


@dataclass
class ExportDocument:
    """What the document said besides its rows."""

    version: str | None = None
    format: str | None = None
    incremental: bool = False
    since: str | None = None
    exported_at: str | None = None
    tables: list[str] = field(default_factory=list)
    record_count: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, list[Any]] = field(default_factory=dict)
    # per table, values its rows do not carry exactly: {"column", "key", "text"} (docs/restore.md)
    exact_values: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    # tables some of whose rows were not passed on byte for byte (raw newlines made spaces)
    altered: set[str] = field(default_factory=set)


TableHandler = Callable[[str], "RowSink | None"]


class _Skip:
    """Drains a table nobody wants."""

    def write_rows(self, rows: list[bytes]) -> None:
        return None

    def finish(self, keys: list[str]) -> None:
        return None


def check_version(version: object, where: str) -> str:
    """The export version if this release reads it; else IntegrityError."""
    if version not in SUPPORTED_EXPORT_VERSIONS:
        raise IntegrityError(
            f"{where}: export version {version!r} is not one this backupd reads "
            f"({', '.join(SUPPORTED_EXPORT_VERSIONS)})",
            "upgrade backupd to restore this export",
        )
    return str(version)


def apply_field(doc: ExportDocument, key: str, value: Any, where: str) -> None:
    """Take one top-level field of an export (other than "data") into `doc`."""
    if key == "version":
        doc.version = check_version(value, where)
    elif key == "format":
        doc.format = str(value) if value is not None else None
    elif key == "incremental":
        doc.incremental = bool(value)
    elif key == "since":
        doc.since = str(value) if value is not None else None
    elif key == "exportedAt":
        doc.exported_at = str(value) if value is not None else None
    elif key == "tables" and isinstance(value, list):
        doc.tables = [str(t) for t in value]
    elif key == "recordCount" and isinstance(value, dict):
        doc.record_count = {str(k): int(v) for k, v in value.items() if isinstance(v, int)}
    elif key == "deleted":
        if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
            raise IntegrityError(f"{where}: \"deleted\" must map each table to a list of keys")
        doc.deleted = {str(k): list(v) for k, v in value.items()}
    elif key == "exactValues":
        doc.exact_values = _exact_values(value, where)


def _exact_values(value: Any, where: str) -> dict[str, list[dict[str, Any]]]:
    """The `exactValues` field, checked: per table, objects with a string `column`, an object
    `key` and a string `text`."""
    if isinstance(value, dict) and all(isinstance(v, list) for v in value.values()):
        entries = {str(k): list(v) for k, v in value.items()}
        if all(isinstance(e, dict) and isinstance(e.get("column"), str) and isinstance(e.get("key"), dict)
               and isinstance(e.get("text"), str) for v in entries.values() for e in v):
            return entries
    raise IntegrityError(f"{where}: \"exactValues\" must map each table to a list of "
                         "{\"column\", \"key\", \"text\"} objects")


class ExportReader:
    """Streams one export document; `read(handler)` calls `handler(table)` for each table's rows."""

    def __init__(self, stream: BinaryIO, where: str) -> None:
        self._stream = stream
        self._where = where
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._json = json.JSONDecoder()
        self._pending = b""
        self.document = ExportDocument()

    # -- buffer -----------------------------------------------------------------------------

    def _fill(self, at_least: int = READ_CHUNK) -> bool:
        """Read more text; False at end of stream."""
        if self._eof:
            return False
        if self._pos > (1 << 20) and self._pos > len(self._buf) // 2:
            self._buf = self._buf[self._pos:]
            self._pos = 0
        if len(self._buf) - self._pos > MAX_LINE_BYTES:
            # one value (a row) longer than any backupd writes: a forged or damaged file
            raise line_too_long(self._where)
        if self._pending:
            data, self._pending = self._pending, b""
        else:
            data = self._stream.read(max(at_least, READ_CHUNK))
        try:
            if not data:
                self._eof = True
                self._buf += self._decoder.decode(b"", final=True)
                return False
            self._buf += self._decoder.decode(data)
        except UnicodeDecodeError:
            raise IntegrityError(f"{self._where}: not UTF-8 text") from None
        return True

    def _peek(self) -> str:
        """The next non-whitespace character ("" at end of stream), not consumed."""
        while True:
            buf = self._buf
            pos = self._pos
            while pos < len(buf) and buf[pos] in _WHITESPACE:
                pos += 1
            self._pos = pos
            if pos < len(buf):
                return buf[pos]
            if not self._fill():
                return ""

    def _expect(self, chars: str) -> str:
        found = self._peek()
        if not found or found not in chars:
            self._malformed(f"expected {' or '.join(repr(c) for c in chars)}")
        self._pos += 1
        return found

    def _malformed(self, what: str) -> None:
        if self._eof and self._pos >= len(self._buf):
            raise IntegrityError(f"{self._where}: the JSON document ends early (truncated)")
        raise IntegrityError(f"{self._where}: not a valid JSON export ({what} at character "
                             f"{self._pos} of the current block)")

    def _value(self) -> tuple[Any, int, int]:
        """Decode the next JSON value; returns it with its start and end in the buffer."""
        self._peek()
        while True:
            start = self._pos
            try:
                value, end = self._json.raw_decode(self._buf, start)
            except json.JSONDecodeError as exc:
                if self._fill(len(self._buf) - start):
                    continue
                if self._eof:
                    raise IntegrityError(f"{self._where}: the JSON document is truncated or malformed "
                                         f"({exc.msg})") from None
                raise
            # a number or literal that ends the buffer may continue in the next block
            if end >= len(self._buf) and not self._eof and self._fill():
                continue
            self._pos = end
            return value, start, end

    # -- document ---------------------------------------------------------------------------

    def read(self, handler: TableHandler) -> ExportDocument:
        """Read the whole document to its end; returns its fields. Raises IntegrityError."""
        head = _read_head(self._stream)
        lines = _LineLayoutReader.start(head, self._stream, self._where)
        if lines is not None:
            self.document = lines.read(handler)
            return self.document
        self._pending = head
        self._expect("{")
        if self._peek() == "}":
            self._pos += 1
        else:
            while True:
                key, _, _ = self._value()
                if not isinstance(key, str):
                    self._malformed("expected a key")
                self._expect(":")
                if key == "data":
                    self._data(handler)
                else:
                    value, _, _ = self._value()
                    self._field(key, value)
                if self._expect(",}") == "}":
                    break
        if self._peek() != "":
            self._malformed("unexpected text after the document")
        doc = self.document
        if doc.version is None:
            raise IntegrityError(f"{self._where}: not a JSON v2.0 export (no \"version\")")
        return doc

    def _field(self, key: str, value: Any) -> None:
        apply_field(self.document, key, value, self._where)

    def _data(self, handler: TableHandler) -> None:
        self._expect("{")
        if self._peek() == "}":
            self._pos += 1
            return
        while True:
            table, _, _ = self._value()
            if not isinstance(table, str):
                self._malformed("expected a table name")
            self._expect(":")
            self._expect("[")
            sink = handler(table) or _Skip()
            keys = self._rows(table, sink)
            sink.finish(keys)
            if self._expect(",}") == "}":
                return

    def _rows(self, table: str, sink: RowSink) -> list[str]:
        """Stream one table's array (its '[' already consumed) into `sink`; returns the row keys."""
        count = 0
        keys: dict[str, None] = {}
        batch: list[bytes] = []
        if self._peek() == "]":
            self._pos += 1
        else:
            while True:
                value, start, end = self._value()
                if not isinstance(value, dict):
                    raise IntegrityError(f"{self._where}: table {table!r} holds a row that is not an object")
                keys.update(dict.fromkeys(value))
                text = self._buf[start:end]
                if "\n" in text or "\r" in text:
                    text = text.replace("\n", " ").replace("\r", " ")
                    self.document.altered.add(table)
                batch.append(text.encode())
                count += 1
                if len(batch) >= BATCH_ROWS:
                    sink.write_rows(batch)
                    batch = []
                if self._expect(",]") == "]":
                    break
        if batch:
            sink.write_rows(batch)
        self.document.rows[table] = self.document.rows.get(table, 0) + count
        return list(keys)


# -- backupd's own layout, read as bytes -----------------------------------------------------------

_HEAD_LIMIT = 1 << 20
_DATA_LINE = b'"data": {'
_TABLE_LINE = re.compile(rb'("(?:[^"\\]|\\.)*"): \[(\]?,?)')


def _read_head(stream: BinaryIO) -> bytes:
    """The document's first two lines (or its first MiB, or all of a shorter one)."""
    head = b""
    while head.count(b"\n") < 2 and len(head) < _HEAD_LIMIT:
        data = stream.read(READ_CHUNK)
        if not data:
            break
        head += data
    return head


class _LineLayoutReader:
    """The layout `JsonDocumentWriter` writes, read as bytes without decoding: a header line,
    `"data": {`, then per table a `"name": [` line, one row per line, and `]`; then `deleted` and
    `recordCount` on a line each. Blocks of whole rows are cut with one split each and go to the
    sinks as they are (PostgreSQL checks the UTF-8 and the JSON as it loads them). Once the head
    has matched, any other layout is a damaged document."""

    def __init__(self, stream: BinaryIO, where: str, document: ExportDocument, buffer: bytes) -> None:
        self._stream = stream
        self._where = where
        self.document = document
        self._buf = buffer
        self._pos = 0
        self._eof = False

    @classmethod
    def start(cls, head: bytes, stream: BinaryIO, where: str) -> _LineLayoutReader | None:
        """A reader when `head` opens backupd's layout, else None (nothing of it consumed)."""
        first, _, rest = head.partition(b"\n")
        second, _, rest = rest.partition(b"\n")
        if not (first.startswith(b'{"version": ') and first.endswith(b",") and second == _DATA_LINE):
            return None
        try:
            header = json.loads(first[:-1] + b"}")
        except ValueError:
            return None
        if not isinstance(header, dict):
            return None
        document = ExportDocument()
        for key, value in header.items():
            apply_field(document, str(key), value, where)
        if document.version is None:
            return None
        return cls(stream, where, document, rest)

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._stream.read(READ_CHUNK)
        if not data:
            self._eof = True
            return False
        self._buf = self._buf[self._pos:] + data
        self._pos = 0
        return True

    def _line(self) -> bytes:
        while True:
            end = self._buf.find(b"\n", self._pos)
            if end >= 0:
                line = self._buf[self._pos:end]
                self._pos = end + 1
                return line
            if len(self._buf) - self._pos > MAX_LINE_BYTES:
                raise line_too_long(self._where)
            if not self._fill():
                raise IntegrityError(f"{self._where}: the JSON document ends early (truncated)")

    def _malformed(self, line: bytes) -> IntegrityError:
        return IntegrityError(f"{self._where}: not a valid JSON export (unexpected line {line[:40]!r})")

    def read(self, handler: TableHandler) -> ExportDocument:
        """Read the rest of the document; returns its fields. Raises IntegrityError."""
        doc = self.document
        while True:
            line = self._line()
            if line == b"},":
                break
            match = _TABLE_LINE.fullmatch(line)
            if match is None:
                raise self._malformed(line)
            table = json.loads(match.group(1))
            sink = handler(table) or _Skip()
            keys: dict[str, None] = {}
            count = 0 if match.group(2).startswith(b"]") else self._rows(sink, keys)
            sink.finish(list(keys))
            doc.rows[table] = doc.rows.get(table, 0) + count
        line = self._line()
        for name in ("deleted", "exactValues", "recordCount"):
            prefix = f'"{name}": '.encode()
            if name == "exactValues" and not line.startswith(prefix):
                continue  # written only when some table has entries
            if not line.startswith(prefix):
                raise self._malformed(line)
            # each ends with the comma before the next field, recordCount with the document's brace
            text = line[len(prefix):-1]
            try:
                # exactValues are checksummed as written: their numbers stay Decimal
                value = json.loads(text, parse_float=Decimal) if name == "exactValues" else json.loads(text)
            except ValueError:
                raise self._malformed(line) from None
            apply_field(doc, name, value, self._where)
            if name != "recordCount":
                line = self._line()
        while self._fill():
            pass
        if self._buf[self._pos:].strip():
            raise IntegrityError(f"{self._where}: not a valid JSON export (unexpected text after the document)")
        return doc

    def _rows(self, sink: RowSink, keys: dict[str, None]) -> int:
        """One table's rows up to its closing `]`; returns how many."""
        count = 0

        def emit(rows: list[bytes]) -> None:
            if not keys:
                try:
                    keys.update(dict.fromkeys(json.loads(rows[0])))
                except (ValueError, TypeError):
                    raise self._malformed(rows[0]) from None
            sink.write_rows(rows)

        while True:
            end = self._buf.rfind(b"\n", self._pos)
            block = self._buf[self._pos:end] if end > self._pos else b""
            rows: list[bytes] = []
            closing = -1
            if block.endswith(b","):
                rows = block[:-1].split(b",\n")
                if block.count(b"\n") != len(rows) - 1:
                    rows = []
            if not rows and block:
                closing = block.find(b"\n]")
                if closing >= 0:
                    rows = block[:closing].split(b",\n")  # the table's last row has no comma
                    if block.count(b"\n", 0, closing) != len(rows) - 1:
                        rows = []
            if rows and rows[0].startswith(b"{") and rows[-1].endswith(b"}"):
                # the common case: a block of whole rows, one per line, each followed by a comma
                emit(rows)
                count += len(rows)
                self._pos += (closing + 1) if closing >= 0 else len(block) + 1
                if closing < 0:
                    continue
            else:
                # a line longer than what is buffered, or a damaged one
                line = self._line()
                if not line.startswith(b"{"):
                    raise self._malformed(line)
                if line.endswith(b"},"):
                    emit([line[:-1]])
                    count += 1
                    continue
                if not line.endswith(b"}"):
                    raise self._malformed(line)
                emit([line])
                count += 1
            closing_line = self._line()
            if closing_line not in (b"]", b"],"):
                raise self._malformed(closing_line)
            return count

