"""The optional artifacts of `export.formats` beside the JSON export: CSV and SQLite.

They are written in full backups only: an incremental holds the JSON export of its changes (and
the full SQL dump); a CSV or SQLite copy is a complete picture or nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from backupd.catalog import Table
from backupd.incremental import BackupPlan
from backupd.snapshot import Snapshot
from backupd.sources import ArtifactSink, SourceReport
from backupd.sources.csv_export import CsvExportSource
from backupd.sources.sqlite_export import SqliteExportSource


def extra_format_jobs(formats: Sequence[str], plan: BackupPlan, snapshot: Snapshot, sink: ArtifactSink,
                      tables: list[Table]) -> list[Callable[[], SourceReport]]:
    """Producers for the CSV and SQLite artifacts the config asks for (none in an incremental)."""
    if plan.kind != "full":
        return []
    jobs: list[Callable[[], SourceReport]] = []
    if "csv" in formats:
        csv_source = CsvExportSource(tables)
        jobs.append(lambda: csv_source.produce(snapshot, sink))
    if "sqlite" in formats:
        sqlite_source = SqliteExportSource(tables)
        jobs.append(lambda: sqlite_source.produce(snapshot, sink))
    return jobs
