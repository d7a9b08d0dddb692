"""SQL restore (`restore --sql`): a backup's `schema.sql` then `data.sql`, through psql in one
transaction (`--single-transaction -v ON_ERROR_STOP=1`), into an empty database.

Before psql starts, both artifacts are read once end to end through verification (sha256, size,
decryption, decompression), so a damaged backup is refused before the target is touched. They are
then streamed again into psql, verified again on the way; should that second read fail, psql is
killed before it reaches the end of its input, so it never sends COMMIT.

Between the schema and the data, the foreign keys the schema created are dropped and the user
triggers disabled; after the data they are added back (each validated by one query) and
re-enabled. A data-only dump need not be in foreign-key order (pg_dump cannot order
self-referencing rows), and an insert trigger cannot rewrite restored rows.

Dumps from a newer pg_dump: `SET transaction_timeout` (pg_dump 17+) is dropped for a server older
than 17; `\\restrict` lines (pg_dump 13.22+/14.19+/15.14+/16.10+/17.6+/18) need a psql that knows
them, and the psql is chosen accordingly.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import BinaryIO

import structlog

from backupd import proc
from backupd.db import describe, split_dsn
from backupd.destinations.base import Destination
from backupd.errors import CommandError, IntegrityError, SourceError
from backupd.manifest import Manifest
from backupd.pgtools import PgTool, candidates, tool_version
from backupd.pipeline import COPY_BUFFER, Decryptor
from backupd.restore import RestoreError, RestoreReport, TableCounts, open_artifact
from backupd.sqltarget import CopyTargets, check_target, inspect_target, plan_roles

log = structlog.get_logger("backupd.restore")

_FIRST_WITH_RESTRICT = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}

DROP_FOREIGN_KEYS = b"""
-- backupd: foreign keys and user triggers step aside while the data loads
CREATE TEMP TABLE backupd_fks ON COMMIT DROP AS
  SELECT c.conrelid::pg_catalog.regclass::pg_catalog.text AS tbl, c.conname AS name,
         pg_catalog.pg_get_constraintdef(c.oid) AS def
  FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace
  WHERE c.contype = 'f' AND n.nspname NOT IN ('pg_catalog', 'information_schema');
CREATE TEMP TABLE backupd_triggers ON COMMIT DROP AS
  SELECT t.tgrelid::pg_catalog.regclass::pg_catalog.text AS tbl, t.tgname AS name, t.tgenabled AS enabled
  FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class r ON r.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
  WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' AND n.nspname NOT IN ('pg_catalog', 'information_schema');
DO $backupd$ DECLARE r record; BEGIN
  FOR r IN SELECT * FROM pg_temp.backupd_fks LOOP
    EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', r.tbl, r.name);
  END LOOP;
  FOR r IN SELECT * FROM pg_temp.backupd_triggers LOOP
    EXECUTE pg_catalog.format('ALTER TABLE %s DISABLE TRIGGER %I', r.tbl, r.name);
  END LOOP;
END $backupd$;
"""

ADD_FOREIGN_KEYS = b"""
-- backupd: foreign keys back (validated), triggers back on
DO $backupd$ DECLARE r record; BEGIN
  FOR r IN SELECT * FROM pg_temp.backupd_fks LOOP
    EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', r.tbl, r.name, r.def);
  END LOOP;
  FOR r IN SELECT * FROM pg_temp.backupd_triggers LOOP
    EXECUTE pg_catalog.format('ALTER TABLE %s %s TRIGGER %I', r.tbl,
      CASE r.enabled WHEN 'A' THEN 'ENABLE ALWAYS' WHEN 'R' THEN 'ENABLE REPLICA' ELSE 'ENABLE' END, r.name);
  END LOOP;
