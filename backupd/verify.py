"""`backupd verify`: prove a stored backup is whole, and (with a restore test) that it restores.

Three levels, each on top of the previous one:

1. Every artifact is streamed from the destination; its size and sha256 are checked against the
   manifest while it streams (`pipeline.open_decoded`), and it is decoded (decrypted,
   decompressed) to its very end, so a truncated or corrupt stream is caught.
2. While streaming, the contents are counted: rows per table in `data.sql` (its COPY blocks) and
   in the JSON export (rows, `recordCount` and the per-table content checksum), each compared
   with the manifest, so a manifest whose rows disagree fails naming the table.
3. `--restore-test` restores the backup into scratch databases, one per half (`schema.sql` +
   `data.sql` through psql; `schema.sql` then the JSON rows), and compares every table's rows and
   content checksum with the manifest. The time each restore took is the measured RTO.

Scratch databases are created on `[verify] scratch_dsn` when it is set, else on a throwaway
PostgreSQL that backupd starts for the test and stops afterwards (never the source's server); the
backup loads as an unprivileged role, psql refuses its backslash commands, and each psql restore
is bounded by `[verify] restore_timeout` (`backupd.scratch`, `backupd.sqlrestore`).

Every verification is recorded: `status.json` `last_drill` (a failed one turns health
`failing`), a line in `history.jsonl`, the per-backup record `verify.json` that `list` flags
from, the metrics file, and a `verify_failed` alert when it failed. `[verify] schedule` runs the
same drill from the daemon (`run_scheduled_drills`).
"""

from __future__ import annotations

import io
import json
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import psycopg
import structlog

from backupd.catalog import describe_table
from backupd.checksum import DEFAULT_ALGORITHM, TableChecksum
from backupd.config import Config, DestinationConfig
from backupd.crypto import holds_private_key
from backupd.db import connect, one_line, quote_ident
from backupd.destinations import build
from backupd.destinations.base import Destination
from backupd.errors import BackupdError, CommandError, NotFound, SourceError, UsageError
from backupd.jsonreader import ExportReader
from backupd.lines import bounded_lines
from backupd.manifest import ArtifactEntry, Manifest, iso, now_utc
from backupd.signing import Trust, TrustedDestination, resolve
from backupd.pipeline import Decryptor, VerifyingReader, open_decoded
from backupd.redact import redact, withhold_row_data
from backupd.scratch import ScratchServer, scratch_server
from backupd.sources.json_export import table_checksum
from backupd import progress
from backupd.status import StatusStore

log = structlog.get_logger("backupd.verify")

VERIFY_RECORDS = "verify.json"
NO_PRIVATE_KEY_NOTE = "no private key: stored bytes checked, contents not decrypted"
DRILL_INTERVALS = {"daily": timedelta(days=1), "weekly": timedelta(days=7)}
# the per-table checksum depends on how the session renders timestamptz: compare in UTC
COMPARE_TIMEZONE = "UTC"


# -- results ----------------------------------------------------------------------------------------


@dataclass
class ArtifactCheck:
    """One artifact's verdict: `detail` says what was proven, `error` what failed."""

    name: str
    bytes: int
    ok: bool = True
    detail: str = ""
    error: str | None = None

    def record(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"name": self.name, "bytes": self.bytes, "ok": self.ok, "detail": self.detail,
                "error": redact(self.error) if self.error else None}


@dataclass
class RestoreHalf:
    """One restored half (`sql` or `json`): how long its restore took and what did not match."""

    name: str
    seconds: float = 0.0
    tables_checked: int = 0
    rows: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when it restored and every table matched the manifest."""
        return not self.errors

    def record(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"ok": self.ok, "restore_seconds": round(self.seconds, 3), "tables": self.tables_checked,
                "rows": self.rows, "errors": [redact(e) for e in self.errors]}


@dataclass
class RestoreTest:
    """The outcome of `--restore-test`."""

    server: str = ""
    halves: list[RestoreHalf] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every half restored and matched."""
        return self.error is None and bool(self.halves) and all(h.ok for h in self.halves)

    @property
    def rto_seconds(self) -> float:
        """The slowest half's restore time: what getting the data back costs."""
        return max((h.seconds for h in self.halves), default=0.0)

    def record(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"ok": self.ok, "server": self.server, "seconds": round(self.seconds, 3),
                "rto_seconds": round(self.rto_seconds, 3),
                "halves": {h.name: h.record() for h in self.halves},
                "error": redact(self.error) if self.error else None}


