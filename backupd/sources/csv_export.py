"""CSV export: one file per table, a header row, values as PostgreSQL's own CSV output renders them
(arrays as `{a,b}`, jsonb as JSON text, timestamps in the session's DateStyle, NULL as empty)."""

from __future__ import annotations

from typing import ClassVar

import psycopg
import structlog

from backupd.catalog import Table
from backupd.db import one_line
from backupd.errors import SourceError
from backupd.snapshot import Snapshot
from backupd.sources import ArtifactSink, SourceReport
from backupd.sources.json_export import Writable

log = structlog.get_logger("backupd.export")


def csv_copy_sql(table: Table, where: str = "") -> str:
    """COPY of a table's exported columns as CSV with a header row."""
    return f"COPY ({table.select_sql(where)}) TO STDOUT WITH (FORMAT csv, HEADER)"


def copy_csv(conn: psycopg.Connection[tuple[object, ...]], table: Table, out: Writable, where: str = "") -> int:
    """Stream one table as CSV into `out`; returns the number of data rows."""
    cursor = conn.cursor()
    try:
        with cursor.copy(csv_copy_sql(table, where)) as copy:
            for chunk in copy:
                out.write(bytes(chunk))
    except psycopg.Error as exc:
        raise SourceError(f"exporting {table.key} as CSV failed: {one_line(exc)}") from None
    return max(cursor.rowcount, 0)


class CsvExportSource:
    """`csv/<table>.csv` artifacts, read through a connection attached to the snapshot."""

    name: ClassVar[str] = "csv"

    def __init__(self, tables: list[Table]) -> None:
        self.tables = tables

    def produce(self, snapshot: Snapshot, sink: ArtifactSink) -> SourceReport:
        """One artifact per table."""
        report = SourceReport()
        conn = snapshot.attach()
        try:
            for table in self.tables:
                writer = sink.open(f"csv/{table.key}.csv", "csv")
                try:
                    rows = copy_csv(conn, table, writer)
                except BaseException:
                    writer.abort()
                    raise
                report.artifacts.append(writer.close())
                log.info("table_exported_csv", table=table.key, rows=rows)
        finally:
            conn.close()
        return report
