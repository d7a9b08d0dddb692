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
from pathlib import Path
from typing import ClassVar, Protocol

import psycopg
import structlog

from backupd.catalog import Table
from backupd.checksum import DEFAULT_ALGORITHM, LineSplitter, TableChecksum
from backupd.db import one_line
from backupd.errors import SourceError
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
    return checksum


class JsonDocumentWriter:
    """Writes a JSON v2.0 document, one row per line, without holding any table in memory."""

    def __init__(self, out: Writable, tables: list[str], exported_at: datetime,
                 incremental: bool = False, since: str | None = None) -> None:
        self.out = out
        self.counts: dict[str, int] = {}
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

    def finish(self, deleted: dict[str, list[object]] | None = None) -> None:
        """Close the document with `deleted` and `recordCount`."""
        self.out.write(b"\n},\n")
        self.out.write(b'"deleted": ' + json.dumps(deleted or {}, ensure_ascii=False).encode() + b",\n")
        self.out.write(b'"recordCount": ' + json.dumps(self.counts).encode() + b"}\n")

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
        self.out.write(b'"recordCount": ' + json.dumps(self.counts).encode() + b"}\n")


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
