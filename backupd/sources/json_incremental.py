"""The JSON export when incrementals are on: full or incremental, and every table's key set.

A full writes every row (as `JsonExportSource` does) and then each table's sorted key set. An
incremental writes only changed rows (sorted by key) plus the rows the key merge finds missed,
and `deleted` from the merge with the previous backup's key set (see `backupd.incremental`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import psycopg
import structlog

from backupd.catalog import Table
from backupd.checksum import TableChecksum
from backupd.db import one_line
from backupd.errors import SourceError
from backupd.incremental import (
    BackupPlan,
    KeyStore,
    KeyWriter,
    has_usable_key,
    key_expression,
    keyed_rows_copy_sql,
    keys_copy_sql,
    merge_keys,
    read_keys,
    since_condition,
)
from backupd.manifest import TableEntry
from backupd.snapshot import Snapshot
from backupd.sources import ArtifactSink, SourceReport
from backupd import progress
from backupd.sources.json_export import (
    JsonDocumentWriter,
    copy_json_lines,
    copy_lines,
    exact_values,
    warn_unkeyed_exact_values,
)

log = structlog.get_logger("backupd.export")
MISSED_BATCH = 500


class TrackedJsonExportSource:
    """export.json (full or incremental per the plan) plus the key sets of this backup."""

    name: ClassVar[str] = "json"

    def __init__(self, tables: list[Table], plan: BackupPlan, keys: KeyStore, backup_id: str) -> None:
        self.tables = tables
        self.plan = plan
        self.keys = keys
        self.backup_id = backup_id

    def produce(self, snapshot: Snapshot, sink: ArtifactSink) -> SourceReport:
        """Write export.json and the key sets; returns per-table rows and checksums (of the rows written)."""
        report = SourceReport()
        incremental = self.plan.kind == "incremental"
        writer = sink.open("export.json", "export")
        with tempfile.TemporaryDirectory(prefix="backupd-keys-", dir=self.keys.root.parent) as scratch:
            try:
                document = JsonDocumentWriter(writer, [t.key for t in self.tables], snapshot.info.taken_at,
                                              incremental=incremental, since=self.plan.since_text)
                deleted: dict[str, Path] = {}
                for table in self.tables:
                    checksum = TableChecksum()

                    def counted(batches: Iterator[list[bytes]], c: TableChecksum = checksum) -> Iterator[list[bytes]]:
                        for lines in batches:
                            c.add_lines(lines)
                            yield lines

                    progress.current().stage(f"exporting {table.key}")
                    rows = self._table_rows(snapshot.conn, table, Path(scratch), deleted)
                    document.table(table.key, counted(rows))
                    # entries for every row of the table, not only the ones written: applying one to a
                    # row an earlier backup of the chain holds sets the value it has anyway
                    entries = exact_values(snapshot.conn, table)
                    checksum.add_exact_values(entries)
                    document.exact_values(table.key, entries)
                    warn_unkeyed_exact_values(snapshot.conn, table)
                    report.tables[table.key] = TableEntry(
                        rows=checksum.rows, checksum=checksum.hexdigest, columns=table.columns,
                        primary_key=table.primary_key, has_updated_at=table.has_updated_at,
                    )
                    log.info("table_exported", table=table.key, rows=checksum.rows, kind=self.plan.kind,
                             deleted=_count_lines(deleted.get(table.key)))
                    progress.current().done(table.key, checksum.rows)
                document.finish_deleted({key: path for key, path in deleted.items()})
            except BaseException:
                writer.abort()
                raise
        self.keys.mark_complete(self.backup_id)
        report.artifacts.append(writer.close())
        return report

    def _table_rows(self, conn: psycopg.Connection[tuple[object, ...]], table: Table, scratch: Path,
                    deleted: dict[str, Path]) -> Iterator[list[bytes]]:
        if not has_usable_key(table):
            log.warning("table_without_primary_key", table=table.key,
                        detail="exported whole; its deletions cannot be tracked")
            yield from copy_json_lines(conn, table)
            return
        previous = self.plan.previous
        has_previous = self.plan.kind == "incremental" and previous is not None and self.keys.has(previous, table.key)
        if not has_previous:
            # a full, or a table new since the previous backup: every row, then its key set
            yield from copy_json_lines(conn, table)
            self._write_keys(conn, table)
            return
        assert previous is not None and self.plan.since is not None
        deleted_path = scratch / f"{table.key}.deleted"
        if not table.has_updated_at:
            # exported whole, as in a full (no sort by key); its deletions are the previous
            # key set minus this one
            yield from copy_json_lines(conn, table)
            deleted_writer = KeyWriter(deleted_path)
            new_keys = self.keys.writer(self.backup_id, table.key)
            try:
                merge_keys(read_keys(self.keys.path(previous, table.key)),
                           self._stream_keys(conn, table, new_keys), iter(()),
                           lambda key: deleted_writer.add([key]), lambda key: None)
            finally:
                deleted_writer.close()
                new_keys.close()
            if deleted_writer.count:
                deleted[table.key] = deleted_path
            return
        where = since_condition(self.plan.since)
        exported_path = scratch / f"{table.key}.exported"
        key_writer = KeyWriter(exported_path)
        try:
            for lines in copy_lines(conn, keyed_rows_copy_sql(table, where), f"exporting {table.key}"):
                keys, rows = _split_keyed(lines)
                key_writer.add(keys)
                yield rows
        finally:
            key_writer.close()
        deleted_writer = KeyWriter(deleted_path)
        missed: list[bytes] = []
        new_keys = self.keys.writer(self.backup_id, table.key)
        try:
            current = self._stream_keys(conn, table, new_keys)
            merge_keys(read_keys(self.keys.path(previous, table.key)), current, read_keys(exported_path),
                       lambda key: deleted_writer.add([key]), missed.append)
        finally:
            deleted_writer.close()
            new_keys.close()
        if deleted_writer.count:
            deleted[table.key] = deleted_path
        if missed:
            log.info("rows_outside_since_found", table=table.key, rows=len(missed))
            for start in range(0, len(missed), MISSED_BATCH):
                yield self._rows_by_key(conn, table, missed[start:start + MISSED_BATCH])

    def _stream_keys(self, conn: psycopg.Connection[tuple[object, ...]], table: Table,
                     writer: KeyWriter) -> Iterator[bytes]:
        for lines in copy_lines(conn, keys_copy_sql(table), f"reading the keys of {table.key}"):
            writer.add(lines)
            yield from lines

    def _write_keys(self, conn: psycopg.Connection[tuple[object, ...]], table: Table) -> None:
        writer = self.keys.writer(self.backup_id, table.key)
        try:
            for lines in copy_lines(conn, keys_copy_sql(table), f"reading the keys of {table.key}"):
                writer.add(lines)
        finally:
            writer.close()

    def _rows_by_key(self, conn: psycopg.Connection[tuple[object, ...]], table: Table,
                     keys: list[bytes]) -> list[bytes]:
        sql = (f"SELECT ({table.row_json()})::text FROM ({table.select_sql()}) t "
               f"WHERE {key_expression(table)} = ANY(%s::text[])")
        try:
            rows = conn.execute(sql.encode(), ([k.decode() for k in keys],)).fetchall()
        except psycopg.Error as exc:
            raise SourceError(f"exporting {table.key} failed: {one_line(exc)}") from None
        return [str(r[0]).encode() for r in rows]


def _split_keyed(lines: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    keys, rows = [], []
    for line in lines:
        key, _, row = line.partition(b"\x02")
        keys.append(key)
        rows.append(row)
    return keys, rows


def _count_lines(path: Path | None) -> int:
    return sum(1 for _ in read_keys(path)) if path else 0
