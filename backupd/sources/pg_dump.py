"""The SQL half: `schema.sql` (pg_dump --schema-only) and `data.sql` (pg_dump --data-only, COPY).

Both pg_dump runs read the backup's snapshot (`--snapshot`). The password travels in PGPASSWORD,
never in argv. Tables with excluded columns are left out of pg_dump's data and written by us as
COPY blocks of the remaining columns, from the same snapshot, so an excluded column never
leaves the database in either half.

pg_dump's table selection does not reach partitions or inheritance children (`--exclude-table`
and `--exclude-table-data` name one table each, `--table` a partitioned table without its
partitions): each of them is named explicitly. A partitioned table with excluded columns is
written through its parent (COPY into the parent routes rows to their partitions), none of its
partitions by pg_dump, so every row is in data.sql exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar

import psycopg
import structlog

from backupd import proc
from backupd.catalog import Table, excluded_relations
from backupd.config import DumpConfig, SourceConfig
from backupd.db import one_line, quote_ident, split_dsn
from backupd.errors import SourceError
from backupd.manifest import ArtifactEntry
from backupd.pgtools import PgTool, pick
from backupd.pipeline import COPY_BUFFER, ArtifactWriter
from backupd.snapshot import Snapshot
from backupd.sources import ArtifactSink, SourceReport

log = structlog.get_logger("backupd.dump")


def _pattern(schema: str, table: str | None = None) -> str:
    # pg_dump patterns: double quotes make a name exact (no wildcards, case kept)
    quoted_schema = '"' + schema.replace('"', '""') + '"'
    return quoted_schema if table is None else quoted_schema + "." + '"' + table.replace('"', '""') + '"'


class PgDumpSource:
    """pg_dump, twice, from the shared snapshot."""

    name: ClassVar[str] = "pg_dump"

    def __init__(self, source: SourceConfig, dump: DumpConfig, tables: list[Table]) -> None:
        self.source = source
        self.dump = dump
        self.tables = tables
        self.tool: PgTool | None = None
        self._excluded: list[tuple[str, str]] | None = None
        self._extensions: list[str] | None = None

    def pick_tool(self, snapshot: Snapshot) -> PgTool:
        """The pg_dump to use against this server (checked before any dumping)."""
        if self.tool is None:
            self.tool = pick("pg_dump", snapshot.info.server_version_num // 10000,
                             snapshot.info.server_version, self.dump.pg_dump)
        return self.tool

    def _extension_args(self, snapshot: Snapshot) -> list[str]:
        """`--extension` for each extension in the backed-up schemas (read once): pg_dump's
        --schema/--table leave out the extensions the tables' types come from (hstore, citext),
        and schema.sql would not restore into an empty database without them."""
        if self._extensions is None:
            schemas = sorted({t.schema for t in self.tables} | set(self.source.schemas))
            conn = snapshot.attach()
            try:
                rows = conn.execute(
                    "SELECT e.extname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                    "WHERE n.nspname = ANY(%s) ORDER BY 1", (schemas,)).fetchall()
            except psycopg.Error as exc:
                raise SourceError(f"reading the source's extensions failed: {one_line(exc)}") from None
            finally:
                conn.close()
            self._extensions = [str(r[0]) for r in rows]
        return [arg for name in self._extensions for arg in ("--extension", _pattern(name))]

    def _excluded_relations(self, snapshot: Snapshot) -> list[tuple[str, str]]:
        """The excluded tables with their partitions and inheritance children (read once)."""
        if self._excluded is None:
            self._excluded = []
            if self.source.exclude_tables:
                conn = snapshot.attach()
                try:
                    self._excluded = excluded_relations(conn, list(self.source.schemas),
                                                        list(self.source.exclude_tables))
                except psycopg.Error as exc:
                    raise SourceError(f"reading the excluded tables' partitions failed: {one_line(exc)}") from None
                finally:
                    conn.close()
        return self._excluded

    def selection_args(self, snapshot: Snapshot, data: bool, schemas: bool = True) -> list[str]:
        """pg_dump's table selection: the backed-up tables with their partitions (or, with
        `schemas`, the configured schemas) less every excluded table and its descendants; with
        `data`, the tables whose data backupd writes itself (excluded columns) are left out
        together with their partitions."""
        argv: list[str] = []
        if self.source.include_tables:
            argv += [arg for t in self.tables for name in [(t.schema, t.name), *t.partitions]
                     for arg in ("--table", _pattern(*name))]
        elif schemas:
            argv += [arg for s in self.source.schemas for arg in ("--schema", _pattern(s))]
        for pattern in self.source.exclude_tables:
            schema, _, table = pattern.rpartition(".")
            argv += ["--exclude-table", _pattern(schema or "public", table)]
        for schema, table in self._excluded_relations(snapshot):
            argv += ["--exclude-table", _pattern(schema, table)]
        if data:
            for partial in self.tables:
                if partial.excluded_columns:
                    argv += [arg for name in [(partial.schema, partial.name), *partial.partitions]
                             for arg in ("--exclude-table-data", _pattern(*name))]
        return argv

    def _base_argv(self, snapshot: Snapshot) -> tuple[list[str], dict[str, str]]:
        tool = self.pick_tool(snapshot)
        conninfo, env = split_dsn(self.source.dsn.get_secret_value())
        argv = [tool.path, "--dbname", conninfo, "--no-password", "--snapshot", snapshot.id,
                "--encoding", "UTF8", "--no-owner", "--no-privileges"]
        return argv, env

    def produce(self, snapshot: Snapshot, sink: ArtifactSink) -> SourceReport:
        """Write schema.sql and data.sql; raises CommandError with pg_dump's stderr tail."""
        report = SourceReport()
        argv, env = self._base_argv(snapshot)
        log.info("dump_started", pg_dump=self.tool.version if self.tool else "")
        schema_argv = argv + self.selection_args(snapshot, data=False) + self._extension_args(snapshot)
        report.artifacts.append(self._run(schema_argv + ["--schema-only"],
                                          env, sink.open("schema.sql", "schema"), rewrite=_idempotent_create_schema))
        partial = [t for t in self.tables if t.excluded_columns]
        data_argv = argv + self.selection_args(snapshot, data=True) + ["--data-only"]
        writer = sink.open("data.sql", "data")
        try:
            if partial:
                self._write_partial_tables(snapshot, partial, writer)
        except BaseException:
            writer.abort()
            raise
        report.artifacts.append(self._run(data_argv, env, writer))
        log.info("dump_finished", artifacts=[a.name for a in report.artifacts])
        return report

    def _run(self, argv: list[str], env: dict[str, str], writer: ArtifactWriter,
             rewrite: Callable[[bytes], bytes] | None = None) -> ArtifactEntry:
        try:
            with proc.spawn(argv, env=env) as dump:
                if rewrite is None:
                    while chunk := dump.stdout.read(COPY_BUFFER):
                        writer.write(chunk)
                else:
                    for line in dump.stdout:
                        writer.write(rewrite(line))
                dump.finish(hint=_hint_for(dump.collector.tail))
        except BaseException:
            writer.abort()
            raise
        return writer.close()

    def _write_partial_tables(self, snapshot: Snapshot, tables: list[Table], writer: ArtifactWriter) -> None:
        """COPY blocks of the kept columns, in pg_dump's own text format, from the same snapshot."""
        writer.write(b"-- backupd: tables with excluded columns (only the kept columns)\n"
                     b"SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n\n")
        conn = snapshot.attach()
        try:
            # every ALTER before any COPY: a parent's ALTER also relaxes its inheritance children
            for table in tables:
                for column in table.excluded_required:
                    # the column was left out of the backup on purpose; without this a restore stops
                    writer.write(f"-- {column} was excluded from the backup: it restores as NULL\n"
                                 f"ALTER TABLE {table.sql_name} ALTER COLUMN {quote_ident(column)} "
                                 "DROP NOT NULL;\n".encode())
            for table in tables:
                cols = ", ".join(quote_ident(c) for c in table.columns)
                writer.write(f"COPY {table.sql_name} ({cols}) FROM stdin;\n".encode())
                with conn.cursor().copy(f"COPY ({table.select_sql()}) TO STDOUT") as copy:
                    for chunk in copy:
                        writer.write(chunk)
                writer.write(b"\\.\n\n")
        except psycopg.Error as exc:
            raise SourceError(f"reading {table.key} failed: {one_line(exc)}") from None
        finally:
            conn.close()


_CREATE_SCHEMA = re.compile(rb"^CREATE SCHEMA ([^ ;]+);$")


def _idempotent_create_schema(line: bytes) -> bytes:
    """`CREATE SCHEMA public;` -> `CREATE SCHEMA IF NOT EXISTS public;`.

    pg_dump --schema emits CREATE SCHEMA even for `public`, which every new database already has,
    so a plain restore into an empty database would stop at the first statement.
    """
    match = _CREATE_SCHEMA.match(line.rstrip(b"\n"))
    return b"CREATE SCHEMA IF NOT EXISTS " + match.group(1) + b";\n" if match else line


def _hint_for(stderr: str) -> str | None:
    if "server version mismatch" in stderr:
        return "install a pg_dump whose major version is at least the server's, or set dump.pg_dump"
    if "password authentication failed" in stderr:
        return "check the password in source.dsn"
    return None