@dataclass
class VerifyReport:
    """A whole verification of one backup at one destination."""

    backup_id: str
    destination: str
    kind: str
    started: datetime
    trigger: str = "manual"
    finished: datetime | None = None
    artifacts: list[ArtifactCheck] = field(default_factory=list)
    restore_test: RestoreTest | None = None
    restore_requested: bool = False
    error: str | None = None
    stored_only: bool = False  # no private key: encrypted artifacts checked as stored bytes only

    @property
    def level(self) -> str:
        """What kind of verification this is: `stored` (size and sha256 of the stored bytes only:
        no private key), `decoded` (every artifact decoded to its end, rows counted), `restored`
        (and restored into scratch databases, compared with the manifest)."""
        if self.restore_requested:
            return "restored"
        return "stored" if self.stored_only else "decoded"

    @property
    def note(self) -> str | None:
        """What a reader of a passed verification must know about its limits, if anything."""
        return NO_PRIVATE_KEY_NOTE if self.stored_only else None

    @property
    def ok(self) -> bool:
        """Every artifact whole and, when asked, the restore test passed."""
        if self.error or not all(a.ok for a in self.artifacts):
            return False
        return not self.restore_requested or (self.restore_test is not None and self.restore_test.ok)

    @property
    def outcome(self) -> str:
        """`passed` or `failed`."""
        return "passed" if self.ok else "failed"

    @property
    def seconds(self) -> float:
        """Wall time of the whole verification."""
        end = self.finished or datetime.now(UTC)
        return round((end - self.started).total_seconds(), 3)

    def failure(self) -> str | None:
        """The first problem found, as one line naming the artifact or table (None when ok)."""
        if self.error:
            return self.error
        for artifact in self.artifacts:
            if not artifact.ok:
                return f"{artifact.name}: {artifact.error}"
        test = self.restore_test
        if self.restore_requested and test is not None and not test.ok:
            if test.error:
                return f"restore test: {test.error}"
            for half in test.halves:
                if half.errors:
                    more = f" (+{len(half.errors) - 1} more)" if len(half.errors) > 1 else ""
                    return f"restore test ({half.name}): {half.errors[0]}{more}"
        return None

    def record(self) -> dict[str, Any]:
        """What status.json's `last_drill` and history.jsonl keep."""
        failure = self.failure()
        return {
            "id": self.backup_id,
            "destination": self.destination,
            "kind": self.kind,
            "trigger": self.trigger,
            "restore_test": self.restore_requested,
            "started": iso(self.started),
            "finished": iso(self.finished or datetime.now(UTC)),
            "seconds": self.seconds,
            "outcome": self.outcome,
            "verify_level": self.level,
            "note": self.note,
            "error": redact(failure) if failure else None,
            "rto_seconds": round(self.restore_test.rto_seconds, 3) if self.restore_test else None,
            "host": socket.gethostname(),
        }

    def as_json(self) -> dict[str, Any]:
        """The full report for `verify --json`."""
        return {**self.record(), "artifacts": [a.record() for a in self.artifacts],
                "restore": self.restore_test.record() if self.restore_test else None}


# -- finding the backup -----------------------------------------------------------------------------


def _table_key(schema: str, name: str) -> str:
    return name if schema == "public" else f"{schema}.{name}"


def _split_key(key: str) -> tuple[str, str]:
    schema, dot, name = key.partition(".")
    return (schema, name) if dot else ("public", key)


# -- streaming checks -------------------------------------------------------------------------------


def _split_qualified(text: str) -> tuple[str, str] | None:
    """`public.tasks`, `"My Schema"."Order"` -> (schema, table); None when it is not a qualified name."""
    parts: list[str] = []
    index = 0
    while index < len(text):
        if text[index] == '"':
            end = index + 1
            name = []
            while end < len(text):
                if text[end] == '"':
                    if end + 1 < len(text) and text[end + 1] == '"':
                        name.append('"')
                        end += 2
                        continue
                    break
                name.append(text[end])
                end += 1
            parts.append("".join(name))
            index = end + 1
        else:
            end = text.find(".", index)
            end = len(text) if end < 0 else end
            parts.append(text[index:end])
            index = end
        if index < len(text):
            if text[index] != ".":
                return None
            index += 1
    return (parts[0], parts[1]) if len(parts) == 2 else None


