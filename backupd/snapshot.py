"""One database snapshot for everything a backup reads.

A REPEATABLE READ, READ ONLY transaction exports its snapshot (`pg_export_snapshot()`); pg_dump
runs with `--snapshot`, the JSON export reads inside the owning transaction, and further readers
`attach()` (a new connection that imports the same snapshot). The snapshot is valid while this
object is open.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType

import psycopg
from psycopg import IsolationLevel

from backupd.db import connect, one_line
from backupd.errors import SourceError


@dataclass(frozen=True)
class SnapshotInfo:
    """What the manifest records about the snapshot."""

    snapshot_id: str
    server_version: str
    server_version_num: int
    database: str
    taken_at: datetime


def _begin(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.isolation_level = IsolationLevel.REPEATABLE_READ
    conn.read_only = True


RENDERING_SETTINGS = {"TimeZone": "UTC", "DateStyle": "ISO, YMD", "IntervalStyle": "postgres",
                      "extra_float_digits": "1"}


def _pin_rendering(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Render values the same way whatever the server's or role's defaults: the export's text (and
    so each table's checksum) must not depend on the session that produced it."""
    for name, value in RENDERING_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))


class Snapshot:
    """The owning transaction; use as a context manager."""

    def __init__(self, dsn: str, timeout: timedelta = timedelta(seconds=15)) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self.conn = connect(dsn, timeout=timeout)
        try:
            _begin(self.conn)
            # A backup may take hours: no server-side timeout may end the owning transaction early.
            self.conn.execute("SET LOCAL statement_timeout = 0")
            self.conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            _pin_rendering(self.conn)
            row = self.conn.execute(
                "SELECT pg_export_snapshot(), current_setting('server_version'), "
                "current_setting('server_version_num')::int, current_database(), transaction_timestamp()"
            ).fetchone()
        except psycopg.Error as exc:
            self.conn.close()
            raise SourceError(f"cannot open a snapshot: {one_line(exc)}") from None
        assert row is not None
        self.info = SnapshotInfo(
            snapshot_id=str(row[0]),
            server_version=str(row[1]).split()[0],
            server_version_num=int(row[2]),  # type: ignore[call-overload]
            database=str(row[3]),
            taken_at=row[4],  # type: ignore[arg-type]
        )

    @property
    def id(self) -> str:
        """The exported snapshot id, for pg_dump --snapshot."""
        return self.info.snapshot_id

    def attach(self) -> psycopg.Connection[tuple[object, ...]]:
        """A new connection reading the same snapshot (for a reader in another thread)."""
        conn = connect(self.dsn, timeout=self.timeout)
        try:
            _begin(conn)
            conn.execute(f"SET TRANSACTION SNAPSHOT '{self.id}'")
            conn.execute("SET LOCAL statement_timeout = 0")
            _pin_rendering(conn)
        except psycopg.Error as exc:
            conn.close()
            raise SourceError(f"cannot import snapshot {self.id}: {one_line(exc)}") from None
        return conn

    def cancel(self) -> None:
        """Cancel whatever query the owning connection is running (from another thread)."""
        try:
            self.conn.cancel_safe(timeout=5)
        except (psycopg.Error, AttributeError):
            pass

    def close(self) -> None:
        """End the transaction (rolled back: it only read) and the connection."""
        # A COPY whose reader stopped half-way (its consumer failed: disk full, a signal) still
        # holds the connection's lock, and rollback() would wait for it forever. Closing the
        # connection ends the read-only transaction on the server just as well.
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.ACTIVE:
            try:
                self.conn.rollback()
            except psycopg.Error:
                pass
        self.conn.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
