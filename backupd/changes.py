"""Change-triggered backups (`[schedule] on_changes = N`): has the database changed enough since
the last backup to take an extra one?

The measure is PostgreSQL's cumulative statistics: `n_tup_ins + n_tup_upd + n_tup_del` of
`pg_stat_user_tables`, summed over the backed-up tables (the config's schemas, include and
exclude lists): one cheap query, no table is read. Each successful backup records the sum it
started from in `<state.dir>/changes.json`; the daemon polls every minute (or every
`min_interval` if shorter) and takes an extra backup when the sum grew by at least N, at most once
per `min_interval` after the last backup. A statistics reset (server crash, `pg_stat_reset()`)
makes the sum smaller: the changes since the reset are counted from zero.

The statistics are updated when a transaction ends (and flushed within about a second), so
changes still in an open transaction are not counted yet. The kind of the extra backup is
decided as for any run (an incremental when `export.incremental` is on and the chain allows).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import structlog

from backupd.config import Config, SourceConfig
from backupd.db import connect, one_line
from backupd.errors import BackupdError, SourceError
from backupd.manifest import iso
from backupd.status import atomic_write, parse_time

log = structlog.get_logger("backupd.changes")
CHANGES_NAME = "changes.json"
POLL_SECONDS = 60.0


def _matches(schema: str, table: str, patterns: list[str]) -> bool:
    return table in patterns or f"{schema}.{table}" in patterns


def change_counter(source: SourceConfig) -> int:
    """Rows inserted, updated and deleted in the backed-up tables since the statistics began.
    Raises SourceError."""
    conn = connect(source.dsn.get_secret_value(), timeout=source.connect_timeout, autocommit=True)
    try:
        rows = conn.execute(
            "SELECT schemaname, relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables "
            "WHERE schemaname = ANY(%s)", (list(source.schemas),)
        ).fetchall()
    except psycopg.Error as exc:
        raise SourceError(f"cannot read the table statistics: {one_line(exc)}") from None
    finally:
        conn.close()
    total = 0
    for schema, table, count in rows:
        schema_name, table_name = str(schema), str(table)
        if source.include_tables and not _matches(schema_name, table_name, source.include_tables):
            continue
        if _matches(schema_name, table_name, source.exclude_tables):
            continue
        total += int(count or 0)  # type: ignore[call-overload]
    return total


def load_record(state_dir: Path) -> dict[str, Any]:
    """What the last successful backup recorded ({} when none)."""
    try:
        data = json.loads((state_dir / CHANGES_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_backup(state_dir: Path, counter: int, backup_id: str, at: datetime | None = None) -> None:
    """Record the counter a successful backup started from."""
    record = {"counter": counter, "backup": backup_id, "at": iso(at or datetime.now(UTC))}
    atomic_write(state_dir / CHANGES_NAME, (json.dumps(record) + "\n").encode())


def changes_since_backup(counter: int, record: dict[str, Any]) -> int:
    """How many row changes happened since the recorded backup (a reset counts from zero)."""
    baseline = record.get("counter")
    if not isinstance(baseline, int):
        return 0
    return counter - baseline if counter >= baseline else counter


class ChangeWatcher:
    """Polled by the daemon's loop: `due(config)` is True when an extra backup should run now."""

    def __init__(self) -> None:
        self._last_poll: float | None = None
        self.last_count: int | None = None

    def due(self, config: Config, now: datetime | None = None) -> bool:
        """Never raises: an unreachable database is logged and the answer is False."""
        threshold = config.schedule.on_changes
        if threshold <= 0:
            return False
        interval = min(POLL_SECONDS, config.schedule.min_interval.total_seconds())
        if self._last_poll is not None and time.monotonic() - self._last_poll < interval:
            return False
        self._last_poll = time.monotonic()
        now = now or datetime.now(UTC)
        state_dir = config.state.dir
        record = load_record(state_dir)
        try:
            counter = change_counter(config.source)
        except BackupdError as exc:
            log.warning("changes_unknown", error=str(exc))
            return False
        if not record:
            # no backup recorded a baseline yet: start counting from now (the schedule takes the first)
            try:
                record_backup(state_dir, counter, "", now)
            except BackupdError as exc:
                log.warning("changes_record_failed", error=str(exc))
            return False
        changed = changes_since_backup(counter, record)
        self.last_count = changed
        if changed < threshold:
            return False
        last = parse_time(record.get("at"))
        if last is not None and now - last < config.schedule.min_interval:
            return False
        log.info("changes_threshold_reached", changes=changed, threshold=threshold,
                 since_backup=record.get("backup") or None)
        return True
