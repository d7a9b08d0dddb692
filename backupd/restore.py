"""JSON restore: a backup (or its whole incremental chain) or a JSON v2.0 file, into a target
database, in one transaction, all or nothing.

Order of work, all inside one transaction on the target:

1. Stage. Every export of the chain is streamed (sha256 and size checked as it streams, decrypted,
   decompressed) into temporary tables, one JSON row per line, through COPY. The stream is read to
   its end, so a tampered, truncated or undecryptable artifact, or an unknown export version, is
   refused here; so are rows whose count or content checksum differs from the manifest's
   per-table entry (rows changed behind a re-made sha256). A full backup restored into empty
   tables streams its rows straight into them instead (same checks, same transaction: nothing is
   committed before the last byte was verified), turned into COPY text in this process
   (backupd.copytext) so that the one restoring backend only parses COPY text; a table with a
   column type that conversion does not take is inserted a batch at a time with
   `json_populate_recordset`.
2. Type. Rows become typed temporary tables (`json_populate_record` over the target's own row
   type: PostgreSQL parses every value, so numerics, intervals, bytea and arrays restore exactly).
   The chain is folded here: each incremental's rows replace the staged rows with the same
   primary key, its `deleted` keys remove staged rows. Duplicate primary keys are refused.
3. Apply. User triggers of the restored tables are disabled (an `updated_at` trigger would rewrite
   what is restored) and the foreign keys touching them are dropped, so load order, self-references
   (tasks.parent_task_id, comments.parent_comment_id, documents.previous_version_id) and cycles do
   not matter. Then, per table, set-based statements by primary key:
   - `upsert`: `INSERT ... ON CONFLICT (pk) DO UPDATE` where any restored column differs; target
     rows the backup lacks stay (also rows an incremental records as deleted).
   - `replace`: first, children before parents, `DELETE` of every target row whose key the backup
     lacks; then the upsert. Afterwards the table holds exactly the backup.
   - `merge`: the upsert, but an existing row is overwritten only when the backup's `updated_at` is
     newer (a NULL is older than any time); rows on one side only are kept. A table without
     `updated_at` is restored as upsert, and the report says so.
   Columns the backup does not carry (excluded at backup time, or new in the target) keep their
   target values on update and their defaults on insert; generated columns are never written.
4. Finish. The foreign keys are added back (PostgreSQL validates each with one query: a row that
   points at a row neither in the target nor restored is refused, naming the constraint), the
   triggers re-enabled, sequences and identity columns set past the restored maximum, and the
   transaction committed, or rolled back for `--dry-run` (the counts are then exactly what a real
   run would do).

Incremental chains. An incremental backup's manifest has `kind: "incremental"` and `base`, the id
of the full it builds on; when it names its predecessor (`previous`), the chain is walked through
those, else the chain is the full plus every incremental at the same destination with that base
up to the requested one, in id order. Its export has `"format": "incremental"` and `deleted`:
`{"table": [key, ...]}`, one entry per row deleted since the previous backup. A key is a JSON
object of the primary-key columns, values as PostgreSQL renders them to JSON
(`{"task_id": "…", "label_id": "…"}`); for a single-column key a bare value (`"…"` or `42`) is read
the same as `{"id": …}`. Restoring applies the full, then each incremental in order: a row in a
later backup replaces the earlier one, a deleted key removes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import psycopg
import structlog
from psycopg import sql

from backupd.catalog import Table, discover
from backupd.checksum import TableChecksum, canonical_json
from backupd.copytext import JSONB, JSONB_NOT_NULL, RowConverter, column_kind, take_nul_values
from backupd.db import connect, describe, one_line, quote_ident
from backupd.destinations.base import Destination
from backupd.errors import BackupdError, IntegrityError, NotFound, UsageError
from backupd.jsonreader import ExportDocument, ExportReader, RowSink
from backupd.manifest import ArtifactEntry, Manifest
from backupd.pipeline import Decryptor, decompress_stream, open_decoded, sniff_compression

log = structlog.get_logger("backupd.restore")

Strategy = Literal["upsert", "replace", "merge"]
STRATEGIES: tuple[Strategy, ...] = ("upsert", "replace", "merge")
COPY_LINES = "WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"


class RestoreError(BackupdError):
    """The restore was refused or failed; the target is unchanged (the transaction rolled back)."""


@dataclass
class TableCounts:
    """What a restore did (or, dry-run, would do) to one table."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    rows: int = 0
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counts."""
        data: dict[str, Any] = {"inserted": self.inserted, "updated": self.updated,
                                "deleted": self.deleted, "unchanged": self.unchanged}
        if self.note:
            data["note"] = self.note
        return data


@dataclass
class RestoreReport:
    """The outcome of one restore, for the summary, history.jsonl and the `restore` event."""

    source: str
    target: str
    strategy: str
    dry_run: bool
    mode: str = "json"
    backups: list[str] = field(default_factory=list)
    tables: dict[str, TableCounts] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """JSON-ready data (no secret: the target is host:port/db only)."""
        return {
            "source": self.source, "target": self.target, "mode": self.mode, "strategy": self.strategy,
            "dry_run": self.dry_run, "backups": self.backups,
            "tables": {k: v.as_dict() for k, v in self.tables.items()},
            "notes": self.notes, "duration_seconds": round(self.seconds, 3),
        }


class Progress(Protocol):
    """Hears about each table as it is staged and applied (a terminal shows a progress bar)."""

    def staged(self, table: str, rows: int) -> None:
        """`rows` more rows of `table` were staged."""
        ...

    def applied(self, table: str, counts: TableCounts) -> None:
        """`table` was restored."""
        ...


class QuietProgress:
    """Progress that only logs."""

    def staged(self, table: str, rows: int) -> None:
        return None

    def applied(self, table: str, counts: TableCounts) -> None:
        log.info("table_restored", table=table, **counts.as_dict())


@dataclass
class ExportInput:
    """One export to stage: where it comes from and how to open its plain bytes."""

    label: str
    open: Callable[[], BinaryIO]
    manifest: Manifest | None = None


# -- where the exports come from ------------------------------------------------------------------


def backup_chain(destination: Destination, manifest: Manifest) -> list[Manifest]:
    """The full, then every incremental up to `manifest`, in restore order."""
    if manifest.kind == "full":
        return [manifest]
    if not manifest.base:
        raise IntegrityError(f"incremental backup {manifest.id} names no base full backup")
    chain = [manifest]
    current = manifest
    previous = getattr(current, "previous", None)
    if previous:
        while current.kind == "incremental":
            previous_id = getattr(current, "previous", None) or current.base
            assert previous_id is not None
            current = _chain_member(destination, previous_id, manifest)
            chain.append(current)
        chain.reverse()
    else:
        full = _chain_member(destination, manifest.base, manifest)
        incrementals = [m for m in destination.backups()
                        if m.kind == "incremental" and m.base == manifest.base and m.id <= manifest.id]
        if manifest.id not in {m.id for m in incrementals}:
            incrementals.append(manifest)
        chain = [full, *sorted(incrementals, key=lambda m: m.id)]
    if chain[0].kind != "full" or chain[0].id != manifest.base:
        raise IntegrityError(f"the chain of {manifest.id} does not start at its base {manifest.base}")
    return chain


def _chain_member(destination: Destination, backup_id: str, wanted: Manifest) -> Manifest:
    try:
        return destination.manifest(backup_id)
    except NotFound:
        raise RestoreError(
            f"incremental backup {wanted.id} needs {backup_id}, which is not at {destination.name} "
            "(the chain is broken)") from None


def make_decryptor(manifests: list[Manifest], gpg_homedir: Path | None,
                   identities: list[Path]) -> Decryptor | None:
    """A decryptor when any artifact is encrypted (the crypto module is imported only then)."""
    if not any(a.encryption != "none" for m in manifests for a in m.artifacts):
        return None
    try:
        from backupd.crypto import build_decryptor  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        raise RestoreError("the backup is encrypted and this backupd has no decryption support") from None
    decryptor: Decryptor = build_decryptor(gpg_homedir, identities)
    return decryptor


def open_artifact(destination: Destination, manifest: Manifest, entry: ArtifactEntry,
                  decryptor: Decryptor | None) -> BinaryIO:
    """Plain bytes of one artifact, verified (sha256, size) as they stream; IntegrityError at the end
    of the stream when they do not match."""
    where = f"{destination.name}:{manifest.id}/{entry.name}"
    try:
        raw = destination.open(manifest.id, entry.name)
    except NotFound:
        raise IntegrityError(f"backup {manifest.id} is incomplete: {entry.name} is missing at "
                             f"{destination.name}") from None
    return open_decoded(raw, entry, where, decryptor, list(manifest.encryption_recipients))


def backup_inputs(destination: Destination, chain: list[Manifest],
                  decryptor: Decryptor | None) -> list[ExportInput]:
    """One ExportInput per backup of the chain; refuses a backup without a JSON export."""
    inputs = []
    for manifest in chain:
        if manifest.export_version is not None:
            from backupd.jsonreader import check_version

            check_version(manifest.export_version, f"{destination.name}:{manifest.id}/manifest.json")
        entry = manifest.artifact_for("export")
        if entry is None:
            raise RestoreError(f"backup {manifest.id} has no JSON export", "use --sql to restore its SQL dump")

        def opener(m: Manifest = manifest, e: ArtifactEntry = entry) -> BinaryIO:
            return open_artifact(destination, m, e, decryptor)

        inputs.append(ExportInput(f"{destination.name}:{manifest.id}", opener, manifest))
    return inputs


def file_input(path: Path) -> ExportInput:
    """A JSON v2.0 file made elsewhere: plain, gzip or zstd (judged by its first bytes)."""
    try:
        with open(path, "rb") as probe:
            head = probe.read(8)
    except OSError as exc:
        raise RestoreError(f"cannot read {path}: {exc.strerror or exc}") from None

    def opener() -> BinaryIO:
        return decompress_stream(open(path, "rb"), sniff_compression(head), str(path))

    return ExportInput(str(path), opener, None)


# -- the target ----------------------------------------------------------------------------------


@dataclass
class TargetTable:
    """A table of the target and what the restore needs to know about it."""

    table: Table
    oid: int
    restore_columns: list[str] = field(default_factory=list)
    # the target table is empty and one export holds it: rows go straight from the raw staging
    direct: _CopySink | None = None
    # a full backup into an empty table: rows were inserted while the export streamed
    streamed: _DirectSink | _CopyTextSink | None = None
    # how each restored column's JSON becomes COPY text (None: some column is not converted here)
    copy_kinds: dict[str, str] | None = None
    # columns of type json (or a domain over it): a `\u0000` escape in them is loaded apart
    json_columns: set[str] = field(default_factory=set)
    # NOT NULL json/jsonb columns: a `null` in their rows can only be the JSON null
    json_not_null: set[str] = field(default_factory=set)
    # exactValues to set once the rows are in (direct and streamed loads)
    exact: list[ExactEntry] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.table.key


@dataclass
class ForeignKey:
    child: str
    parent: str
    name: str
    definition: str
    child_oid: int
    parent_oid: int


@dataclass
class Trigger:
    table: str
    name: str
    enabled: str


Conn = psycopg.Connection[tuple[Any, ...]]
# one exactValues entry: {"column", "key", "text"} (see docs/restore.md)
ExactEntry = dict[str, Any]


def _target_tables(conn: Conn, schemas: list[str]) -> dict[str, TargetTable]:
    tables = discover(conn, schemas, [], [], {})
    found: dict[str, TargetTable] = {}
    for table in tables:
        row = conn.execute("SELECT %s::regclass::oid", (table.sql_name,)).fetchone()
        assert row is not None
        found[table.key] = TargetTable(table, int(row[0]))
    by_oid = {t.oid: t for t in found.values()}
    for oid, column, is_json, not_null in conn.execute(
            """
            SELECT a.attrelid::oid, a.attname, b.oid = 'json'::regtype, a.attnotnull OR t.typnotnull
            FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
            JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
            WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
              AND b.oid IN ('json'::regtype, 'jsonb'::regtype)
            """, (list(by_oid),)).fetchall():
        if is_json:
            by_oid[int(oid)].json_columns.add(str(column))
        if not_null:
            by_oid[int(oid)].json_not_null.add(str(column))
    return found


def _typed(table: TargetTable, columns: list[str]) -> str:
    """The SELECT list taking `columns` from `json_populate_record`'s `r`: the JSON null of a NOT
    NULL json/jsonb column (which json_populate_record reads as SQL NULL) stays a JSON null."""
    return ", ".join(f"COALESCE(r.{quote_ident(c)}, 'null')" if c in table.json_not_null else f"r.{quote_ident(c)}"
                     for c in columns)


def _foreign_keys(conn: Conn, oids: list[int]) -> list[ForeignKey]:
    rows = conn.execute(
        """
        SELECT conrelid::regclass::text, confrelid::regclass::text, conname, pg_get_constraintdef(oid),
               conrelid::oid, confrelid::oid
        FROM pg_constraint WHERE contype = 'f' AND (conrelid = ANY(%s) OR confrelid = ANY(%s))
        ORDER BY conrelid::regclass::text, conname
        """, (oids, oids)).fetchall()
    return [ForeignKey(str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), int(r[5])) for r in rows]


def _triggers(conn: Conn, oids: list[int]) -> list[Trigger]:
    rows = conn.execute(
        """
        SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger
        WHERE tgrelid = ANY(%s) AND NOT tgisinternal AND tgenabled <> 'D' ORDER BY 1, 2
        """, (oids,)).fetchall()
    return [Trigger(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def _sequences(conn: Conn, oid: int) -> list[tuple[str, str]]:
    rows = conn.execute(
        """
        SELECT a.attname, s.oid::regclass::text
        FROM pg_depend d
        JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
        JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.refobjid = %s AND d.deptype IN ('a', 'i')
        """, (oid,)).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


# -- staging --------------------------------------------------------------------------------------


class _NulValues:
    """Takes the values holding a `\u0000` escape out of a table's rows (see
    backupd.copytext.take_nul_values) and keeps them as exactValues entries to set afterwards."""

    def __init__(self, table: TargetTable) -> None:
        self.table = table
        self.entries: list[ExactEntry] = []
        # (column, key) of values only the export's exactValues can give back
        self.needed: list[tuple[str, str]] = []

    def rows(self, rows: list[bytes]) -> list[bytes]:
        """`rows` without such values."""
        result = []
        for row in rows:
            row, taken = take_nul_values(row, self.table.table.primary_key, self.table.json_columns, self.table.key)
            if taken and not self.table.table.primary_key:
                raise RestoreError(f"{self.table.key} holds a json value with a \\u0000 escape and has no primary "
                                   "key: only the SQL restore (--sql) can load it")
            for value in taken:
                if value.text is None:
                    self.needed.append((value.column, canonical_json(value.key)))
                else:
                    self.entries.append({"column": value.column, "key": value.key, "text": value.text})
            result.append(row)
        return result


class _CopyStream:
    """A COPY FROM STDIN held open while a table's rows stream in."""

    def __init__(self, conn: Conn, statement: str) -> None:
        self.rows = 0
        self.keys: list[str] = []
        self.checksum: TableChecksum | None = None
        self.nul: _NulValues | None = None
        self._cm = conn.cursor().copy(statement)
        self._copy = self._cm.__enter__()
        self._done = False

    def _close(self) -> None:
        self._done = True
        self._cm.__exit__(None, None, None)

    def abort(self, exc: BaseException) -> None:
        """End an unfinished COPY (the transaction is rolled back after)."""
        if self._done:
            return
        self._done = True
        try:
            self._cm.__exit__(type(exc), exc, exc.__traceback__)
        except Exception:  # noqa: BLE001, S110 - the original error is what matters
            pass


