"""SQLite export: one database file, one table per source table, values preserved.

Column mapping (declared types are chosen so SQLite's type affinity never rewrites a value):
integers -> INTEGER, float4/float8 -> REAL, boolean -> INTEGER 0/1, bytea -> BLOB, numeric ->
TEXT exactly as PostgreSQL prints it (`12.50`), json/jsonb and arrays -> JSON text, every other
type -> TEXT as PostgreSQL renders it to JSON (timestamps ISO 8601 with offset, intervals as
interval text, uuid, inet, dates). Primary keys are kept.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import ClassVar

import psycopg
import structlog

from backupd.catalog import Table
from backupd.db import one_line, quote_ident
from backupd.errors import SourceError, StorageFull
from backupd.pipeline import COPY_BUFFER
from backupd.snapshot import Snapshot
from backupd.sources import ArtifactSink, SourceReport

log = structlog.get_logger("backupd.export")
FETCH_ROWS = 5000
_INTEGER = {"int2", "int4", "int8", "oid"}
_REAL = {"float4", "float8"}


def _column_types(conn: psycopg.Connection[tuple[object, ...]], table: Table) -> dict[str, tuple[str, str]]:
    rows = conn.execute(
        """
        SELECT a.attname, t.typname, t.typcategory
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
        """,
        (table.sql_name,),
    ).fetchall()
    return {str(name): (str(typ), str(category)) for name, typ, category in rows}


def _mapping(column: str, typ: str, category: str) -> tuple[str, str]:
    """(SQLite declared type, SELECT expression) of one column."""
    col = quote_ident(column)
    if typ in _INTEGER:
        return "INTEGER", col
    if typ in _REAL:
        return "REAL", col
    if typ == "bool":
        return "INTEGER", f"{col}::int"
    if typ == "bytea":
        return "BLOB", col
    if typ == "numeric":
        return "TEXT", f"{col}::text"
    if typ in ("json", "jsonb") or category == "A":
        return "TEXT", f"to_json({col})::text"
    return "TEXT", f"to_json({col}) #>> '{{}}'"


def write_sqlite(conn: psycopg.Connection[tuple[object, ...]], tables: list[Table], path: Path,
                 where: dict[str, str] | None = None) -> dict[str, int]:
    """Build the SQLite database at `path` from `tables` read through `conn` (inside its
    transaction); returns rows per table. `where` optionally filters tables by a SQL condition."""
    db = sqlite3.connect(path)
    counts: dict[str, int] = {}
    try:
        for number, table in enumerate(tables):
            types = _column_types(conn, table)
            mapped = [(c, *_mapping(c, *types.get(c, ("text", "S")))) for c in table.columns]
            columns_sql = ", ".join(f"{quote_ident(c)} {decl}" for c, decl, _ in mapped)
            if table.primary_key and all(c in table.columns for c in table.primary_key):
                columns_sql += ", PRIMARY KEY (" + ", ".join(quote_ident(c) for c in table.primary_key) + ")"
            db.execute(f"CREATE TABLE {quote_ident(table.key)} ({columns_sql})")
            select = ", ".join(expr for _, _, expr in mapped)
            condition = (where or {}).get(table.key, "")
            sql = f"SELECT {select} FROM {table.from_sql}" + (f" WHERE {condition}" if condition else "")
            insert = (f"INSERT INTO {quote_ident(table.key)} VALUES ("
                      + ", ".join("?" for _ in mapped) + ")")
            count = 0
            try:
                with conn.cursor(name=f"backupd_sqlite_{number}") as cursor:
                    cursor.itersize = FETCH_ROWS
                    cursor.execute(sql.encode())
                    while batch := cursor.fetchmany(FETCH_ROWS):
                        db.executemany(insert, batch)
                        count += len(batch)
            except psycopg.Error as exc:
                raise SourceError(f"exporting {table.key} to SQLite failed: {one_line(exc)}") from None
            counts[table.key] = count
            log.info("table_exported_sqlite", table=table.key, rows=count)
        db.commit()
    except sqlite3.Error as exc:
        raise StorageFull(f"cannot write the SQLite export {path}: {exc}") from None
    finally:
        db.close()
    return counts


class SqliteExportSource:
    """The `export.sqlite` artifact, read through a connection attached to the snapshot."""

    name: ClassVar[str] = "sqlite"

    def __init__(self, tables: list[Table]) -> None:
        self.tables = tables

    def produce(self, snapshot: Snapshot, sink: ArtifactSink) -> SourceReport:
        """Build the database in the staging folder, then store it through the pipeline."""
        report = SourceReport()
        conn = snapshot.attach()
        try:
            with tempfile.TemporaryDirectory(prefix=".sqlite-", dir=sink.folder) as scratch:
                path = Path(scratch) / "export.sqlite"
                write_sqlite(conn, self.tables, path)
                writer = sink.open("export.sqlite", "sqlite")
                try:
                    with open(path, "rb") as data:
                        while chunk := data.read(COPY_BUFFER):
                            writer.write(chunk)
                except BaseException:
                    writer.abort()
                    raise
                report.artifacts.append(writer.close())
        finally:
            conn.close()
        return report