_COPY_LINE = re.compile(rb"^COPY (?P<name>.+?)(?: \(.*\))? FROM stdin;\s*$")


def count_copy_rows(stream: BinaryIO, where: str = "data.sql") -> dict[str, int]:
    """Rows per table (by export key) in the COPY blocks of a plain SQL dump, read to the end.
    Raises IntegrityError at a line over 64 MiB (`backupd.lines`)."""
    counts: dict[str, int] = {}
    current: str | None = None
    rows = 0
    for line in bounded_lines(stream, where):
        if current is not None:
            if line.rstrip(b"\r\n") == b"\\.":
                counts[current] = counts.get(current, 0) + rows
                current = None
            else:
                rows += 1
            continue
        if line.startswith(b"COPY "):
            match = _COPY_LINE.match(line)
            qualified = _split_qualified(match.group("name").decode("utf-8", "replace")) if match else None
            if qualified is not None:
                current = _table_key(*qualified)
                rows = 0
    return counts


class _CountingSink:
    """A RowSink that only counts a table's rows and sums their checksum."""

    def __init__(self, checksum: TableChecksum) -> None:
        self.checksum = checksum

    def write_rows(self, rows: list[bytes]) -> None:
        self.checksum.add_lines(rows)

    def finish(self, keys: list[str]) -> None:
        return None


def _check_export(stream: BinaryIO, manifest: Manifest, where: str) -> tuple[str, list[str]]:
    tables: dict[str, TableChecksum] = {}

    def handler(key: str) -> _CountingSink:
        entry = manifest.tables.get(key)
        checksum = (TableChecksum.like(entry.checksum) if entry is not None else None) or TableChecksum()
        tables[key] = checksum
        return _CountingSink(checksum)

    document = ExportReader(stream, where).read(handler)
    problems: list[str] = []
    for key, checksum in tables.items():
        checksum.add_exact_values(document.exact_values.get(key, []))
        if key in document.record_count and document.record_count[key] != checksum.rows:
            problems.append(f"table {key}: {checksum.rows} rows, its recordCount says {document.record_count[key]}")
    if manifest.kind == "full":
        # an incremental's export holds the changed rows only; its manifest describes the tables
        for key, entry in manifest.tables.items():
            found = tables.get(key)
            if found is None:
                problems.append(f"table {key}: missing from the export")
            elif found.rows != entry.rows:
                problems.append(f"table {key}: {found.rows} rows, the manifest says {entry.rows}")
            elif TableChecksum.like(entry.checksum) is not None and found.hexdigest != entry.checksum:
                problems.append(f"table {key}: content checksum differs from the manifest")
    rows = sum(c.rows for c in tables.values())
    return f"{len(tables)} tables, {rows} rows match the manifest", problems


def _check_data_sql(stream: BinaryIO, manifest: Manifest, where: str) -> tuple[str, list[str]]:
    counts = count_copy_rows(stream, where)
    if not counts:
        return "decodes to the end (no COPY blocks: rows not counted)", []
    problems = []
    for key, entry in manifest.tables.items():
        found = counts.get(key)
        if found is None:
            if entry.rows:
                problems.append(f"table {key}: no COPY data, the manifest says {entry.rows} rows")
        elif found != entry.rows:
            problems.append(f"table {key}: {found} rows, the manifest says {entry.rows}")
    return f"{len(counts)} tables, {sum(counts.values())} rows match the manifest", problems


def _drain(stream: BinaryIO) -> int:
    total = 0
    while chunk := stream.read(1 << 20):
        total += len(chunk)
    return total


