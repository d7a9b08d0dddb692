"""One run: lock -> snapshot -> sources side by side -> manifest -> fan-out -> retention -> status -> alerts.

The same pipeline serves `backupd backup` and the daemon's scheduled runs. A run is published
only by the manifests written last at each destination; whatever happens, staging is removed.
"""

from __future__ import annotations

import contextvars
import shutil
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog

from backupd import __version__, proc
from backupd.catalog import Table, discover
from backupd.config import Config, DestinationConfig
from backupd.db import one_line
from backupd.destinations import build
from backupd.destinations.base import Destination, StagedBackup, destination_os_error
from backupd.errors import Abandoned, BackupdError, DestinationError
from backupd.manifest import Manifest, TableEntry, backup_id, iso, now_utc
from backupd.notify.dispatch import dispatch_run, run_started
from backupd.redact import redact
from backupd.signing import key_of
from backupd.snapshot import Snapshot
from backupd.sources import ArtifactSink, SourceReport
from backupd.sources.json_export import JsonExportSource
from backupd.sources.pg_dump import PgDumpSource
from backupd import progress
from backupd.status import StatusStore

log = structlog.get_logger("backupd.run")

Outcome = Literal["success", "partial", "failed"]
EXIT_CODES: dict[str, int] = {"success": 0, "partial": 3, "failed": 1}
RETRY_DELAYS = (1.0, 4.0, 16.0)