END $backupd$;
"""


def knows_restrict(tool: PgTool) -> bool:
    """True when this psql understands `\\restrict` (added in the 2025-08 minor releases)."""
    major, _, minor = tool.version.partition(".")
    if int(major) >= 18:
        return True
    first = _FIRST_WITH_RESTRICT.get(int(major))
    return first is not None and int(minor or 0) >= first


def pick_psql(server_major: int, server_version: str, needs_restrict: bool) -> PgTool:
    """A psql for this server, one that knows `\\restrict` when the dump has it."""
    tools = []
    for path in candidates("psql"):
        try:
            tools.append(tool_version(path))
        except SourceError:
            continue
    fitting = [t for t in tools if not needs_restrict or knows_restrict(t)]
    if not fitting:
        have = ", ".join(f"{t.version} ({t.path})" for t in tools) or "none"
        raise RestoreError(f"no psql that understands the dump's \\restrict lines; found: {have}",
                           "install a current PostgreSQL client (15.14+, 16.10+, 17.6+ or 18)")
    # the lowest major that is at least the server's, else the newest there is
    newer = sorted((t for t in fitting if t.major >= server_major), key=lambda t: (t.major, t.path))
    return newer[0] if newer else max(fitting, key=lambda t: t.major)


class LineFilter:
    """Drops lines an older server rejects, from a stream of chunks (lines may span chunks)."""

    def __init__(self, drop: list[bytes]) -> None:
        self.drop = drop
        self._rest = b""

    def feed(self, chunk: bytes) -> bytes:
        """The filtered complete lines of what was fed so far."""
        data = self._rest + chunk if self._rest else chunk
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        return self._filter(data[:cut])

    def finish(self) -> bytes:
        """What is left (a last line without a newline)."""
        rest, self._rest = self._rest, b""
        return self._filter(rest)

    def _filter(self, block: bytes) -> bytes:
        if not self.drop or not any(d in block for d in self.drop):
            return block
        lines = block.split(b"\n")
        return b"\n".join(line for line in lines if line.strip() not in self.drop)


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(COPY_BUFFER):
            yield chunk


def restore_sql(destination: Destination, manifest: Manifest, target_dsn: str, decryptor: Decryptor | None,
                *, dry_run: bool = False, supabase_skeleton: bool = False) -> RestoreReport:
    """Restore the SQL half of `manifest` into the empty database at `target_dsn`.

    The target is an empty database, or a new Supabase project (`backupd.sqltarget`: the
    platform's own relations are allowed, the tables the data dump loads must be empty). The
    backup's roles.sql, when it has one, runs first, without what the target cannot take (each
    skip a warning, also in the report's notes). `supabase_skeleton`: before that, create what a
    Supabase dump expects of the platform on a plain server (reserved roles, the
    auth/storage/extensions schemas; `backupd.supabase_skeleton`). All in one transaction.
    """
    began = time.monotonic()
    entries = [manifest.artifact_for("schema"), manifest.artifact_for("data")]
    if entries[0] is None or entries[1] is None:
        raise RestoreError(f"backup {manifest.id} has no SQL dump (schema.sql and data.sql)",
                           "restore its JSON export instead (without --sql)")
    schema_entry, data_entry = entries[0], entries[1]
    report = RestoreReport(source=f"{destination.name}:{manifest.id}", target=describe(target_dsn),
                           strategy="sql", dry_run=dry_run, mode="sql", backups=[manifest.id])
    facts = inspect_target(target_dsn)
    loads = CopyTargets()
    needs_restrict = False
    for entry in (schema_entry, data_entry):
        log.info("artifact_verifying", artifact=entry.name)
        first = True
        for chunk in _chunks(open_artifact(destination, manifest, entry, decryptor)):
            if first:
                needs_restrict = needs_restrict or b"\n\\restrict " in b"\n" + chunk[:4096]
                first = False
            if facts.supabase and entry is data_entry:
                loads.feed(chunk)
    roles_sql = b""
    roles_entry = manifest.artifact_for("roles")
    if roles_entry is not None:
        roles_text, warnings = plan_roles(b"".join(_chunks(open_artifact(destination, manifest, roles_entry, decryptor))
                                                   ).decode("utf-8"), facts)
        roles_sql = roles_text.encode()
        for warning in warnings:
            log.warning("role_skipped", detail=warning)
        report.notes.extend(warnings)
    check_target(facts, loads.tables, target_dsn)
    server_num = facts.server_version_num
    tool = pick_psql(server_num // 10000, f"{server_num // 10000}.{server_num % 10000}", needs_restrict)
    drop = [b"SET transaction_timeout = 0;"] if server_num < 170000 else []
    conninfo, env = split_dsn(target_dsn)
    argv = [tool.path, "-X", "-q", "--no-password", "--single-transaction", "-v", "ON_ERROR_STOP=1",
            "-d", conninfo]
    log.info("sql_restore_started", psql=tool.version, target=report.target)
    try:
        with proc.spawn(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL) as psql:
            try:
                if supabase_skeleton:
                    from backupd.supabase_skeleton import skeleton_sql

                    psql.stdin.write(skeleton_sql().encode() + b"\n")
                psql.stdin.write(roles_sql)
                for index, entry in enumerate((schema_entry, data_entry)):
                    line_filter = LineFilter(drop)
                    for chunk in _chunks(open_artifact(destination, manifest, entry, decryptor)):
                        psql.stdin.write(line_filter.feed(chunk))
                    psql.stdin.write(line_filter.finish() + b"\n")
                    if index == 0:
                        psql.stdin.write(DROP_FOREIGN_KEYS)
                psql.stdin.write(ADD_FOREIGN_KEYS)
                if dry_run:
                    psql.stdin.write(b"ROLLBACK;\n")
            except BrokenPipeError:
                pass  # psql stopped on an error: finish() reports it
            psql.finish(hint="the target is unchanged: psql ran in one transaction")
    except IntegrityError:
        raise
    except CommandError as exc:
        raise RestoreError(f"SQL restore failed, target unchanged: {exc.message}") from None
    for table, table_entry in manifest.tables.items():
        report.tables[table] = TableCounts(inserted=table_entry.rows, rows=table_entry.rows)
    report.seconds = time.monotonic() - began
    return report