def check_artifact(destination: Destination, manifest: Manifest, entry: ArtifactEntry,
                   decryptor: Decryptor | None, *, stored_only: bool = False) -> ArtifactCheck:
    """Stream one artifact: size, sha256, decoding to the end, and its rows against the manifest.
    `stored_only` (no private key for an encrypted artifact): size and sha256 of the stored bytes."""
    check = ArtifactCheck(entry.name, entry.bytes)
    where = f"{destination.name}:{manifest.id}/{entry.name}"
    try:
        raw = destination.open(manifest.id, entry.name)
    except NotFound:
        check.ok, check.error = False, f"missing at {destination.name}"
        return check
    except BackupdError as exc:
        check.ok, check.error = False, str(exc)
        return check
    try:
        if stored_only:
            with io.BufferedReader(VerifyingReader(raw, entry, where), 1 << 20) as stored:
                _drain(stored)
            check.detail = "size and sha256 of the stored bytes match (not decrypted: no private key)"
            return check
        with open_decoded(raw, entry, where, decryptor, manifest.encryption_recipients) as plain:
            problems: list[str] = []
            if entry.content == "export" and entry.name.startswith("export.json"):
                check.detail, problems = _check_export(plain, manifest, where)
            elif entry.content == "data" and manifest.kind == "full":
                check.detail, problems = _check_data_sql(plain, manifest, where)
            else:
                check.detail = f"decodes to the end ({_drain(plain)} bytes)"
        if problems:
            check.ok, check.error = False, "; ".join(problems)
        else:
            check.detail = "size and sha256 match; " + check.detail
    except BackupdError as exc:
        check.ok = False
        message = str(exc)
        check.error = message[len(where) + 2:] if message.startswith(where + ": ") else message
    except OSError as exc:
        check.ok, check.error = False, f"read failed: {exc}"
    finally:
        raw.close()
    return check


# -- scratch databases ------------------------------------------------------------------------------


# -- restoring --------------------------------------------------------------------------------------


def _psql_restore(server: ScratchServer, dsn: str, destination: Destination, manifest: Manifest,
                  entries: list[ArtifactEntry], decryptor: Decryptor | None, timeout: float) -> None:
    """Stream the artifacts into psql (one transaction, stop at the first error, no backslash
    command, bounded by `timeout` seconds)."""
    from backupd.sqlrestore import artifact_lines, psql_stream

    # pg_dump 17+ writes a setting an older server refuses (see backupd.sqlrestore)
    old_server = server.version_num < 170000
    parts = (part for entry in entries
             for part in artifact_lines(destination, manifest, entry, decryptor, drop_transaction_timeout=old_server))
    psql_stream(server.psql, dsn, parts, timeout=timeout)


def compare_with_manifest(dsn: str, manifest: Manifest) -> tuple[int, int, list[str]]:
    """(tables checked, rows, mismatches) of a restored database against the manifest's rows and
    content checksums, computed over the manifest's columns."""
    problems: list[str] = []
    rows = 0
    for key, found in _checksums(dsn, manifest).items():
        entry = manifest.tables[key]
        if isinstance(found, str):
            problems.append(f"table {key}: {found}")
            continue
        rows += found[0]
        if found[0] != entry.rows:
            problems.append(f"table {key}: {found[0]} rows restored, the manifest says {entry.rows}")
        elif found[1] != entry.checksum:
            problems.append(f"table {key}: content checksum of the restored rows differs from the manifest")
    return len(manifest.tables), rows, problems


def run_restore_test(config: Config, destination: Destination, manifest: Manifest,
                     decryptor: Decryptor | None) -> RestoreTest:
    """Restore both halves into scratch databases and compare them with the manifest.

    The SQL half is `backupd.sqlrestore.restore_sql` (what `restore --sql` runs); the JSON half is
    schema.sql through psql, then `backupd.restore.JsonRestore` of the backup's chain (what
    `restore` runs). A full backup's tables are compared with its manifest (rows and checksums).
    An incremental's manifest only describes its changed rows, so there the JSON chain's result is
    compared with the SQL half (the dump is full in every backup, from the same snapshot).

    Never raises for a restore that fails: the failure is in the result. Raises BackupdError only
    when there is nowhere to restore to (no scratch server).
    """
    from backupd.restore import JsonRestore, backup_chain, backup_inputs
    from backupd.sqlrestore import restore_sql

    test = RestoreTest()
    began = time.monotonic()
    schema = manifest.artifact_for("schema")
    data = manifest.artifact_for("data")
    export = manifest.artifact_for("export")
    if schema is None or (data is None and export is None):
        test.error = "the backup has no schema.sql and data to restore"
        return test
    if manifest.kind != "full" and data is None:
        test.error = (f"incremental backup {manifest.id} has no SQL dump to compare its JSON chain with; "
                      f"restore-test its full {manifest.base}")
        return test
    token = f"{manifest.id.lower()}_{secrets.token_hex(3)}"
    timeout = config.verify.restore_timeout.total_seconds()
    with scratch_server(config, manifest) as server:
        test.server = server.description
        restored: dict[str, str] = {}
        if data is not None:
            def sql_half(dsn: str) -> None:
                restore_sql(destination, manifest, dsn, decryptor, timeout=timeout)

            test.halves.append(_restore_half("sql", server, f"backupd_drill_{token}_sql", sql_half, restored))
        if export is not None:
            def json_half(dsn: str) -> None:
                _psql_restore(server, dsn, destination, manifest, [schema], decryptor, timeout)
                _relax_excluded_columns(dsn, manifest)
                chain = backup_chain(destination, manifest)
                JsonRestore(dsn, backup_inputs(destination, chain, decryptor),
                            source_label=f"{destination.name}:{manifest.id}").run()

            test.halves.append(_restore_half("json", server, f"backupd_drill_{token}_json", json_half, restored))
        for half in test.halves:
            if half.name not in restored:
                continue
            if manifest.kind == "full":
                half.tables_checked, half.rows, problems = compare_with_manifest(restored[half.name], manifest)
                half.errors.extend(problems)
            elif half.name == "json" and "sql" in restored:
                half.tables_checked, half.rows, problems = compare_databases(
                    restored["json"], restored["sql"], manifest)
                half.errors.extend(problems)
    test.seconds = time.monotonic() - began
    return test


