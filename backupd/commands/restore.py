"""`backupd restore ID|latest|FILE --target DSN|--target-file FILE [--from NAME] [--strategy upsert|replace|merge]
[--tables a,b] [--sql] [--dry-run] [--yes]`: contract section 7.

A backup id (or `latest`) needs the config (its destination); a FILE (a JSON v2.0 export made
elsewhere) needs none. With a config, every restore adds a line to history.jsonl and a `restore`
event for the notifiers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import structlog
from psycopg.conninfo import conninfo_to_dict

from backupd import progress, redact
from backupd.commands.common import add_trust_unsigned
from backupd.errors import BackupdError, UsageError
from backupd.manifest import is_backup_id, iso, now_utc

log = structlog.get_logger("backupd.restore")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("restore", parents=[common], help="restore a backup or a JSON export into a database",
                            description="Restore a backup (id or `latest`) or a JSON v2.0 file into --target.")
    parser.add_argument("backup", metavar="ID|latest|FILE", help="a backup id, `latest`, or a JSON export file")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", metavar="DSN",
                        help="the database to restore into (the password may be left out: PGPASSWORD or "
                             "~/.pgpass supply it)")
    target.add_argument("--target-file", type=Path, metavar="FILE",
                        help="a file holding the target DSN, so that no password stands in an argv")
    parser.add_argument("--from", dest="from_destination", metavar="NAME",
                        help="destination to restore from (default: the first)")
    parser.add_argument("--strategy", choices=["upsert", "replace", "merge"], default="upsert",
                        help="upsert (default): backup rows win, target-only rows stay; replace: tables hold "
                             "exactly the backup (needs --yes); merge: the newer updated_at wins")
    parser.add_argument("--tables", metavar="A,B", help="only these tables")
    parser.add_argument("--sql", action="store_true", help="restore the SQL dump (into an empty database)")
    parser.add_argument("--supabase-skeleton", action="store_true",
                        help="with --sql: create Supabase's reserved roles and auth/storage/extensions schemas "
                             "first, then the backup's roles.sql (for a Supabase dump into plain PostgreSQL)")
    parser.add_argument("--dry-run", action="store_true", help="count what would change, change nothing")
    parser.add_argument("--yes", action="store_true", help="confirm --strategy replace")
    parser.add_argument("--gpg-homedir", type=Path, metavar="DIR", help="GnuPG home with the private key")
    parser.add_argument("--identity", type=Path, action="append", default=[], metavar="FILE",
                        help="age identity file (repeatable)")
    add_trust_unsigned(parser)
    parser.set_defaults(handler=handle)


def _register_target_secret(dsn: str) -> None:
    try:
        password = conninfo_to_dict(dsn).get("password")
    except Exception:  # noqa: BLE001 - an invalid DSN is reported when connecting
        return
    if password:
        redact.register([str(password)])


def _optional_config(args: argparse.Namespace) -> Any:
    from backupd.commands.common import config_from
    from backupd.config import DEFAULT_CONFIG_PATH

    if args.config or os.environ.get("BACKUPD_CONFIG") or DEFAULT_CONFIG_PATH.exists():
        return config_from(args)
    return None


def _read_target_file(path: Path) -> str:
    """The DSN a --target-file holds (its first non-empty line); UsageError when it has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise UsageError(f"cannot read --target-file {path}: {reason}") from None
    dsn = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not dsn:
        raise UsageError(f"--target-file {path} holds no DSN")
    return dsn


