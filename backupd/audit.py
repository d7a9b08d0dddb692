"""The audit trail: one row per backup, restore, prune and verify in a table of the source database.

Off unless `[audit] table` is set. Each row is written in its own short transaction on its own
connection, after the operation (so a backup's row is never inside the snapshot it describes). A
failure to audit is logged as `audit_failed` and never changes an operation's outcome.

The table may have either shape (columns are matched by name; any other column keeps its default):

- the Jarvis `logs` table: `level`, `source`, `event`, `message`, `duration_ms`, `context` (jsonb);
- backupd's own shape, documented in docs/security.md: `at`, `actor`, `host`, `trigger`, `action`,
  `backup_id`, `outcome`, `rows`, `bytes`, `error`, `detail` (jsonb).

A table with neither an `event` nor an `action` column is refused (logged, nothing written).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import structlog

from backupd.redact import redact, redact_obj

if TYPE_CHECKING:
    from backupd.config import Config

log = structlog.get_logger("backupd.audit")

Action = Literal["backup", "restore", "prune", "verify"]
AUDIT_CONNECT_TIMEOUT = timedelta(seconds=10)
# triggers that are a person at a terminal; anything else (schedule, catch-up, changes, drill) is the daemon
USER_TRIGGERS = frozenset({"manual", "cli", "user", "telegram"})


def who() -> str:
    """The OS user running backupd (what the audit row calls the actor)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _level(outcome: str) -> str:
    if outcome in ("success", "ok", "dry-run"):
        return "info"
    if outcome == "partial":
        return "warn"
    return "error"


def _split_table(name: str) -> tuple[str | None, str]:
    if "." in name:
        schema, _, table = name.partition(".")
        return schema.strip('"'), table.strip('"')
    return None, name.strip('"')


def _message(action: str, outcome: str, backup_id: str | None, counts: Mapping[str, Any],
             error: str | None) -> str:
    parts = [f"backupd {action}"]
    if backup_id:
        parts.append(backup_id)
    parts.append(outcome)
    if counts:
        parts.append("(" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")")
    text = " ".join(parts)
    if error:
        text += f": {error}"
    return text


def row_values(action: str, *, outcome: str, trigger: str, backup_id: str | None,
               counts: Mapping[str, Any], duration_seconds: float | None, error: str | None,
               detail: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every column value an audit row may carry, keyed by column name (both shapes); no secret."""
    actor = who()
    host = socket.gethostname()
    error = redact(error) if error else None
    context: dict[str, Any] = {
        "action": action, "outcome": outcome, "backup_id": backup_id, "actor": actor, "host": host,
        "trigger": trigger, "pid": os.getpid(), "counts": dict(counts), "error": error,
    }
    if detail:
        context["detail"] = dict(detail)
    context = redact_obj(context)  # type: ignore[assignment]
    return {
        # the Jarvis logs table
        "level": _level(outcome),
        "source": "user" if trigger in USER_TRIGGERS else "scheduler",
        "event": f"backupd.{action}",
        "message": _message(action, outcome, backup_id, counts, error),
        "duration_ms": round(duration_seconds * 1000, 3) if duration_seconds is not None else None,
        "context": context,
        # backupd's own shape
        "at": datetime.now(UTC),
        "actor": actor,
        "host": host,
        "trigger": trigger,
        "action": action,
        "backup_id": backup_id,
        "outcome": outcome,
        "rows": counts.get("rows"),
        "bytes": counts.get("bytes"),
        "error": error,
        "detail": context,
    }


def record(config: Config, action: Action, *, outcome: str, trigger: str = "manual",
           backup_id: str | None = None, counts: Mapping[str, Any] | None = None,
           duration_seconds: float | None = None, error: str | None = None,
           detail: Mapping[str, Any] | None = None, dsn: str | None = None) -> bool:
    """Write one audit row for `action` into `[audit] table` of the source database (or `dsn`).

    Returns True when a row was written, False when auditing is off or failed (the failure is
    logged as `audit_failed`; it never raises).
    """
    table = config.audit.table.strip()
    if not table:
        return False
    values = row_values(action, outcome=outcome, trigger=trigger, backup_id=backup_id,
                        counts=counts or {}, duration_seconds=duration_seconds, error=error, detail=detail)
    try:
        _insert(dsn or config.source.dsn.get_secret_value(), table, values,
                min(config.source.connect_timeout, AUDIT_CONNECT_TIMEOUT))
    except Exception as exc:  # noqa: BLE001 - auditing must never fail the operation it describes
        from backupd.db import one_line

        log.error("audit_failed", table=table, action=action, error=one_line(exc))
        return False
    log.debug("audit_recorded", table=table, action=action, outcome=outcome)
    return True


def _insert(dsn: str, table: str, values: dict[str, Any], timeout: timedelta) -> None:
    from psycopg import sql
    from psycopg.types.json import Jsonb

    from backupd.db import connect
    from backupd.errors import BackupdError

    schema, name = _split_table(table)
    qualified = sql.Identifier(schema, name) if schema else sql.Identifier(name)
    with connect(dsn, timeout=timeout, what="database (audit)") as conn:
        conn.read_only = False  # a backup role may default to read-only transactions
        conn.execute("SET LOCAL statement_timeout = '10s'")
        conn.execute("SET LOCAL lock_timeout = '5s'")
        regclass = conn.execute("SELECT to_regclass(%s)::oid", [qualified.as_string(conn)]).fetchone()
        if not regclass or regclass[0] is None:
            raise BackupdError(f"audit table {table} does not exist")
        columns = {
            str(row[0]): str(row[1])
            for row in conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", [regclass[0]]
            )
        }
        if "event" not in columns and "action" not in columns:
            raise BackupdError(f"audit table {table} has neither an 'event' nor an 'action' column")
        chosen = [c for c in values if c in columns and values[c] is not None]
        params = [Jsonb(values[c]) if columns[c] in ("jsonb", "json") else
                  json.dumps(values[c], default=str) if isinstance(values[c], dict) else values[c]
                  for c in chosen]
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            qualified,
            sql.SQL(", ").join(sql.Identifier(c) for c in chosen),
            sql.SQL(", ").join(sql.Placeholder() for _ in chosen),
        )
        conn.execute(statement, params)
        conn.commit()
