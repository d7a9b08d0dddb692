"""`backupd export [--format json|csv|sqlite] [--include all|core|TABLES] [--since TS]
[--compress gzip|zstd|none] [-o PATH|-]`: a one-off export of the source database, nothing stored.

Every table is read from one snapshot. JSON is the v2.0 document (with `--since`, an incremental
document: rows whose `updated_at` is at or after TS; tables without `updated_at` whole). CSV is one
file per table with a header row: a folder, or a tar stream on stdout. SQLite is one database file.
`--compress` compresses the file (JSON, SQLite), each CSV file in a folder, or the whole tar stream.
A file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from backupd import progress
from backupd.catalog import Table, discover
from backupd.commands.common import config_from
from backupd.errors import StorageFull, UsageError
from backupd.incremental import since_condition
from backupd.manifest import iso
from backupd.pipeline import COPY_BUFFER, SUFFIX, GzipSink, Sink, ZstdSink
from backupd.snapshot import Snapshot

CORE_TABLES = ["tasks", "projects", "labels", "task_labels"]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("export", parents=[common], help="a one-off export (JSON, CSV or SQLite), nothing stored")
    parser.add_argument("--format", choices=["json", "csv", "sqlite"], default="json")
    parser.add_argument("--include", default="all", metavar="all|core|TABLES",
                        help="every table, the core tables (tasks, projects, labels, task_labels), or a comma list")
    parser.add_argument("--since", metavar="TS", help="only rows with updated_at >= TS (ISO 8601)")
    parser.add_argument("--compress", choices=["gzip", "zstd", "none"], default="none")
    parser.add_argument("-o", "--output", default="-", metavar="PATH|-", help="file or folder; - for stdout")
    parser.set_defaults(handler=handle)


class _StdoutSink:
    def write(self, data: bytes | bytearray | memoryview) -> int:
        sys.stdout.buffer.write(data)
        progress.current().transferred(len(data))
        return len(data)

    def close(self) -> None:
        sys.stdout.buffer.flush()


class _FileSink:
    """A file written under a temporary name, renamed over PATH by close()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.temp = path.with_name(f".{path.name}.partial")
        try:
            self._file = open(self.temp, "wb")  # noqa: SIM115 - closed in close()/abort()
        except OSError as exc:
            raise StorageFull(f"cannot write {path}: {exc.strerror or exc}") from None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            progress.current().transferred(len(data))
            return self._file.write(data)
        except OSError as exc:
            self.abort()
            raise StorageFull(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.temp, self.path)

    def abort(self) -> None:
        self._file.close()
        self.temp.unlink(missing_ok=True)


def _compressed(sink: Sink, compression: str) -> Sink:
    if compression == "zstd":
        return ZstdSink(sink, 3)
    if compression == "gzip":
        return GzipSink(sink, 6)
    return sink


def select_tables(tables: list[Table], include: str) -> list[Table]:
    """The tables `--include` names (in foreign-key order); raises UsageError for unknown names."""
    if include == "all":
        return tables
    wanted = CORE_TABLES if include == "core" else [t.strip() for t in include.split(",") if t.strip()]
    known = {t.key for t in tables} | {t.name for t in tables}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise UsageError(f"--include: no table {', '.join(unknown)} in the backed-up schemas")
    return [t for t in tables if t.key in wanted or t.name in wanted]