class _CopySink(_CopyStream):
    """Writes a table's rows into a one-column temporary table through COPY."""

    def __init__(self, conn: Conn, temp_name: str, table: str, progress: Progress) -> None:
        self.temp_name = temp_name
        self.table = table
        self.progress = progress
        conn.execute(f"CREATE TEMP TABLE {temp_name} (line text) ON COMMIT DROP")
        super().__init__(conn, f"COPY {temp_name} (line) FROM STDIN {COPY_LINES}")

    def write_rows(self, rows: list[bytes]) -> None:
        if self.checksum is not None:
            self.checksum.add_lines(rows)
        data = b"\n".join(rows) + b"\n"
        if self.nul is not None and b"\\u0000" in data:
            data = b"\n".join(self.nul.rows(rows)) + b"\n"
        self._copy.write(data)
        self.rows += len(rows)
        self.progress.staged(self.table, len(rows))

    def finish(self, keys: list[str]) -> None:
        self.keys = keys
        self._close()


class _DirectSink:
    """Inserts a table's rows into the (empty) target table as they stream, a batch per statement
    (tables with a column type backupd.copytext does not convert)."""

    def __init__(self, conn: Conn, table: TargetTable, progress: Progress) -> None:
        self.conn = conn
        self.table = table
        self.progress = progress
        self.rows = 0
        self.keys: list[str] = []
        self.checksum: TableChecksum | None = None
        self.nul: _NulValues | None = _NulValues(table)
        name = table.table.sql_name
        cols = ", ".join(quote_ident(c) for c in table.restore_columns)
        typed = _typed(table, table.restore_columns)
        self.statement = (f"INSERT INTO {name} ({cols}) OVERRIDING SYSTEM VALUE SELECT {typed} "
                          f"FROM json_populate_recordset(NULL::{name}, %s::json) r")

    def write_rows(self, rows: list[bytes]) -> None:
        if self.checksum is not None:
            self.checksum.add_lines(rows)
        joined = b"[" + b",".join(rows) + b"]"
        if self.nul is not None and b"\\u0000" in joined:
            joined = b"[" + b",".join(self.nul.rows(rows)) + b"]"
        try:
            batch = joined.decode()
        except UnicodeDecodeError:
            raise IntegrityError(f"rows of {self.table.key} are not UTF-8 text") from None
        try:
            self.conn.execute(self.statement, (batch,))
        except psycopg.Error as exc:
            raise _load_error(self.table, exc) from None
        self.rows += len(rows)
        self.progress.staged(self.table.key, len(rows))

    def finish(self, keys: list[str]) -> None:
        self.keys = keys

    def abort(self, exc: BaseException) -> None:
        """Nothing to end: each batch is one statement."""
        return