def handle(args: argparse.Namespace) -> int:
    if args.target_file is not None:
        args.target = _read_target_file(args.target_file)
    _register_target_secret(args.target)
    if args.strategy == "replace" and not args.yes and not args.dry_run:
        raise UsageError("--strategy replace deletes every target row the backup lacks: add --yes to confirm")
    tables = [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None
    if args.tables is not None and not tables:
        raise UsageError("--tables needs at least one table name")
    from_backup = args.backup == "latest" or is_backup_id(args.backup)
    if not from_backup and not Path(args.backup).is_file():
        raise UsageError(f"{args.backup!r} is neither a backup id, `latest`, nor a readable file")
    if args.sql and not from_backup:
        raise UsageError("--sql restores a backup's SQL dump: give a backup id or `latest`, not a file")
    if args.supabase_skeleton and not args.sql:
        raise UsageError("--supabase-skeleton prepares a plain server for a Supabase SQL dump: add --sql")
    if args.sql and (tables or args.strategy != "upsert"):
        raise UsageError("--sql restores the whole dump into an empty database: --tables and --strategy "
                         "apply to the JSON restore")
    if from_backup:
        from backupd.commands.common import config_from

        config = config_from(args)
        if args.sql and args.dry_run:
            from backupd.scratch import refusal

            problem = refusal(config)
            if problem is not None:
                raise problem
    else:
        config = _optional_config(args)
    started = now_utc()
    record: dict[str, Any] = {"event": "restore", "source": args.backup, "strategy": "sql" if args.sql else args.strategy,
                              "dry_run": args.dry_run, "started": iso(started)}
    try:
        report = _restore(args, config, tables)
    except BackupdError as exc:
        # rows of the backup quoted by PostgreSQL stay out of history, alerts, the audit row and
        # the error line; the debug log keeps them
        exc.message = redact.withhold_row_data(exc.message, debug_event="restore_failed_row_data")
        _finish(config, {**record, "outcome": "failed", "error": str(exc), "finished": iso(now_utc())})
        raise
    _print_summary(report)
    _finish(config, {**record, **report.record(), "outcome": "success", "error": None,
                     "finished": iso(now_utc())})
    return 0


def _restore(args: argparse.Namespace, config: Any, tables: list[str] | None) -> Any:
    from backupd.restore import JsonRestore, backup_chain, backup_inputs, file_input, make_decryptor
    from backupd.signing import resolve

    with progress.on_terminal(args.log_format, "restoring") as reporter:
        shown = _RestoreProgress(reporter)
        if config is not None and (args.backup == "latest" or is_backup_id(args.backup)):
            from backupd.commands.common import trusted_destination_from

            destination = trusted_destination_from(config, args.from_destination,
                                                   trust_unsigned=args.trust_unsigned)
            manifest = resolve(destination, args.backup)
            chain = [manifest] if args.sql else backup_chain(destination, manifest)
            for member in chain:  # every backup of the chain, before the target is touched
                destination.check(member)
            decryptor = make_decryptor(chain, args.gpg_homedir, list(args.identity))
            if args.sql and args.dry_run:
                # in a scratch database: a `COMMIT;` in the file must not reach the target
                from backupd.scratch import dry_run_sql

                return dry_run_sql(config, destination, manifest, args.target, decryptor,
                                   supabase_skeleton=args.supabase_skeleton)
            if args.sql:
                from backupd.sqlrestore import restore_sql

                return restore_sql(destination, manifest, args.target, decryptor,
                                   supabase_skeleton=args.supabase_skeleton)
            inputs = backup_inputs(destination, chain, decryptor)
            label = f"{destination.name}:{manifest.id}"
        else:
            inputs = [file_input(Path(args.backup))]
            label = str(args.backup)
        return JsonRestore(args.target, inputs, strategy=args.strategy, tables=tables, dry_run=args.dry_run,
                           progress=shown, source_label=label).run()


class _RestoreProgress:
    """Relays JsonRestore's callbacks to the terminal display (a line per table read and per table
    restored, the live line says which table); off a terminal, only the `table_restored` log event."""

    def __init__(self, shown: progress.Reporter) -> None:
        from backupd.restore import QuietProgress

        self.shown = shown
        self.quiet = QuietProgress()
        self.on_terminal = isinstance(shown, progress.TerminalReporter)
        self.current: str | None = None
        self.rows: dict[str, int] = {}

    def _close_current(self) -> None:
        if self.current is not None:
            self.shown.note(f"read {self.current}: {self.rows[self.current]} rows")
            self.current = None

    def staged(self, table: str, rows: int) -> None:
        if table != self.current:
            self._close_current()
            self.current = table
            self.shown.stage(f"reading {table}")
        self.rows[table] = self.rows.get(table, 0) + rows

    def applied(self, table: str, counts: Any) -> None:
        self._close_current()
        if not self.on_terminal:
            self.quiet.applied(table, counts)
            return
        self.shown.stage("restoring")
        self.shown.done(table, self.rows.get(table, 0))
        self.shown.note(f"restored {table}: {counts.inserted} inserted, {counts.updated} updated, "
                        f"{counts.deleted} deleted, {counts.unchanged} unchanged")


def _print_summary(report: Any) -> None:
    out = sys.stdout
    verb = "dry run (rolled back, nothing changed)" if report.dry_run else "committed"
    backups = ", ".join(report.backups) or report.source
    kind = "SQL dump" if report.mode == "sql" else f"strategy {report.strategy}"
    out.write(f"restore of {backups} into {report.target}, {kind}: {verb} in {report.seconds:.1f}s\n")
    header = "WOULD " if report.dry_run else ""
    out.write(f"{'TABLE':<24} {header + 'INSERT':>12} {header + 'UPDATE':>12} {header + 'DELETE':>12} "
              f"{'UNCHANGED':>10}\n")
    totals = [0, 0, 0, 0]
    for table, counts in report.tables.items():
        values = [counts.inserted, counts.updated, counts.deleted, counts.unchanged]
        totals = [a + b for a, b in zip(totals, values, strict=True)]
        note = f"  ({counts.note})" if counts.note else ""
        out.write(f"{table:<24} {values[0]:>12} {values[1]:>12} {values[2]:>12} {values[3]:>10}{note}\n")
    out.write(f"{'total':<24} {totals[0]:>12} {totals[1]:>12} {totals[2]:>12} {totals[3]:>10}\n")
    for note in report.notes:
        out.write(f"note: {note}\n")


def _finish(config: Any, record: dict[str, Any]) -> None:
    """history.jsonl and the `restore` event, when a config is loaded; neither can fail the restore."""
    if config is None:
        return
    from backupd.status import StatusStore

    try:
        StatusStore(config.state.dir).append_history(record)
    except BackupdError as exc:
        log.error("history_write_failed", error=str(exc))
    try:
        from backupd.notify import dispatch

        send_event = getattr(dispatch, "send_event", None)
        if send_event is not None:
            event: dict[str, Any] = {k: record.get(k) for k in ("source", "target", "mode", "strategy", "dry_run", "backups",
                                                "outcome", "error", "duration_seconds") if k in record}
            for name in ("inserted", "updated", "deleted", "unchanged"):
                event[name] = sum(int(t.get(name, 0)) for t in (record.get("tables") or {}).values())
            send_event(config, {"event": "restore", **event})
    except Exception as exc:  # noqa: BLE001 - alerting never fails a restore
        log.error("notify_failed", notify_event="restore", error=str(exc))
    from backupd import audit

    totals = {name: sum(int(t.get(name, 0)) for t in (record.get("tables") or {}).values())
              for name in ("inserted", "updated", "deleted")}
    backups = record.get("backups") or []
    audit.record(config, "restore", outcome=str(record.get("outcome")),
                 backup_id=str(backups[-1]) if backups else str(record.get("source")),
                 counts=totals, duration_seconds=record.get("duration_seconds"), error=record.get("error"),
                 detail={"strategy": record.get("strategy"), "dry_run": record.get("dry_run")})
