"""Reading a JSON v2.0 export back as a stream: table by table, row by row, in bounded memory.

Two layouts are read:

- backupd's own (`JsonDocumentWriter`): one row per line. Rows are cut at newlines without being
  parsed in Python; PostgreSQL parses them when they are staged.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from backupd.errors import IntegrityError

SUPPORTED_EXPORT_VERSIONS = ("2.0",)
READ_CHUNK = 1 << 20
BATCH_ROWS = 2000
_WHITESPACE = " \t\n\r"


class RowSink(Protocol):
    """Receives one table's rows: JSON objects as text, one per string, without newlines."""

    def write_rows(self, rows: list[str]) -> None:
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
    rows: dict[str, int] = field(default_factory=dict)
    # tables some of whose rows were not passed on byte for byte (raw newlines made spaces)
    altered: set[str] = field(default_factory=set)


TableHandler = Callable[[str], "RowSink | None"]


class _Skip:
    """Drains a table nobody wants."""

    def write_rows(self, rows: list[str]) -> None:
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
        self.document = ExportDocument()

    # -- buffer -----------------------------------------------------------------------------

    def _fill(self, at_least: int = READ_CHUNK) -> bool:
        """Read more text; False at end of stream."""
        if self._eof:
            return False
        if self._pos > (1 << 20) and self._pos > len(self._buf) // 2:
            self._buf = self._buf[self._pos:]
            self._pos = 0
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
        doc = self.document
        if key == "version":
            doc.version = check_version(value, self._where)
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
                raise IntegrityError(f"{self._where}: \"deleted\" must map each table to a list of keys")
            doc.deleted = {str(k): list(v) for k, v in value.items()}

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
        # backupd's layout: '[' then a newline, one row per line, ']' on its own line
        while len(self._buf) - self._pos < 2 and self._fill():
            pass
        line_mode = self._buf.startswith("\n{", self._pos)
        if line_mode:
            count, done = self._line_rows(sink, keys)
            if done:
                self.document.rows[table] = count
                return list(keys)
        batch: list[str] = []
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
                batch.append(text)
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

    def _line_rows(self, sink: RowSink, keys: dict[str, None]) -> tuple[int, bool]:
        """Rows one per line; returns (rows, finished). Not finished: a line was not one whole
        row, and reading goes on with the JSON scanner from that line's start."""
        count = 0
        self._pos += 1  # the newline after '['

        def emit(rows: list[str]) -> None:
            if not keys:
                keys.update(dict.fromkeys(json.loads(rows[0])))
            sink.write_rows(rows)

        while True:
            end = self._buf.rfind("\n", self._pos)
            if end < 0:
                if not self._fill():
                    return count, False
                continue
            rows: list[str] = []
            offset = self._pos
            for line in self._buf[self._pos:end].split("\n"):
                row = line.removesuffix(",")
                if row.startswith("{") and row.endswith("}"):
                    rows.append(row)
                    offset += len(line) + 1
                    continue
                if rows:
                    emit(rows)
                    count += len(rows)
                self._pos = offset
                if line.startswith("]"):
                    self._pos += 1
                    return count, True
                return count, False
            if rows:
                emit(rows)
                count += len(rows)
            self._pos = end + 1
            if self._pos >= len(self._buf):
                self._fill()