class _CopyTextSink(_CopyStream):
    """Streams a table's rows into the (empty) target table through COPY, converted to COPY text
    in this process (see backupd.copytext): the server only parses COPY text."""

    def __init__(self, conn: Conn, table: TargetTable, backup_columns: list[str], progress: Progress) -> None:
        assert table.copy_kinds is not None
        self.table = table
        self.progress = progress
        self._converter = RowConverter(table.key, backup_columns, table.copy_kinds)
        cols = ", ".join(quote_ident(c) for c in self._converter.copy_columns)
        super().__init__(conn, f"COPY {table.table.sql_name} ({cols}) FROM STDIN")

    def write_rows(self, rows: list[bytes]) -> None:
        if self.checksum is not None:
            self.checksum.add_lines(rows)
        self._copy.write(self._converter.convert(rows))
        self.rows += len(rows)
        self.progress.staged(self.table.key, len(rows))

    def finish(self, keys: list[str]) -> None:
        self.keys = keys
        try:
            self._close()
        except psycopg.Error as exc:
            raise _load_error(self.table, exc) from None


def _load_error(table: TargetTable, exc: psycopg.Error) -> RestoreError:
    if isinstance(exc, psycopg.errors.NotNullViolation):
        return RestoreError(f"restoring {table.key} failed, target unchanged: {one_line(exc)}",
                            "a column the backup does not hold (excluded at backup time?) has no default "
                            "in the target")
    return RestoreError(f"restoring {table.key} failed, target unchanged: {one_line(exc)}"
                        + (f" ({_detail(exc)})" if _detail(exc) else ""))


