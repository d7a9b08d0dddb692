"""The application half: the JSON v2.0 export (contract section 5), streamed row by row.

PostgreSQL renders every row (`row_to_json`), so values are exactly what it prints: numerics keep
their scale, intervals stay interval text, bytea is `\\x` hex, timestamps carry their offset. The
document is laid out one row per line, which lets backupd's own reader stream it back; any JSON
parser reads it as one document. Counts are written after the data (key order does not matter
to a JSON reader, and it saves a second scan of every table).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Protocol

import psycopg
import structlog

from backupd.catalog import Table
from backupd.checksum import DEFAULT_ALGORITHM, LineSplitter, TableChecksum, canonical_json
from backupd.db import one_line, quote_literal
from backupd.errors import SourceError
from backupd.lines import MAX_LINE_BYTES
from backupd.manifest import TableEntry, iso
from backupd.snapshot import Snapshot
from backupd import progress
from backupd.sources import ArtifactSink, SourceReport

log = structlog.get_logger("backupd.export")
EXPORT_VERSION = "2.0"


class Writable(Protocol):
    """Anything bytes can be written to."""

    def write(self, data: bytes | bytearray | memoryview) -> int: ...


COPY_BATCH_BYTES = 1 << 20


def copy_lines(conn: psycopg.Connection[tuple[object, ...]], sql: str, what: str) -> Iterator[list[bytes]]:
    """Batches of complete lines (without newlines) of a `COPY ... TO STDOUT`; a database error
    becomes a SourceError saying `what` failed.

    libpq hands COPY data over one row at a time: rows are gathered into batches of about
    COPY_BATCH_BYTES, so that hashing, compressing and writing work a batch per call, not a row."""
    splitter = LineSplitter()
    try:
        with conn.cursor().copy(sql) as copy:
            pending: list[bytes | bytearray | memoryview] = []
            size = 0
            for chunk in copy:
                pending.append(chunk)
                size += len(chunk)
                if size >= COPY_BATCH_BYTES:
                    lines = splitter.feed(b"".join(pending))
                    pending, size = [], 0
                    if lines:
                        yield lines
            if pending:
                lines = splitter.feed(b"".join(pending))
                if lines:
                    yield lines
        rest = splitter.finish()
        if rest:
            yield rest
    except psycopg.Error as exc:
        raise SourceError(f"{what} failed: {one_line(exc)}") from None


def copy_json_lines(conn: psycopg.Connection[tuple[object, ...]], table: Table,
                    where: str = "") -> Iterator[list[bytes]]:
    """Batches of complete JSON rows of `table` (each without newline), straight from COPY."""
    return copy_lines(conn, table.json_copy_sql(where), f"exporting {table.key}")


COPY_AS_LINES = "WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"
# a table's exactValues entries, as the export document holds them (parsed JSON objects)
ExactValues = list[dict[str, Any]]


def exact_values(conn: psycopg.Connection[tuple[object, ...]], table: Table) -> ExactValues:
    """The table's exactValues entries (values its rows' JSON does not carry exactly), read in the
    connection's transaction: `{"column", "key", "text"}` each, numbers as int or Decimal."""
    query = table.exact_values_sql()
    if query is None:
        return []
    entries: ExactValues = []
    for lines in copy_lines(conn, f"COPY ({query}) TO STDOUT {COPY_AS_LINES}", f"exporting {table.key}"):
        entries += [json.loads(line, parse_float=Decimal) for line in lines]
    return entries


def warn_unkeyed_exact_values(conn: psycopg.Connection[tuple[object, ...]], table: Table) -> None:
    """Log a warning naming the columns of a table without a primary key that hold values its
    JSON export cannot carry exactly (exactValues entries need a key to name their row)."""
    if table.primary_key or not table.exact_conditions:
        return
    cases = ", ".join(f"CASE WHEN {condition} THEN {quote_literal(column)} END"
                      for column, condition in table.exact_conditions.items())
    try:
        rows = conn.execute(f"SELECT DISTINCT c FROM {table.sql_name} t, unnest(ARRAY[{cases}]) c "
                            "WHERE c IS NOT NULL ORDER BY 1").fetchall()
    except psycopg.Error as exc:
        raise SourceError(f"exporting {table.key} failed: {one_line(exc)}") from None
    if rows:
        log.warning("json_values_not_exact", table=table.key, columns=",".join(str(r[0]) for r in rows),
                    detail="a table without a primary key: its JSON restore reads these JSON nulls as SQL "
                           "NULL and json text without its line breaks (the SQL dump keeps them)")


def table_checksum(conn: psycopg.Connection[tuple[object, ...]], table: Table,
                   algorithm: str = DEFAULT_ALGORITHM) -> TableChecksum:
    """Rows and checksum of a table as it is now (for verification after a restore).

    Renders values with the same session settings as a backup (UTC, ISO dates), for this session.
    """
    from backupd.snapshot import RENDERING_SETTINGS

    for name, value in RENDERING_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    checksum = TableChecksum(algorithm)
    for lines in copy_json_lines(conn, table):
        checksum.add_lines(lines)
    checksum.add_exact_values(exact_values(conn, table))
    return checksum