def parse_since(text: str | None) -> datetime | None:
    """`--since` as an aware datetime (naive means UTC); raises UsageError."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since: {text[:40]!r} is not an ISO 8601 timestamp (e.g. 2026-01-30T14:30:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def handle(args: argparse.Namespace) -> int:
    config = config_from(args)
    since = parse_since(args.since)
    source = config.source
    with Snapshot(source.dsn.get_secret_value(), source.connect_timeout) as snapshot:
        tables = select_tables(discover(snapshot.conn, source.schemas, source.include_tables,
                                        source.exclude_tables, source.exclude_columns), args.include)
        where = {t.key: since_condition(since) for t in tables if since and t.has_updated_at}
        with progress.on_terminal(args.log_format, f"exporting ({args.format})", total=len(tables)):
            if args.format == "json":
                counts = _export_json(snapshot, tables, where, since, args)
            elif args.format == "csv":
                counts = _export_csv(snapshot, tables, where, args)
            else:
                counts = _export_sqlite(snapshot, tables, where, args)
    target = "stdout" if args.output == "-" else args.output
    sys.stderr.write(f"exported {len(counts)} tables, {sum(counts.values())} rows ({args.format}) to {target}\n")
    return 0


def _open_output(args: argparse.Namespace) -> tuple[Sink, _FileSink | None]:
    if args.output == "-":
        return _compressed(_StdoutSink(), args.compress), None
    file_sink = _FileSink(Path(args.output))
    return _compressed(file_sink, args.compress), file_sink


def _export_json(snapshot: Snapshot, tables: list[Table], where: dict[str, str], since: datetime | None,
                 args: argparse.Namespace) -> dict[str, int]:
    from backupd.sources.json_export import JsonDocumentWriter, copy_json_lines, exact_values

    out, file_sink = _open_output(args)
    try:
        document = JsonDocumentWriter(out, [t.key for t in tables], snapshot.info.taken_at,
                                      incremental=since is not None, since=iso(since) if since else None)
        for table in tables:
            progress.current().stage(f"exporting {table.key}")
            document.table(table.key, copy_json_lines(snapshot.conn, table, where.get(table.key, "")))
            document.exact_values(table.key, exact_values(snapshot.conn, table))
            progress.current().done(table.key, document.counts.get(table.key, 0))
        document.finish()
        out.close()
    except BaseException:
        if file_sink:
            file_sink.abort()
        raise
    return document.counts


def _export_csv(snapshot: Snapshot, tables: list[Table], where: dict[str, str],
                args: argparse.Namespace) -> dict[str, int]:
    from backupd.sources.csv_export import copy_csv

    counts: dict[str, int] = {}
    if args.output != "-":
        folder = Path(args.output)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise UsageError(f"-o {folder}: a CSV export needs a new or empty folder")
        folder.mkdir(parents=True, exist_ok=True)
        for table in tables:
            file_sink = _FileSink(folder / f"{table.key}.csv{SUFFIX[args.compress]}")
            out = _compressed(file_sink, args.compress)
            try:
                progress.current().stage(f"exporting {table.key}")
                counts[table.key] = copy_csv(snapshot.conn, table, out, where.get(table.key, ""))
                out.close()
                progress.current().done(table.key, counts[table.key])
            except BaseException:
                file_sink.abort()
                raise
        return counts
    # stdout: a tar stream; each member's size must be known first, so it is spooled to a temp file
    stream = _compressed(_StdoutSink(), args.compress)
    with tarfile.open(fileobj=cast(Any, _TarOut(stream)), mode="w|", format=tarfile.PAX_FORMAT) as archive, \
            tempfile.TemporaryDirectory(prefix="backupd-export-") as scratch:
        for table in tables:
            path = Path(scratch) / f"{table.key}.csv"
            spool = _FileSink(path)
            progress.current().stage(f"exporting {table.key}")
            counts[table.key] = copy_csv(snapshot.conn, table, spool, where.get(table.key, ""))
            progress.current().done(table.key, counts[table.key])
            spool.close()
            info = archive.gettarinfo(str(path), arcname=path.name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as data:
                archive.addfile(info, data)
            path.unlink()
    stream.close()
    return counts


class _TarOut:
    """A file-like writer over a Sink, for tarfile's stream mode."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        return self._sink.write(data)

    def close(self) -> None:  # tarfile does not own the sink
        pass


def _export_sqlite(snapshot: Snapshot, tables: list[Table], where: dict[str, str],
                   args: argparse.Namespace) -> dict[str, int]:
    from backupd.sources.sqlite_export import write_sqlite

    scratch_parent = None if args.output == "-" else Path(args.output).resolve().parent
    with tempfile.TemporaryDirectory(prefix=".backupd-sqlite-", dir=scratch_parent) as scratch:
        path = Path(scratch) / "export.sqlite"
        progress.current().stage("exporting into SQLite")
        counts = write_sqlite(snapshot.conn, tables, path, where)
        for table, rows in counts.items():
            progress.current().done(table, rows)
        out, file_sink = _open_output(args)
        try:
            with open(path, "rb") as data:
                while chunk := data.read(COPY_BUFFER):
                    out.write(chunk)
            out.close()
        except BaseException:
            if file_sink:
                file_sink.abort()
            raise
    return counts