@dataclass
class RunResult:
    """What one run did; `record()` is what status.json and history.jsonl keep."""

    id: str
    started: datetime
    trigger: str
    kind: str = "full"
    finished: datetime | None = None
    outcome: Outcome = "failed"
    error: str | None = None
    manifest: Manifest | None = None
    destinations: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 success, 3 partial, 1 failed."""
        return EXIT_CODES[self.outcome]

    @property
    def duration_seconds(self) -> float:
        """Wall time of the run."""
        end = self.finished or now_utc()
        return round((end - self.started).total_seconds(), 3)

    def record(self) -> dict[str, Any]:
        """The run as JSON-ready data (no secret: errors are redacted)."""
        manifest = self.manifest
        return {
            "id": self.id,
            "kind": self.kind,
            "trigger": self.trigger,
            "started": iso(self.started),
            "finished": iso(self.finished or now_utc()),
            "duration_seconds": self.duration_seconds,
            "outcome": self.outcome,
            "error": redact(self.error) if self.error else None,
            "rows": manifest.total_rows if manifest else 0,
            "bytes": manifest.total_bytes if manifest else 0,
            "tables": {k: v.rows for k, v in manifest.tables.items()} if manifest else {},
            "destinations": self.destinations,
            "host": socket.gethostname(),
        }


PhaseCallback = Callable[[str], None]


class Runner:
    """Runs backups for one config. `on_phase` hears each phase (the daemon relays it to systemd)."""

    def __init__(self, config: Config, *, on_phase: PhaseCallback | None = None) -> None:
        self.config = config
        self.state_dir = config.state.dir
        self.status = StatusStore(self.state_dir, config.state.stale_after)
        self.on_phase = on_phase or (lambda phase: None)
        self._snapshot: Snapshot | None = None
        from backupd.incremental import BackupPlan

        self._plan = BackupPlan("full")
        self._changes_counter: int | None = None
        self._snapshot_lock = threading.Lock()

    # -- the run ------------------------------------------------------------------------------

    def run(self, *, trigger: str = "manual", only: list[str] | None = None,
            kind: str | None = None, wait_for_lock: bool = False,
            next_run: datetime | None = None) -> RunResult:
        """One backup under the lock. Raises LockHeld (another run) and Abandoned (a signal);
        every other failure is a `failed` result, recorded in status.json."""
        from backupd.lock import RunLock

        lock = RunLock(self.state_dir)
        lock.acquire(wait=wait_for_lock)
        try:
            return self._locked_run(trigger, only, kind, next_run)
        finally:
            lock.release()

    def _new_id(self) -> tuple[str, datetime]:
        last = str((self.status.load().get("last_run") or {}).get("id") or "")
        started = datetime.now(UTC)
        while backup_id(started) <= last:
            # two runs in one second would share an id: start this one in the next second
            time.sleep(max(0.05, 1 - datetime.now().microsecond / 1e6))
            started = datetime.now(UTC)
        return backup_id(started), started

    def _locked_run(self, trigger: str, only: list[str] | None, kind: str | None,
                    next_run: datetime | None) -> RunResult:
        identifier, started = self._new_id()
        structlog.contextvars.bind_contextvars(run_id=identifier)
        result = RunResult(id=identifier, started=started, trigger=trigger)
        staging_root = self.state_dir / "staging"
        staging = staging_root / identifier
        destinations = self._destinations(only)
        try:
            self._clean_staging(staging_root)
            staging.mkdir(parents=True, mode=0o700)
            log.info("backup_started", trigger=trigger, destinations=[d.name for d, _ in destinations])
            run_started(self.config, identifier)
            self.on_phase("snapshot")
            self._plan = self._plan_backup(kind, [d for d, _ in destinations])
            result.manifest = self._produce(identifier, started, staging)
            result.kind = result.manifest.kind
            self.on_phase("upload")
            self._fan_out(StagedBackup(staging, result.manifest, key_of(self.config)), destinations, result)
            stored = [name for name, r in result.destinations.items() if r["ok"]]
            result.outcome = "success" if len(stored) == len(destinations) else "partial" if stored else "failed"
            if not stored:
                result.error = "; ".join(f"{n}: {r['error']}" for n, r in result.destinations.items())
            elif self._changes_counter is not None:
                from backupd.changes import record_backup

                record_backup(self.state_dir, self._changes_counter, identifier)
        except Abandoned:
            result.outcome = "failed"
            result.error = "abandoned: stopped by a signal"
            log.warning("backup_abandoned")
            raise
        except BackupdError as exc:
            result.outcome = "failed"
            result.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug must still be recorded as a failed run
            result.outcome = "failed"
            result.error = f"internal error: {type(exc).__name__}: {redact(str(exc))}"
            log.exception("backup_crashed")
        finally:
            result.finished = datetime.now(UTC)
            shutil.rmtree(staging, ignore_errors=True)
            if result.error != "abandoned: stopped by a signal":
                self._finish(result, next_run)
            structlog.contextvars.unbind_contextvars("run_id")
        return result

    def _finish(self, result: RunResult, next_run: datetime | None) -> None:
        level = "info" if result.outcome == "success" else "warning" if result.outcome == "partial" else "error"
        getattr(log, level)(
            "backup_finished", outcome=result.outcome, duration_s=result.duration_seconds,
            rows=result.manifest.total_rows if result.manifest else 0,
            bytes=result.manifest.total_bytes if result.manifest else 0, error=result.error,
        )
        try:
            status = self.status.record_run(result.record(), next_run)
        except BackupdError as exc:
            log.error("status_write_failed", error=str(exc))
            status = {}
            if result.outcome != "failed":
                result.outcome = "failed"
                result.error = str(exc)
        if status:
            from backupd.metrics import write_metrics

            try:  # the Prometheus text file follows every run; it never fails one
                write_metrics(self.state_dir, self.config.state.stale_after, status,
                              self.config.state.metrics_file)
            except BackupdError as exc:
                log.warning("metrics_write_failed", error=str(exc))
        self._audit(result)
        dispatch_run(self.config, result, status)

    def _audit(self, result: RunResult) -> None:
        """The audit row (after the snapshot closed, so it is never inside the backup it describes)."""
        from backupd import audit

        record = result.record()
        audit.record(
            self.config, "backup", outcome=result.outcome, trigger=result.trigger, backup_id=result.id,
            counts={"rows": record["rows"], "bytes": record["bytes"], "tables": len(record["tables"])},
            duration_seconds=result.duration_seconds, error=result.error,
            detail={"kind": record["kind"], "destinations": record["destinations"]},
        )

    def _clean_staging(self, staging_root: Path) -> None:
        if staging_root.exists():
            for leftover in staging_root.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
                log.info("staging_removed", path=str(leftover))

    def _destinations(self, only: list[str] | None) -> list[tuple[Destination, DestinationConfig]]:
        configs = [self.config.destination(n) for n in only] if only else list(self.config.destinations)
        return [(build(c), c) for c in configs]

    # -- producing ----------------------------------------------------------------------------

    def _produce(self, identifier: str, started: datetime, staging: Path) -> Manifest:
        source = self.config.source
        snapshot = Snapshot(source.dsn.get_secret_value(), source.connect_timeout)
        with self._snapshot_lock:
            self._snapshot = snapshot
        try:
            tables = discover(snapshot.conn, source.schemas, source.include_tables,
                              source.exclude_tables, source.exclude_columns)
            log.info("snapshot_taken", snapshot=snapshot.id, server=snapshot.info.server_version,
                     tables=len(tables))
            encryptor = self._encryptor()
            sink = ArtifactSink(staging, self.config.pipeline.compression,
                                self.config.pipeline.compression_level, encryptor)
            jobs: list[Callable[[], SourceReport]] = []
            if self.config.dump.enabled:
                dump = self._dump_source(tables)
                dump.pick_tool(snapshot)  # fail on a too-old pg_dump before anything is written
                jobs.append(lambda: dump.produce(snapshot, sink))
            if self.config.export.enabled:
                jobs.extend(self._export_jobs(snapshot, sink, tables))
            if source.storage:
                from backupd.storage_objects import StorageObjectsSource

                storage = StorageObjectsSource(list(source.storage))
                jobs.append(lambda: storage.produce(snapshot, sink))
            reports = self._run_side_by_side(jobs, snapshot)
            artifacts = [a for r in reports for a in r.artifacts]
            table_entries: dict[str, TableEntry] = {}
            for report in reports:
                table_entries.update(report.tables)
            return Manifest(
                id=identifier, kind=self._plan.kind, base=self._plan.base, since=self._plan.since_text,
                horizon=iso(self._plan.horizon) if self._plan.horizon else None,
                started_at=iso(started), finished_at=iso(now_utc()),
                backupd=__version__,
                source={"server_version": snapshot.info.server_version,
                        "server_version_num": snapshot.info.server_version_num,
                        "database": snapshot.info.database},  # type: ignore[arg-type]
                snapshot=snapshot.id,
                export_version="2.0" if self.config.export.enabled else None,
                schemas=list(source.schemas),
                excluded_columns={t.key: t.excluded_columns for t in tables if t.excluded_columns},
                tables=table_entries,
                table_order=[t.key for t in tables],
                artifacts=artifacts,
                encryption_recipients=list(encryptor.recipients) if encryptor else [],
            )
        finally:
            with self._snapshot_lock:
                self._snapshot = None
            snapshot.close()

    def _dump_source(self, tables: list[Table]) -> PgDumpSource:
        if self.config.dump.tool == "supabase":
            from backupd.sources.supabase_cli import SupabaseCliSource

            return SupabaseCliSource(self.config.source, self.config.dump, tables, self.state_dir)
        return PgDumpSource(self.config.source, self.config.dump, tables)

    def _export_jobs(self, snapshot: Snapshot, sink: ArtifactSink,
                     tables: list[Table]) -> list[Callable[[], SourceReport]]:
        from backupd.sources.extra_formats import extra_format_jobs

        jobs = extra_format_jobs(self.config.export.formats, self._plan, snapshot, sink, tables)
        if self._plan.track_keys:
            from backupd.incremental import KeyStore
            from backupd.sources.json_incremental import TrackedJsonExportSource

            tracked = TrackedJsonExportSource(tables, self._plan, KeyStore(self.state_dir), sink.folder.name)
            return [lambda: tracked.produce(snapshot, sink), *jobs]
        exporter = JsonExportSource(tables)
        return [lambda: exporter.produce(snapshot, sink), *jobs]

    def _plan_backup(self, kind: str | None, destinations: list[Destination]) -> Any:
        """Full or incremental (backupd.incremental); the horizon is measured before the snapshot."""
        import dataclasses

        from backupd.incremental import measure_horizon, plan_backup

        plan = plan_backup(self.config, kind, destinations, now_utc())
        self._changes_counter = self._count_changes()
        if plan.track_keys:
            source = self.config.source
            plan = dataclasses.replace(
                plan, horizon=measure_horizon(source.dsn.get_secret_value(), source.connect_timeout))
        log.info("backup_planned", kind=plan.kind, base=plan.base, since=plan.since_text, reason=plan.reason)
        return plan

    def _count_changes(self) -> int | None:
        """The change counter this run starts from, for `[schedule] on_changes` (backupd.changes)."""
        if self.config.schedule.on_changes <= 0:
            return None
        from backupd.changes import change_counter

        try:
            return change_counter(self.config.source)
        except BackupdError as exc:
            log.warning("changes_unknown", error=str(exc))
            return None

    def _encryptor(self) -> Any:
        pipeline = self.config.pipeline
        if not (pipeline.encrypt_to or pipeline.age_recipients):
            return None
        from backupd.crypto import build_encryptor

        return build_encryptor(pipeline, self.state_dir)

    def _run_side_by_side(self, jobs: list[Callable[[], SourceReport]], snapshot: Snapshot) -> list[SourceReport]:
        """Run the producers in parallel; the first failure stops the others."""
        if len(jobs) == 1:
            return [jobs[0]()]
        pool = ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="source")
        # each job runs in a copy of our context, so its log lines carry run_id too
        futures: list[Future[SourceReport]] = [pool.submit(contextvars.copy_context().run, job) for job in jobs]
        try:
            reports = []
            pending = list(futures)
            while pending:
                for future in list(pending):
                    try:
                        reports.append(future.result(timeout=0.2))
                        pending.remove(future)
                    except TimeoutError:
                        continue
            return reports
        except BaseException:
            self.abort_producers(snapshot)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def abort_producers(self, snapshot: Snapshot | None = None) -> None:
        """Stop every producer (children terminated, queries cancelled); safe from any thread."""
        proc.terminate_all()
        with self._snapshot_lock:
            target = snapshot or self._snapshot
        if target is not None:
            target.cancel()

    # -- fan-out ------------------------------------------------------------------------------

    def _fan_out(self, staged: StagedBackup, destinations: list[tuple[Destination, DestinationConfig]],
                 result: RunResult) -> None:
        """Every destination is tried; one failing never stops the others."""
        for destination, config in destinations:
            structlog.contextvars.bind_contextvars(destination=destination.name)
            progress.current().stage(f"storing at {destination.name}")
            began = time.monotonic()
            try:
                try:
                    destination.sweep(keep=None)
                except (BackupdError, OSError) as exc:
                    log.warning("sweep_failed", error=_one_line(exc))
                self._store_with_retry(destination, staged, config)
                result.destinations[destination.name] = {
                    "ok": True, "error": None, "seconds": round(time.monotonic() - began, 3)}
                log.info("destination_stored", seconds=round(time.monotonic() - began, 3))
                self._apply_retention(destination, config, result)
                if self.config.source.storage:
                    from backupd.storage_objects import prune_unreferenced

                    try:
                        prune_unreferenced(destination)
                    except (BackupdError, OSError) as exc:
                        log.warning("storage_prune_failed", error=_one_line(exc))
            except Abandoned:
                raise
            except (BackupdError, OSError) as exc:
                # an OSError (ENOTDIR, EACCES, EROFS, ENOSPC, EIO) is the destination's, not a bug
                error = _one_line(exc, "write")
                result.destinations[destination.name] = {"ok": False, "error": error}
                log.error("destination_failed", error=error)
            except Exception as exc:  # noqa: BLE001 - isolate a destination's bug from the others
                message = f"{type(exc).__name__}: {one_line(exc)}"
                result.destinations[destination.name] = {"ok": False, "error": message}
                log.exception("destination_crashed")
            finally:
                structlog.contextvars.unbind_contextvars("destination")

    def _store_with_retry(self, destination: Destination, staged: StagedBackup,
                          config: DestinationConfig | None = None) -> None:
        """Store, retrying transient DestinationErrors with capped exponential backoff."""
        if config is not None:
            first = config.retry_backoff.total_seconds()
            delays: tuple[float, ...] = tuple(min(300.0, first * 4 ** n) for n in range(config.retries))
        else:
            delays = RETRY_DELAYS
        for attempt, delay in enumerate((*delays, None)):
            try:
                destination.store(staged)
                return
            except DestinationError as exc:
                if not exc.transient or delay is None:
                    raise
                log.warning("destination_retrying", attempt=attempt + 1, delay_s=delay, error=str(exc))
                time.sleep(delay)

    def _apply_retention(self, destination: Destination, config: DestinationConfig, result: RunResult) -> None:
        if config.retention.is_unlimited():
            return
        from backupd.retention import apply_retention
        from backupd.status import COMMAND_TRIGGERS

        # this run is not in history.jsonl yet: a command-made one is named here
        commanded = [result.id] if result.trigger in COMMAND_TRIGGERS else []
        try:
            apply_retention(destination, config.retention, now_utc(), dry_run=False,
                            state_dir=self.config.state.dir, commanded=commanded,
                            key=key_of(self.config))
        except (BackupdError, OSError) as exc:
            log.error("retention_failed", error=_one_line(exc))


def _one_line(exc: BackupdError | OSError, action: str = "use") -> str:
    """A destination's error as its one line (an OSError with its path and reason)."""
    return str(exc if isinstance(exc, BackupdError) else destination_os_error(exc, action))