def _relax_excluded_columns(dsn: str, manifest: Manifest) -> None:
    """Columns left out of the backup (`exclude_columns`) restore as NULL: in the scratch database
    they may not stay NOT NULL (data.sql does the same for the SQL half)."""
    with connect(dsn, what="scratch database") as conn:
        for key, columns in manifest.excluded_columns.items():
            schema, name = _split_key(key)
            for column in columns:
                try:
                    conn.execute(f"ALTER TABLE {quote_ident(schema)}.{quote_ident(name)} "
                                 f"ALTER COLUMN {quote_ident(column)} DROP NOT NULL")
                except psycopg.Error as exc:
                    raise SourceError(f"preparing {key}.{column} failed: {one_line(exc)}") from None
        conn.commit()


def _restore_half(name: str, server: ScratchServer, database: str, restore: Callable[[str], None],
                  restored: dict[str, str]) -> RestoreHalf:
    half = RestoreHalf(name)
    structlog.contextvars.bind_contextvars(half=name)
    try:
        dsn = server.create(database)
        began = time.monotonic()
        restore(dsn)
        half.seconds = time.monotonic() - began
        restored[name] = dsn
        log.info("restore_test_restored", seconds=round(half.seconds, 3))
    except CommandError as exc:
        half.errors.append(withhold_row_data(f"psql failed: {exc}", debug_event="restore_test_row_data"))
    except BackupdError as exc:
        half.errors.append(withhold_row_data(str(exc), debug_event="restore_test_row_data"))
    finally:
        structlog.contextvars.unbind_contextvars("half")
    return half


def _checksums(dsn: str, manifest: Manifest) -> dict[str, tuple[int, str] | str]:
    found: dict[str, tuple[int, str] | str] = {}
    with connect(dsn, what="scratch database") as conn:
        conn.execute(f"SET TIME ZONE '{COMPARE_TIMEZONE}'")
        for key, entry in manifest.tables.items():
            schema, name = _split_key(key)
            like = TableChecksum.like(entry.checksum)
            try:
                table = describe_table(conn, schema, name, list(entry.columns), list(entry.primary_key))
                checksum = table_checksum(conn, table, like.algorithm if like is not None else DEFAULT_ALGORITHM)
            except SourceError as exc:
                conn.rollback()
                found[key] = str(exc)
                continue
            found[key] = (checksum.rows, checksum.hexdigest)
    return found


def compare_databases(restored_dsn: str, reference_dsn: str, manifest: Manifest) -> tuple[int, int, list[str]]:
    """(tables, rows, mismatches) of one restored database against another, table by table."""
    mine, reference = _checksums(restored_dsn, manifest), _checksums(reference_dsn, manifest)
    problems = []
    rows = 0
    for key in manifest.tables:
        got, want = mine[key], reference[key]
        if isinstance(got, str) or isinstance(want, str):
            problems.append(f"table {key}: {got if isinstance(got, str) else want}")
            continue
        rows += got[0]
        if got[0] != want[0]:
            problems.append(f"table {key}: {got[0]} rows from the JSON chain, {want[0]} from the SQL dump")
        elif got[1] != want[1]:
            problems.append(f"table {key}: the JSON chain's rows differ from the SQL dump's")
    return len(manifest.tables), rows, problems