def _copy_kinds(conn: Conn, table: TargetTable) -> dict[str, str] | None:
    """How each of `table.restore_columns` is converted to COPY text; None when one is not."""
    rows = conn.execute(
        """
        SELECT a.attname, bt.typname, bt.typcategory, bt.typtype, et.typname, et.typcategory, et.typtype
        FROM pg_attribute a
        JOIN pg_type t ON t.oid = a.atttypid
        JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
        LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
        WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
        """, (table.oid,)).fetchall()
    found = {str(r[0]): column_kind(str(r[1]), str(r[2]), str(r[3]),
                                    (str(r[4]), str(r[5]), str(r[6])) if r[4] is not None else None) for r in rows}
    kinds = {c: found.get(c) for c in table.restore_columns}
    if any(kind is None for kind in kinds.values()):
        return None
    return {c: JSONB_NOT_NULL if k == JSONB and c in table.json_not_null else k
            for c, k in kinds.items() if k is not None}


def _drop_indexes(conn: Conn, table: TargetTable) -> list[str]:
    """Drop the indexes of an empty table about to be bulk-loaded; returns the statements that
    build them again (key and unique constraints first: foreign keys need them)."""
    constraints = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s "
        "AND contype IN ('p', 'u', 'x') ORDER BY contype, conname", (table.oid,)).fetchall()
    indexes = conn.execute(
        """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
        WHERE i.indrelid = %s AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid
              AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x'))
        ORDER BY 1
        """, (table.oid,)).fetchall()
    rebuild = []
    for name, definition in constraints:
        conn.execute(f"ALTER TABLE {table.table.sql_name} DROP CONSTRAINT {quote_ident(str(name))}")
        rebuild.append(f"ALTER TABLE {table.table.sql_name} ADD CONSTRAINT {quote_ident(str(name))} {definition}")
    for name, definition in indexes:
        conn.execute(f"DROP INDEX {name}")
        rebuild.append(str(definition))
    return rebuild


@dataclass
class _Staged:
    """One export's staged rows per table."""

    input: ExportInput
    document: ExportDocument
    tables: dict[str, _CopySink | _DirectSink | _CopyTextSink]
    deleted: dict[str, list[Any]]
    # per table, the exactValues to set on its rows once they are loaded
    exact: dict[str, list[ExactEntry]] = field(default_factory=dict)


