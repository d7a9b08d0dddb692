"""Incremental backups: which kind a run takes, what it builds on, and the primary-key sets that
turn "rows gone since the previous backup" into the export's `deleted`.

How an incremental is decided (`plan_backup`): with `export.incremental = true`, the newest
complete backup at the run's first destination is the *previous* backup; it must also be present
at every other destination of the run, and its primary-key sets must be in the state dir
(`<state.dir>/keys/<id>/`). Its chain's full is the *base*. A full is taken instead when any of
that is missing, when `--full` is asked, or when the base is older than `export.full_every`.

What an incremental holds: rows with `updated_at >= since`, where `since` is the previous
backup's `horizon` minus `export.safety_margin`. The horizon is measured just before the
snapshot: the earliest of the server's clock and the start of every transaction then in progress
(`pg_stat_activity.xact_start`), so a transaction that began before a snapshot and committed
after it (its rows carry an `updated_at` older than the snapshot) is still caught by the next
incremental. Tables without `updated_at`, or new since the previous backup, are exported whole.
Rows present now, absent from the previous backup and not matched by `since` (an import that kept
old `updated_at` values) are found by the key merge and exported too.

Deletions: each backup that tracks keys writes, per table, its primary keys sorted by their
JSON text in byte order (`COLLATE "C"`), zstd-compressed, in `<state.dir>/keys/<id>/`. An
incremental sort-merges the previous set with the current keys (streamed from PostgreSQL in the
same order): keys only in the previous set are `deleted`. Memory stays bounded (three cursors).
Each key is a JSON object `{pk_column: value, ...}`, values as PostgreSQL renders them to JSON;
`deleted` is `{table: [key, ...]}`.

The key sets live only in the state dir (only the previous backup's are kept): if the state dir
is lost, or the previous backup was taken without key tracking, the next run is a full. The SQL
dump is full in every backup.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import psycopg
import structlog
import zstandard

from backupd.catalog import Table
from backupd.config import Config
from backupd.db import connect, one_line, quote_ident
from backupd.destinations.base import Destination
from backupd.errors import BackupdError, UsageError
from backupd.manifest import Manifest, id_time, iso
from backupd.signing import key_of, own_backups
from backupd.status import parse_time

log = structlog.get_logger("backupd.incremental")

Kind = Literal["full", "incremental"]
COMPLETE_MARK = "COMPLETE"
COPY_OPTIONS = "WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"


@dataclass(frozen=True)
class BackupPlan:
    """What one run takes: its kind, the chain it extends, and whether it records key sets."""

    kind: Kind
    track_keys: bool = False
    base: str | None = None
    previous: str | None = None
    since: datetime | None = None
    horizon: datetime | None = None
    reason: str = ""

    @property
    def since_text(self) -> str | None:
        """`since` as written in the manifest and the export."""
        return iso(self.since) if self.since else None


# -- key SQL ----------------------------------------------------------------------------------


def has_usable_key(table: Table) -> bool:
    """True when the table has a primary key made only of exported columns."""
    return bool(table.primary_key) and all(c in table.columns for c in table.primary_key)


def key_expression(table: Table, alias: str = "t") -> str:
    """SQL for a row's key as JSON text `{"pk" : value}`, collated for byte order."""
    parts = ", ".join(f"'{c.replace(chr(39), chr(39) * 2)}', {alias}.{quote_ident(c)}" for c in table.primary_key)
    return f"(json_build_object({parts})::text) COLLATE \"C\""


def keys_copy_sql(table: Table) -> str:
    """COPY of every key of `table`, sorted in byte order, one JSON object per line."""
    return (f"COPY (SELECT {key_expression(table)} AS k FROM ({table.select_sql()}) t ORDER BY 1) "
            f"TO STDOUT {COPY_OPTIONS}")


def keyed_rows_copy_sql(table: Table, where: str = "") -> str:
    """COPY of `key \\x02 row` lines sorted by key (the row rendered by row_to_json)."""
    return (f"COPY (SELECT {key_expression(table)} AS k, {table.row_json()} FROM ({table.select_sql(where)}) t "
            f"ORDER BY 1) TO STDOUT {COPY_OPTIONS}")


def since_condition(since: datetime) -> str:
    """The WHERE condition selecting rows changed since `since` (an ISO literal, no user text)."""
    return f"updated_at >= '{since.isoformat()}'::timestamptz"


# -- key sets on disk -------------------------------------------------------------------------