# -- the whole verification -------------------------------------------------------------------------


def verify_backup(config: Config, destination: Destination, manifest: Manifest, *, restore_test: bool = False,
                  decryptor: Decryptor | None = None, trigger: str = "manual") -> VerifyReport:
    """Verify one backup (artifacts, then optionally a restore test). Does not record the result."""
    report = VerifyReport(manifest.id, destination.name, manifest.kind, datetime.now(UTC), trigger=trigger,
                          restore_requested=restore_test)
    keyless = missing_private_keys(manifest, decryptor)
    if keyless and restore_test:
        raise UsageError(f"--restore-test of backup {manifest.id} needs its private key: {keyless[0]}",
                         PRIVATE_KEY_HINT)
    report.stored_only = bool(keyless)
    structlog.contextvars.bind_contextvars(backup_id=manifest.id, destination=destination.name)
    try:
        log.info("verify_started", restore_test=restore_test, level=report.level)
        if keyless:
            log.warning("verify_without_private_key", note=NO_PRIVATE_KEY_NOTE, detail=keyless[0])
        for entry in manifest.artifacts:
            progress.current().stage(f"checking {entry.name}")
            check = check_artifact(destination, manifest, entry, decryptor,
                                   stored_only=bool(keyless) and entry.encryption != "none")
            progress.current().done(entry.name)
            report.artifacts.append(check)
            if check.ok:
                log.info("artifact_verified", artifact=entry.name, detail=check.detail)
            else:
                log.error("artifact_failed", artifact=entry.name, error=check.error)
        if restore_test:
            if all(a.ok for a in report.artifacts):
                try:
                    progress.current().stage("restore test")
                    report.restore_test = run_restore_test(config, destination, manifest, decryptor)
                except BackupdError as exc:
                    report.restore_test = RestoreTest(error=str(exc))
            else:
                report.restore_test = RestoreTest(error="skipped: an artifact failed verification")
    finally:
        report.finished = datetime.now(UTC)
        structlog.contextvars.unbind_contextvars("backup_id", "destination")
    level = "info" if report.ok else "error"
    getattr(log, level)("verify_finished", backup_id=manifest.id, destination=destination.name,
                        outcome=report.outcome, level=report.level, seconds=report.seconds,
                        error=report.failure(), note=report.note)
    return report


PRIVATE_KEY_HINT = ("pass --gpg-homedir DIR (or set GNUPGHOME) with one of its private keys, or --identity FILE "
                    "for age; without one, plain `verify` checks the stored bytes")


def missing_private_keys(manifest: Manifest, decryptor: Decryptor | None) -> list[str]:
    """Why the encrypted artifacts of `manifest` cannot be decrypted here (empty: they can, or none
    is encrypted): one line per encryption kind without a fitting key. Nothing is decrypted."""
    missing = []
    for kind in sorted({a.encryption for a in manifest.artifacts if a.encryption != "none"}):
        if not holds_private_key(decryptor, kind, manifest.encryption_recipients):
            recipients = ", ".join(manifest.encryption_recipients) or "recipients not recorded"
            missing.append(f"no {kind} private key here for {recipients}")
    return missing


# -- recording --------------------------------------------------------------------------------------