class JsonRestore:
    """One JSON restore into `target_dsn`; `run()` returns the report or raises (target unchanged)."""

    def __init__(self, target_dsn: str, inputs: list[ExportInput], *, strategy: Strategy = "upsert",
                 tables: list[str] | None = None, dry_run: bool = False,
                 progress: Progress | None = None, source_label: str = "") -> None:
        if strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
        self.dsn = target_dsn
        self.inputs = inputs
        self.strategy = strategy
        self.only = tables
        self.dry_run = dry_run
        self.progress = progress or QuietProgress()
        self.report = RestoreReport(source=source_label or inputs[-1].label, target=describe(target_dsn),
                                    strategy=strategy, dry_run=dry_run,
                                    backups=[i.manifest.id for i in inputs if i.manifest])

    def run(self) -> RestoreReport:
        """Stage, verify, apply, commit (or roll back for a dry run)."""
        began = time.monotonic()
        conn = connect(self.dsn, what="target database")
        try:
            conn.execute("SET LOCAL statement_timeout = 0")
            conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            # rebuilding indexes sorts, checking foreign keys joins: both in memory where they fit
            # (what pg_restore's documentation advises; these hold for this transaction only)
            conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
            conn.execute("SET LOCAL work_mem = '64MB'")
            self._restore(conn)
            if self.dry_run:
                conn.rollback()
                log.info("restore_rolled_back", reason="dry run")
            else:
                conn.commit()
        except psycopg.Error as exc:
            _rollback(conn)
            raise RestoreError(f"restore failed, target unchanged: {one_line(exc)}") from None
        except BaseException:
            _rollback(conn)
            raise
        finally:
            conn.close()
        self.report.seconds = time.monotonic() - began
        return self.report

    # -- phases -----------------------------------------------------------------------------

    def _restore(self, conn: Conn) -> None:
        schemas = self._schemas()
        target = _target_tables(conn, schemas)
        self._check_manifest_tables(target)
        streamed = self._streaming_tables(conn, target)
        prepared: tuple[list[ForeignKey], list[Trigger]] | None = None
        rebuild: list[str] = []
        if streamed:
            # one full backup, empty target tables: rows go straight in while the export streams
            # (still one transaction: a damaged artifact rolls everything back before COMMIT)
            prepared = self._prepare(conn, self._manifest_tables(target))
            for table in streamed:
                rebuild += _drop_indexes(conn, table)
        clock = time.monotonic()
        staged = [self._stage(conn, index, item, target, {t.key: t for t in streamed})
                  for index, item in enumerate(self.inputs)]
        log.info("restore_staged", seconds=round(time.monotonic() - clock, 1))
        order = self._table_order(target, staged)
        wanted = [key for key in order if any(key in s.tables for s in staged)]
        if self.only:
            missing = [t for t in self.only if t not in wanted]
            if missing:
                raise RestoreError(f"--tables: {', '.join(missing)} not in the backup")
        clock = time.monotonic()
        for key in wanted:
            if target[key].streamed is None:
                self._type(conn, target[key], staged)
        log.info("restore_typed", seconds=round(time.monotonic() - clock, 1))
        restored = [target[key] for key in wanted]
        if not restored:
            raise RestoreError("nothing to restore: the export holds no table of the target")
        if prepared is None:
            prepared = self._prepare(conn, restored)
        foreign_keys, triggers = prepared
        clock = time.monotonic()
        counts = {t.key: TableCounts(rows=self._staged_rows(conn, t)) for t in restored}
        if self.strategy == "replace":
            for table in reversed(restored):
                counts[table.key].deleted = self._delete_missing(conn, table)
        for table in restored:
            self._apply(conn, table, counts[table.key])
            self.report.tables[table.key] = counts[table.key]
            self.progress.applied(table.key, counts[table.key])
        log.info("restore_applied", seconds=round(time.monotonic() - clock, 1))
        clock = time.monotonic()
        for statement in rebuild:
            try:
                conn.execute(statement)
            except psycopg.errors.UniqueViolation as exc:
                raise IntegrityError(f"the backup holds duplicate keys: {one_line(exc)}") from None
        log.info("restore_indexes_built", seconds=round(time.monotonic() - clock, 1))
        clock = time.monotonic()
        self._add_foreign_keys(conn, foreign_keys, {t.oid for t in restored})
        log.info("restore_constraints_checked", seconds=round(time.monotonic() - clock, 1))
        for trigger in triggers:
            action = {"A": "ENABLE ALWAYS", "R": "ENABLE REPLICA"}.get(trigger.enabled, "ENABLE")
            conn.execute(f"ALTER TABLE {trigger.table} {action} TRIGGER {quote_ident(trigger.name)}")
        for table in restored:
            self._advance_sequences(conn, table)

    def _prepare(self, conn: Conn, tables: list[TargetTable]) -> tuple[list[ForeignKey], list[Trigger]]:
        """Disable the user triggers of `tables` and drop every foreign key touching them."""
        oids = [t.oid for t in tables]
        foreign_keys = _foreign_keys(conn, oids)
        triggers = _triggers(conn, oids)
        for trigger in triggers:
            conn.execute(f"ALTER TABLE {trigger.table} DISABLE TRIGGER {quote_ident(trigger.name)}")
        for fk in foreign_keys:
            conn.execute(f"ALTER TABLE {fk.child} DROP CONSTRAINT {quote_ident(fk.name)}")
        return foreign_keys, triggers

    def _manifest_tables(self, target: dict[str, TargetTable]) -> list[TargetTable]:
        manifest = self.inputs[0].manifest
        assert manifest is not None
        return [target[k] for k in self._table_order(target, [])
                if k in manifest.tables and (self.only is None or k in self.only)]

    def _streaming_tables(self, conn: Conn, target: dict[str, TargetTable]) -> list[TargetTable]:
        """Tables whose rows can go straight into the target: one full backup with a manifest,
        and the target table empty."""
        if len(self.inputs) != 1 or self.inputs[0].manifest is None or self.inputs[0].manifest.kind != "full":
            return []
        manifest = self.inputs[0].manifest
        streamed = []
        for table in self._manifest_tables(target):
            entry = manifest.tables[table.key]
            pk = table.table.primary_key
            columns = [c for c in table.table.columns
                       if c not in table.table.generated_columns and c in entry.columns]
            if not entry.columns or not pk or not all(c in columns for c in pk):
                continue  # the staged path explains what is wrong
            empty = conn.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {table.table.from_sql})").fetchone()
            if not (empty and empty[0]):
                continue
            self._note_ignored(table, entry.columns)
            table.restore_columns = columns
            table.copy_kinds = _copy_kinds(conn, table)
            streamed.append(table)
        return streamed

    def _note_ignored(self, table: TargetTable, backup_columns: Iterable[str]) -> None:
        ignored = [c for c in backup_columns if c not in table.table.columns]
        if ignored:
            self.report.notes.append(f"{table.key}: column(s) {', '.join(ignored)} of the backup are not "
                                     "in the target: not restored")

    def _schemas(self) -> list[str]:
        schemas: list[str] = []
        for item in self.inputs:
            if item.manifest:
                schemas += item.manifest.schemas
        return sorted(set(schemas or ["public"]))

    def _check_manifest_tables(self, target: dict[str, TargetTable]) -> None:
        for item in self.inputs:
            if item.manifest is None:
                continue
            keys = [k for k in item.manifest.tables if self.only is None or k in self.only]
            missing = [k for k in keys if k not in target]
            if missing:
                raise RestoreError(
                    f"the target has no table {', '.join(missing)} (backup {item.manifest.id} has it)",
                    "create the schema first (restore --sql into an empty database, or load schema.sql)")

    def _stage(self, conn: Conn, index: int, item: ExportInput, target: dict[str, TargetTable],
               streamed: dict[str, TargetTable]) -> _Staged:
        sinks: dict[str, _CopySink | _DirectSink | _CopyTextSink] = {}
        unknown: list[str] = []

        def handler(key: str) -> RowSink | None:
            if self.only is not None and key not in self.only:
                return None
            if key not in target:
                unknown.append(key)
                return None
            if key in sinks:
                raise IntegrityError(f"{item.label}: table {key!r} appears twice in the export")
            if key in streamed:
                table = streamed[key]
                backup_columns = item.manifest.tables[key].columns if item.manifest is not None else []
                direct: _DirectSink | _CopyTextSink
                if table.copy_kinds is not None and backup_columns:
                    direct = _CopyTextSink(conn, table, backup_columns, self.progress)
                else:
                    direct = _DirectSink(conn, table, self.progress)
                table.streamed = direct
                sinks[key] = direct
            else:
                sinks[key] = _CopySink(conn, f"backupd_raw_{index}_{len(sinks)}", key, self.progress)
                sinks[key].nul = _NulValues(target[key])
            entry = item.manifest.tables.get(key) if item.manifest is not None else None
            if entry is not None:
                sinks[key].checksum = TableChecksum.like(entry.checksum)
            return sinks[key]

        log.info("restore_staging", source=item.label)
        try:
            with item.open() as stream:
                document = ExportReader(stream, item.label).read(handler)
        except BaseException as exc:
            for sink in sinks.values():
                sink.abort(exc)
            raise
        if unknown:
            raise RestoreError(f"the target has no table {', '.join(unknown)} ({item.label} has it)",
                               "create the schema first, or leave it out with --tables")
        if item.manifest is not None:
            for key, sink in sinks.items():
                entry = item.manifest.tables.get(key)
                if entry is not None and entry.rows != sink.rows:
                    raise IntegrityError(f"{item.label}: {key} has {sink.rows} rows, the manifest says {entry.rows}")
                checksum = sink.checksum
                if checksum is not None:
                    checksum.add_exact_values(document.exact_values.get(key, []))
                if (entry is not None and checksum is not None and key not in document.altered
                        and checksum.hexdigest != entry.checksum):
                    raise IntegrityError(f"{item.label}: the rows of {key} do not match the manifest's checksum "
                                         "(changed after the backup was made)")
        for key, count in document.record_count.items():
            if key in sinks and count != sinks[key].rows:
                raise IntegrityError(f"{item.label}: {key} has {sinks[key].rows} rows, recordCount says {count}")
        deleted = {k: v for k, v in document.deleted.items() if k in target and (self.only is None or k in self.only)}
        exact = {key: self._exact_entries(item, key, sink, document) for key, sink in sinks.items()}
        for key, sink in sinks.items():
            if key in streamed:
                streamed[key].exact = exact[key]
        return _Staged(item, document, sinks, deleted, {k: v for k, v in exact.items() if v})

    def _exact_entries(self, item: ExportInput, key: str, sink: _CopySink | _DirectSink | _CopyTextSink,
                       document: ExportDocument) -> list[ExactEntry]:
        """A table's exactValues for one export: the document's, plus the json values with a
        `\\u0000` escape taken out of its rows; one entry per column and key."""
        entries: dict[tuple[str, str], ExactEntry] = {}
        nul = sink.nul
        for entry in [*(nul.entries if nul is not None else []), *document.exact_values.get(key, [])]:
            entries[(str(entry["column"]), canonical_json(entry["key"]))] = entry
        for column, row_key in (nul.needed if nul is not None else []):
            if (column, row_key) not in entries:
                raise RestoreError(f"{item.label}: {key}.{column} holds a value with a \\u0000 escape inside json "
                                   "that the JSON restore cannot load (the export has no exactValues entry for "
                                   "it)", "restore with --sql")
        return list(entries.values())

    def _set_exact(self, conn: Conn, table: TargetTable, relation: str, entries: list[ExactEntry]) -> None:
        """Set the exactValues `entries` on the rows of `relation` (the target table, or its typed
        staging) with their keys: values the rows' JSON did not carry exactly."""
        pk = table.table.primary_key
        types: dict[str, str] = dict(conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s "
            "AND attnum > 0 AND NOT attisdropped", (table.oid,)).fetchall())
        columns = sorted({str(e["column"]) for e in entries if e["column"] in table.restore_columns})
        if not columns or not pk:
            return
        conn.execute("CREATE TEMP TABLE backupd_exact (k text, c text, v text) ON COMMIT DROP")
        with conn.cursor().copy("COPY backupd_exact (k, c, v) FROM STDIN") as copy:
            for entry in entries:
                copy.write_row((canonical_json(entry["key"]), entry["column"], entry["text"]))
        keys = ", ".join(f"r.{quote_ident(c)}" for c in pk)
        match = " AND ".join(f"t.{quote_ident(c)} = e.{quote_ident(c)}" for c in pk)
        for column in columns:
            try:
                conn.execute(
                    f"UPDATE {relation} t SET {quote_ident(column)} = e.v::{types[column]} FROM (SELECT {keys}, x.v "
                    f"FROM backupd_exact x, LATERAL json_populate_record(NULL::{table.table.sql_name}, x.k::json) r "
                    f"WHERE x.c = %s) e WHERE {match}", (column,))
            except psycopg.Error as exc:
                raise RestoreError(f"restoring {table.key} failed, target unchanged: {one_line(exc)}") from None
        conn.execute("DROP TABLE backupd_exact")

    def _table_order(self, target: dict[str, TargetTable], staged: list[_Staged]) -> list[str]:
        for item in reversed(self.inputs):
            if item.manifest and item.manifest.table_order:
                order = [k for k in item.manifest.table_order if k in target]
                return order + [k for k in target if k not in order]
        return list(target)  # discover() returns foreign-key order

    def _staging_name(self, table: TargetTable) -> str:
        return f"backupd_s_{table.oid}"

    def _type(self, conn: Conn, table: TargetTable, staged: list[_Staged]) -> None:
        """Typed staging of one table: the chain folded into the final rows."""
        backup_columns: dict[str, None] = {}
        for item in staged:
            manifest = item.input.manifest
            if manifest is not None and table.key in manifest.tables and manifest.tables[table.key].columns:
                backup_columns.update(dict.fromkeys(manifest.tables[table.key].columns))
            elif table.key in item.tables:
                backup_columns.update(dict.fromkeys(item.tables[table.key].keys))
        target_columns = [c for c in table.table.columns if c not in table.table.generated_columns]
        columns = [c for c in target_columns if c in backup_columns]
        self._note_ignored(table, backup_columns)
        table.restore_columns = columns
        pk = table.table.primary_key
        if pk and not all(c in columns for c in pk):
            raise RestoreError(f"{table.key}: the backup lacks primary-key column(s) "
                               f"{', '.join(c for c in pk if c not in columns)}")
        if not pk and self.strategy != "replace":
            raise RestoreError(f"{table.key} has no primary key: only --strategy replace can restore it")
        cols = ", ".join(quote_ident(c) for c in columns)
        typed = _typed(table, columns)
        holders = [item for item in staged if table.key in item.tables or item.deleted.get(table.key)]
        if len(holders) == 1 and not holders[0].deleted.get(table.key):
            empty = conn.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {table.table.from_sql})").fetchone()
            if empty and empty[0]:
                # nothing to match against: skip the typed copy, insert straight from the raw rows
                holder = holders[0].tables[table.key]
                assert isinstance(holder, _CopySink)
                table.direct = holder
                table.exact = holders[0].exact.get(table.key, [])
                return
        name = self._staging_name(table)
        conn.execute(f"CREATE TEMP TABLE {name} ON COMMIT DROP AS SELECT {cols} FROM {table.table.from_sql} "
                     "WITH NO DATA")
        pk_cols = ", ".join(quote_ident(c) for c in pk)
        for step, item in enumerate(staged):
            found = item.tables.get(table.key)
            sink = found if isinstance(found, _CopySink) else None
            deleted = item.deleted.get(table.key) or []
            if step > 0 and pk and (sink is not None or deleted):
                if deleted:
                    self._stage_deleted(conn, table, deleted, item.input.label)
                    conn.execute(f"DELETE FROM {name} WHERE ({pk_cols}) IN (SELECT {pk_cols} FROM backupd_deleted)")
                    conn.execute("DROP TABLE backupd_deleted")
                if sink is not None:
                    conn.execute(
                        f"DELETE FROM {name} WHERE ({pk_cols}) IN (SELECT {', '.join(f'r.{quote_ident(c)}' for c in pk)} "
                        f"FROM {sink.temp_name} x, LATERAL json_populate_record(NULL::{table.table.sql_name}, "
                        "x.line::json) r)")
            if sink is not None:
                try:
                    conn.execute(f"INSERT INTO {name} ({cols}) SELECT {typed} FROM {sink.temp_name} x, "
                                 f"LATERAL json_populate_record(NULL::{table.table.sql_name}, x.line::json) r")
                except psycopg.Error as exc:
                    raise RestoreError(f"{item.input.label}: rows of {table.key} do not fit the target: "
                                       f"{one_line(exc)}") from None
                conn.execute(f"DROP TABLE {sink.temp_name}")
            if item.exact.get(table.key):
                # a later export's rows replace earlier ones with their entries, so each export's
                # entries are set right after its rows
                self._set_exact(conn, table, name, item.exact[table.key])
        if pk:
            try:
                conn.execute(f"ALTER TABLE {name} ADD PRIMARY KEY ({pk_cols})")
            except psycopg.errors.UniqueViolation as exc:
                raise IntegrityError(f"the backup holds duplicate primary keys in {table.key}: "
                                     f"{one_line(exc)}") from None
        conn.execute(f"ANALYZE {name}")

    def _stage_deleted(self, conn: Conn, table: TargetTable, keys: list[Any], label: str) -> None:
        pk = table.table.primary_key
        lines = []
        for key in keys:
            if isinstance(key, dict):
                if not all(c in key for c in pk):
                    raise IntegrityError(f"{label}: a deleted key of {table.key} lacks {', '.join(pk)}")
                lines.append(json.dumps(key, ensure_ascii=False))
            elif len(pk) == 1 and not isinstance(key, (list, type(None))):
                lines.append(json.dumps({pk[0]: key}, ensure_ascii=False))
            else:
                raise IntegrityError(f"{label}: deleted keys of {table.key} must be objects of "
                                     f"{', '.join(pk)}")
        conn.execute("CREATE TEMP TABLE backupd_deleted_raw (line text) ON COMMIT DROP")
        with conn.cursor().copy(f"COPY backupd_deleted_raw (line) FROM STDIN {COPY_LINES}") as copy:
            for start in range(0, len(lines), 5000):
                copy.write(("\n".join(lines[start:start + 5000]) + "\n").encode())
        pk_typed = ", ".join(f"r.{quote_ident(c)}" for c in pk)
        conn.execute(f"CREATE TEMP TABLE backupd_deleted ON COMMIT DROP AS SELECT {pk_typed} "
                     f"FROM backupd_deleted_raw x, LATERAL json_populate_record(NULL::{table.table.sql_name}, "
                     "x.line::json) r")
        conn.execute("DROP TABLE backupd_deleted_raw")

    def _staged_rows(self, conn: Conn, table: TargetTable) -> int:
        if table.streamed is not None:
            return table.streamed.rows
        if table.direct is not None:
            return table.direct.rows
        row = conn.execute(f"SELECT count(*) FROM {self._staging_name(table)}").fetchone()
        return int(row[0]) if row else 0

    def _delete_missing(self, conn: Conn, table: TargetTable) -> int:
        if table.streamed is not None:
            return 0  # the target table was empty
        if table.direct is not None:
            return 0  # the target table was empty
        pk = table.table.primary_key
        name = self._staging_name(table)
        if pk:
            match = " AND ".join(f"s.{quote_ident(c)} = t.{quote_ident(c)}" for c in pk)
            statement = (f"WITH d AS (DELETE FROM {table.table.from_sql} t WHERE NOT EXISTS "
                         f"(SELECT 1 FROM {name} s WHERE {match}) RETURNING 1) SELECT count(*) FROM d")
        else:
            statement = f"WITH d AS (DELETE FROM {table.table.from_sql} RETURNING 1) SELECT count(*) FROM d"
        row = conn.execute(statement).fetchone()
        return int(row[0]) if row else 0

    def _apply(self, conn: Conn, table: TargetTable, counts: TableCounts) -> None:
        columns = table.restore_columns
        pk = table.table.primary_key
        name = self._staging_name(table)
        cols = ", ".join(quote_ident(c) for c in columns)
        insert = (f"INSERT INTO {table.table.sql_name} AS t ({cols}) OVERRIDING SYSTEM VALUE "
                  f"SELECT {cols} FROM {name}")
        strategy = self.strategy
        if table.streamed is not None:
            counts.inserted = table.streamed.rows
            if table.exact:
                self._set_exact(conn, table, table.table.from_sql, table.exact)
            return
        if table.direct is not None:
            raw = table.direct.temp_name
            typed = _typed(table, columns)
            direct = (f"INSERT INTO {table.table.sql_name} ({cols}) OVERRIDING SYSTEM VALUE SELECT {typed} "
                      f"FROM {raw} x, LATERAL json_populate_record(NULL::{table.table.sql_name}, x.line::json) r")
            try:
                cursor = conn.execute(direct)
            except psycopg.errors.UniqueViolation as exc:
                raise IntegrityError(f"the backup holds duplicate keys in {table.key}: {one_line(exc)}") from None
            except psycopg.Error as exc:
                raise RestoreError(f"restoring {table.key} failed, target unchanged: {one_line(exc)}"
                                   + (f" ({_detail(exc)})" if _detail(exc) else "")) from None
            counts.inserted = cursor.rowcount
            conn.execute(f"DROP TABLE {raw}")
            if table.exact:
                self._set_exact(conn, table, table.table.from_sql, table.exact)
            return
        if strategy == "merge" and "updated_at" not in columns:
            strategy = "upsert"
            counts.note = "no updated_at: restored as upsert"
            self.report.notes.append(f"{table.key}: no updated_at column, merged as upsert (backup rows win)")
        if not pk:
            statement = f"WITH r AS ({insert} RETURNING true AS inserted) "
        else:
            others = [c for c in columns if c not in pk]
            conflict = f" ON CONFLICT ({', '.join(quote_ident(c) for c in pk)}) "
            if not others:
                statement = f"WITH r AS ({insert}{conflict}DO NOTHING RETURNING true AS inserted) "
            else:
                assignments = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in others)
                differs = " OR ".join(f"t.{quote_ident(c)}::text IS DISTINCT FROM EXCLUDED.{quote_ident(c)}::text"
                                      for c in others)
                condition = f"({differs})"
                if strategy == "merge":
                    condition += (" AND (EXCLUDED.updated_at > t.updated_at OR "
                                  "(t.updated_at IS NULL AND EXCLUDED.updated_at IS NOT NULL))")
                if table.table.partitioned:
                    # a partitioned table's rows have no xmax here: which keys existed before is
                    # read in the same statement (every CTE sees the snapshot before the insert)
                    keys = ", ".join(quote_ident(c) for c in pk)
                    statement = (f"WITH existing AS (SELECT {keys} FROM {table.table.sql_name} "
                                 f"WHERE ({keys}) IN (SELECT {keys} FROM {name})), "
                                 f"r AS ({insert}{conflict}DO UPDATE SET {assignments} WHERE {condition} "
                                 f"RETURNING ({keys}) NOT IN (SELECT {keys} FROM existing) AS inserted) ")
                else:
                    statement = (f"WITH r AS ({insert}{conflict}DO UPDATE SET {assignments} WHERE {condition} "
                                 "RETURNING (xmax = 0) AS inserted) ")
        statement += "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM r"
        try:
            row = conn.execute(statement).fetchone()
        except psycopg.errors.UniqueViolation as exc:
            hint = ("--strategy replace removes target-only rows first" if self.strategy != "replace" else None)
            raise RestoreError(f"restoring {table.key} failed, target unchanged: {one_line(exc)} "
                               f"({_detail(exc)})", hint) from None
        except psycopg.errors.NotNullViolation as exc:
            column = getattr(exc.diag, "column_name", None) or ""
            hint = None
            if column and column not in columns:
                hint = (f"{table.key}.{column} is not in the backup (excluded at backup time?) and has no "
                        "default in the target: give it a default, or restore into rows that already exist")
            raise RestoreError(f"restoring {table.key} failed, target unchanged: {one_line(exc)}", hint) from None
        except psycopg.Error as exc:
            raise RestoreError(f"restoring {table.key} failed, target unchanged: {one_line(exc)}"
                               + (f" ({_detail(exc)})" if _detail(exc) else "")) from None
        assert row is not None
        counts.inserted, counts.updated = int(row[0]), int(row[1])
        counts.unchanged = counts.rows - counts.inserted - counts.updated

    def _add_foreign_keys(self, conn: Conn, foreign_keys: list[ForeignKey], restored: set[int]) -> None:
        for fk in foreign_keys:
            try:
                conn.execute(f"ALTER TABLE {fk.child} ADD CONSTRAINT {quote_ident(fk.name)} {fk.definition}")
            except psycopg.errors.ForeignKeyViolation as exc:
                detail = _detail(exc)
                if fk.child_oid in restored and fk.parent_oid not in restored:
                    message = (f"restore refused: rows of {fk.child} would point at {fk.parent} rows that are "
                               f"neither in the target nor restored (foreign key {fk.name}: {detail})")
                    hint = f"restore {fk.parent} too (add it to --tables)"
                elif fk.child_oid not in restored:
                    message = (f"restore refused: rows of {fk.child} (not restored) point at {fk.parent} rows "
                               f"the restore would remove or that do not exist (foreign key {fk.name}: {detail})")
                    hint = f"restore {fk.child} too, or use --strategy upsert"
                else:
                    message = (f"restore refused: rows of {fk.child} would point at {fk.parent} rows that are "
                               f"neither in the target nor restored (foreign key {fk.name}: {detail})")
                    hint = None
                raise RestoreError(message, hint) from None
            except psycopg.errors.InsufficientPrivilege as exc:
                raise RestoreError(f"restore needs to own {fk.child}: {one_line(exc)}") from None

    def _advance_sequences(self, conn: Conn, table: TargetTable) -> None:
        for column, sequence in _sequences(conn, table.oid):
            if column not in table.restore_columns:
                continue
            conn.execute(
                sql.SQL("SELECT setval({seq}, m) FROM (SELECT max({col})::bigint AS m FROM {tbl}) x, "
                        "{seqname} s WHERE m IS NOT NULL AND m > CASE WHEN s.is_called THEN s.last_value "
                        "ELSE s.last_value - 1 END").format(
                    seq=sql.Literal(sequence), col=sql.Identifier(column),
                    tbl=sql.SQL(table.table.sql_name), seqname=sql.SQL(sequence)))


def _detail(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    detail = getattr(diag, "message_detail", None) if diag is not None else None
    return str(detail) if detail else ""


def _rollback(conn: Conn) -> None:
    try:
        conn.rollback()
    except psycopg.Error:
        pass


def iter_tables(report: RestoreReport) -> Iterator[tuple[str, TableCounts]]:
    """The report's tables in restore order."""
    yield from report.tables.items()