class KeyWriter:
    """Writes sorted keys (one per line) to a zstd file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._writer = zstandard.ZstdCompressor(level=1).stream_writer(self._file, closefd=False)
        self.count = 0

    def add(self, keys: list[bytes]) -> None:
        """Append keys (already in order)."""
        if keys:
            self._writer.write(b"\n".join(keys) + b"\n")
            self.count += len(keys)

    def close(self) -> None:
        """Flush and close the file."""
        self._writer.flush(zstandard.FLUSH_FRAME)
        self._writer.close()  # type: ignore[no-untyped-call]  # zstandard ships no stub for it
        self._file.close()


def read_keys(path: Path) -> Iterator[bytes]:
    """The keys of a key file, in their stored order."""
    with open(path, "rb") as raw:
        reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw), 1 << 20)
        for line in reader:
            yield line.rstrip(b"\n")


class KeyStore:
    """Per backup, per table, the sorted primary keys: `<state.dir>/keys/<id>/<table>.keys.zst`."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "keys"

    def folder(self, backup_id: str) -> Path:
        """Where the keys of one backup live."""
        return self.root / backup_id

    def path(self, backup_id: str, table_key: str) -> Path:
        """The key file of one table of one backup."""
        return self.folder(backup_id) / f"{table_key}.keys.zst"

    def complete(self, backup_id: str) -> bool:
        """True when every table's keys of that backup were written."""
        return (self.folder(backup_id) / COMPLETE_MARK).exists()

    def has(self, backup_id: str, table_key: str) -> bool:
        """True when that backup recorded this table's keys."""
        return self.complete(backup_id) and self.path(backup_id, table_key).exists()

    def writer(self, backup_id: str, table_key: str) -> KeyWriter:
        """A writer for one table's keys."""
        return KeyWriter(self.path(backup_id, table_key))

    def mark_complete(self, backup_id: str) -> None:
        """Record that every table's keys were written."""
        (self.folder(backup_id) / COMPLETE_MARK).write_bytes(b"")

    def keep_only(self, keep: set[str]) -> None:
        """Remove the key sets of every other backup."""
        if not self.root.exists():
            return
        for child in self.root.iterdir():
            if child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)


def merge_keys(previous: Iterator[bytes], current: Iterable[bytes], exported: Iterator[bytes],
               on_deleted: Callable[[bytes], None], on_missed: Callable[[bytes], None]) -> None:
    """Sort-merge three ascending key streams: keys only in `previous` are deleted; keys in
    `current` that are neither in `previous` nor in `exported` were missed by the change filter."""
    prev = next(previous, None)
    done = next(exported, None)
    for key in current:
        while prev is not None and prev < key:
            on_deleted(prev)
            prev = next(previous, None)
        in_previous = prev == key
        if in_previous:
            prev = next(previous, None)
        while done is not None and done < key:
            done = next(exported, None)
        in_exported = done == key
        if in_exported:
            done = next(exported, None)
        if not in_previous and not in_exported:
            on_missed(key)
    while prev is not None:
        on_deleted(prev)
        prev = next(previous, None)


# -- deciding a run ---------------------------------------------------------------------------


def check_request(config: Config, requested: str | None) -> None:
    """Refuse `--incremental` when the config cannot take one (UsageError, exit 2)."""
    if requested == "incremental" and not (config.export.enabled and config.export.incremental):
        raise UsageError("--incremental needs export.enabled = true and export.incremental = true in the config")


def measure_horizon(dsn: str, timeout: timedelta) -> datetime:
    """The server's clock, or the start of the oldest transaction in progress if that is earlier."""
    conn = connect(dsn, timeout=timeout, autocommit=True)
    try:
        row = conn.execute(
            "SELECT clock_timestamp(), (SELECT min(xact_start) FROM pg_stat_activity "
            "WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid())"
        ).fetchone()
    except psycopg.Error as exc:
        raise BackupdError(f"cannot read the server's clock: {one_line(exc)}") from None
    finally:
        conn.close()
    assert row is not None
    now, oldest = row
    assert isinstance(now, datetime)
    return min(now, oldest) if isinstance(oldest, datetime) else now


def plan_backup(config: Config, requested: str | None, destinations: list[Destination],
                now: datetime) -> BackupPlan:
    """Decide the kind of this run (see module docstring). Never raises for a missing chain: a
    full is always possible."""
    check_request(config, requested)
    export = config.export
    if not (export.enabled and export.incremental):
        return BackupPlan("full", reason="incrementals are off")
    keys = KeyStore(config.state.dir)
    previous = _previous_backup(destinations, key_of(config), now)
    keys.keep_only({previous.id} if previous else set())
    full = BackupPlan("full", track_keys=True)
    if requested == "full":
        return _with_reason(full, "--full asked")
    if previous is None:
        return _with_reason(full, "no previous backup at every destination")
    if not keys.complete(previous.id):
        return _with_reason(full, f"no key sets of {previous.id} in the state dir")
    horizon = parse_time(previous.horizon)
    if horizon is None:
        return _with_reason(full, f"{previous.id} records no horizon")
    base = previous.base if previous.kind == "incremental" and previous.base else previous.id
    if requested is None and now - id_time(base) >= export.full_every:
        return _with_reason(full, f"base {base} is older than full_every")
    return BackupPlan("incremental", track_keys=True, base=base, previous=previous.id,
                      since=horizon - export.safety_margin, reason="previous backup " + previous.id)


def _with_reason(plan: BackupPlan, reason: str) -> BackupPlan:
    return BackupPlan(plan.kind, plan.track_keys, plan.base, plan.previous, plan.since, plan.horizon, reason)


def _previous_backup(destinations: list[Destination], key: bytes | None, now: datetime) -> Manifest | None:
    # an incremental builds only on this host's own backups: never a planted or future one
    if not destinations:
        return None
    try:
        listings = [own_backups(destination.backups(), key, now)[0] for destination in destinations]
    except BackupdError as exc:
        log.warning("previous_backup_unknown", error=str(exc))
        return None
    if not listings[0]:
        return None
    newest = listings[0][-1]
    for listing in listings[1:]:
        if newest.id not in {m.id for m in listing}:
            return None
    return newest