class JsonDocumentWriter:
    """Writes a JSON v2.0 document, one row per line, without holding any table in memory."""

    def __init__(self, out: Writable, tables: list[str], exported_at: datetime,
                 incremental: bool = False, since: str | None = None) -> None:
        self.out = out
        self.counts: dict[str, int] = {}
        self.exact: dict[str, ExactValues] = {}
        self._first_table = True
        header = {
            "version": EXPORT_VERSION,
            "exportedAt": iso(exported_at),
            "format": "incremental" if incremental else "full",
            "incremental": incremental,
            "since": since,
            "tables": tables,
        }
        out.write(json.dumps(header, ensure_ascii=False)[:-1].encode() + b',\n"data": {')

    def table(self, key: str, batches: Iterable[list[bytes]]) -> None:
        """Write one table's rows (batches of JSON lines)."""
        prefix = b"\n" if self._first_table else b",\n"
        self._first_table = False
        self.out.write(prefix + json.dumps(key, ensure_ascii=False).encode() + b": [")
        count = 0
        try:
            for lines in batches:
                if not lines:
                    continue
                self.out.write((b",\n" if count else b"\n") + b",\n".join(lines))
                count += len(lines)
        except BaseException:
            # end the COPY feeding `batches` now (psycopg cancels and drains it): left open, the
            # session's next statement (the snapshot's rollback) would wait on it forever
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            raise
        self.out.write(b"\n]" if count else b"]")
        self.counts[key] = count

    def exact_values(self, key: str, entries: ExactValues) -> None:
        """Record one table's exactValues entries (written by `finish`)."""
        if entries:
            self.exact[key] = entries

    def _trailer(self) -> None:
        if self.exact:
            line = b'"exactValues": ' + canonical_json(self.exact).encode() + b",\n"
            if len(line) > MAX_LINE_BYTES:
                # one line, like `deleted`: past the cap every reader refuses it, so say so now
                log.warning("exact_values_too_large", bytes=len(line),
                            entries=",".join(f"{k}={len(v)}" for k, v in self.exact.items()),
                            detail="the JSON restore of this backup will refuse its export (a line over 64 MiB); "
                                   "restore it with --sql")
            self.out.write(line)
        self.out.write(b'"recordCount": ' + json.dumps(self.counts).encode() + b"}\n")

    def finish(self, deleted: dict[str, list[object]] | None = None) -> None:
        """Close the document with `deleted`, `exactValues` (when any) and `recordCount`."""
        self.out.write(b"\n},\n")
        self.out.write(b'"deleted": ' + json.dumps(deleted or {}, ensure_ascii=False).encode() + b",\n")
        self._trailer()

    def finish_deleted(self, deleted: dict[str, Path]) -> None:
        """Close the document like `finish`, streaming `deleted` from files of JSON keys (one per
        line, zstd, as `backupd.incremental.KeyWriter` writes them) instead of memory."""
        from backupd.incremental import read_keys

        self.out.write(b'\n},\n"deleted": {')
        for index, (key, path) in enumerate(deleted.items()):
            self.out.write((b", " if index else b"") + json.dumps(key, ensure_ascii=False).encode() + b": [")
            for count, line in enumerate(read_keys(path)):
                self.out.write((b", " if count else b"") + line)
            self.out.write(b"]")
        self.out.write(b"},\n")
        self._trailer()


class JsonExportSource:
    """Every table as JSON, read in the snapshot's owning transaction."""

    name: ClassVar[str] = "json"

    def __init__(self, tables: list[Table]) -> None:
        self.tables = tables

    def produce(self, snapshot: Snapshot, sink: ArtifactSink) -> SourceReport:
        """Write export.json; returns per-table rows and checksums."""
        report = SourceReport()
        writer = sink.open("export.json", "export")
        try:
            document = JsonDocumentWriter(writer, [t.key for t in self.tables], snapshot.info.taken_at)
            for table in self.tables:
                checksum = TableChecksum()

                def counted(batches: Iterator[list[bytes]], c: TableChecksum = checksum) -> Iterator[list[bytes]]:
                    for lines in batches:
                        c.add_lines(lines)
                        yield lines

                progress.current().stage(f"exporting {table.key}")
                document.table(table.key, counted(copy_json_lines(snapshot.conn, table)))
                entries = exact_values(snapshot.conn, table)
                checksum.add_exact_values(entries)
                document.exact_values(table.key, entries)
                warn_unkeyed_exact_values(snapshot.conn, table)
                report.tables[table.key] = TableEntry(
                    rows=checksum.rows, checksum=checksum.hexdigest, columns=table.columns,
                    primary_key=table.primary_key, has_updated_at=table.has_updated_at,
                )
                log.info("table_exported", table=table.key, rows=checksum.rows)
                progress.current().done(table.key, checksum.rows)
            document.finish()
        except BaseException:
            writer.abort()
            raise
        report.artifacts.append(writer.close())
        return report