def load_verify_records(state_dir: Path) -> dict[str, dict[str, Any]]:
    """`<state.dir>/verify.json`: per destination, per backup id, the last verification's verdict."""
    try:
        data = json.loads((state_dir / VERIFY_RECORDS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_result(config: Config, report: VerifyReport) -> dict[str, Any]:
    """Keep the verdict: status.json `last_drill`, history.jsonl, verify.json, metrics; alert on
    failure. Returns the new status. A failure to alert is logged, never raised."""
    from backupd.status import atomic_write

    store = StatusStore(config.state.dir, config.state.stale_after)
    record = report.record()
    status = store.record_drill(record, [d.name for d in config.destinations])
    with store.locked():
        records = load_verify_records(config.state.dir)
        per_destination = records.setdefault(report.destination, {})
        per_destination[report.backup_id] = {
            "verified": report.ok, "at": record["finished"], "restore_test": report.restore_requested,
            "level": report.level, "error": record["error"]}
        if len(per_destination) > 1000:
            for old in sorted(per_destination)[:-1000]:
                del per_destination[old]
        atomic_write(config.state.dir / VERIFY_RECORDS, (json.dumps(records, indent=2) + "\n").encode())
    _write_metrics(config, status)
    if not report.ok:
        _alert(config, report, record)
    return status


def _write_metrics(config: Config, status: dict[str, Any]) -> None:
    try:
        from backupd.metrics import write_metrics
    except ImportError:
        return
    try:
        write_metrics(config.state.dir, config.state.stale_after, status, config.state.metrics_file)
    except BackupdError as exc:
        log.warning("metrics_write_failed", error=str(exc))


def _alert(config: Config, report: VerifyReport, record: dict[str, Any]) -> None:
    what = "restore drill" if report.restore_requested else "verification"
    event = {
        "event": "verify_failed",
        "summary": f"{what} of backup {report.backup_id} at {report.destination} FAILED: {record['error']}",
        "details": {"backup": report.backup_id, "destination": report.destination,
                    "restore_test": report.restore_requested, "trigger": report.trigger,
                    "seconds": report.seconds, "error": record["error"]},
    }
    try:
        from backupd.notify.dispatch import send_event

        send_event(config, event)
    except Exception as exc:  # noqa: BLE001 - alerting never changes the verdict
        log.error("notify_failed", notify_event="verify_failed", error=redact(str(exc)))


# -- drills on a schedule ---------------------------------------------------------------------------


def drill_due(config: Config, now: datetime, *, after_backup: bool = False) -> bool:
    """True when `[verify] schedule` asks for a drill now.

    `after-backup`: after every backup (the daemon passes `after_backup=True`); `daily`/`weekly`:
    when the last scheduled drill finished that long ago, or never ran.
    """
    schedule = config.verify.schedule
    if not schedule:
        return False
    if schedule == "after-backup":
        return after_backup
    status = StatusStore(config.state.dir).load()
    last = (status.get("last_scheduled_drill") or {}).get("finished")
    from backupd.status import parse_time

    last_time = parse_time(last)
    return last_time is None or now - last_time >= DRILL_INTERVALS[schedule]


def run_drill(config: Config, destination_config: DestinationConfig, *, trigger: str = "schedule",
              decryptor: Decryptor | None = None) -> VerifyReport | None:
    """`verify latest --restore-test` at one destination, recorded. None when it holds no backup."""
    destination = TrustedDestination(build(destination_config), Trust.of(config))
    try:
        manifest = resolve(destination, "latest")
    except NotFound:
        log.info("drill_skipped", destination=destination.name, reason="no backups")
        return None
    except BackupdError as exc:
        report = VerifyReport("", destination.name, "full", datetime.now(UTC), trigger=trigger,
                              restore_requested=True, error=f"no backup to drill: {exc}")
        report.finished = datetime.now(UTC)
        record_result(config, report)
        return report
    # without the private key (public keys only on this server) the drill checks the stored bytes
    restore = not missing_private_keys(manifest, decryptor)
    report = verify_backup(config, destination, manifest, restore_test=restore, decryptor=decryptor, trigger=trigger)
    record_result(config, report)
    return report


def run_scheduled_drills(config: Config, now: datetime | None = None, *,
                         after_backup: bool = False) -> list[VerifyReport]:
    """Run the drills `[verify] schedule` asks for now (newest backup of each destination).

    For the daemon: call after every run with `after_backup=True`, and on each tick. Never raises
    for a failed drill (it is recorded and alerted); returns the reports.
    """
    now = now or now_utc()
    if not drill_due(config, now, after_backup=after_backup):
        return []
    reports: list[VerifyReport] = []
    for destination_config in config.destinations:
        try:
            report = run_drill(config, destination_config, trigger="after-backup" if after_backup else "schedule")
        except BackupdError as exc:
            log.error("drill_failed", destination=destination_config.name, error=str(exc))
            continue
        if report is not None:
            reports.append(report)
    try:
        StatusStore(config.state.dir, config.state.stale_after).mark_scheduled_drill(now)
    except BackupdError as exc:
        log.error("status_write_failed", error=str(exc))
    return reports
