"""`[schedule] on_changes`: the daemon takes an extra backup once enough rows changed (read from
PostgreSQL's statistics), and not before; the counter recorded by each backup is the baseline."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg

from backupd.changes import ChangeWatcher, change_counter, load_record
from backupd.config import load_config
from tests.conftest import run_cli
from tests.e2e.test_daemon import daemons, history, listed, wait_for  # noqa: F401 - daemons is a fixture


def insert_logs(dsn: str, count: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO logs (source, event) SELECT 'system', 'bulk ' || g FROM generate_series(1, %s) g",
                     (count,))
        conn.commit()


def test_counter_and_watcher_follow_the_statistics(make_config, source_dsn, tmp_path):
    config_path = make_config(schedule={"every": "24h", "on_changes": 50, "min_interval": "1s"},
                              export={"incremental": True})
    config = load_config(config_path)
    assert run_cli("--config", str(config_path), "backup").returncode == 0
    record = load_record(tmp_path / "state")
    assert record["backup"] and isinstance(record["counter"], int)
    watcher = ChangeWatcher()
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert not watcher.due(config, later)
    insert_logs(source_dsn, 60)
    # the statistics are flushed shortly after commit
    wait_for(lambda: change_counter(config.source) >= record["counter"] + 60, 10, "statistics flushed")
    watcher = ChangeWatcher()
    assert watcher.due(config, later) and watcher.last_count is not None and watcher.last_count >= 60
    # at most once per min_interval after the last backup
    assert not ChangeWatcher().due(config, datetime.now(UTC) - timedelta(hours=1))
    # excluded tables do not count
    excluded = load_config(make_config(schedule={"every": "24h", "on_changes": 50},
                                       source={"exclude_tables": ["logs"]}))
    assert change_counter(excluded.source) < change_counter(config.source)


def test_daemon_takes_an_extra_incremental_after_enough_changes(make_config, source_dsn, daemons, tmp_path):  # noqa: F811
    config = make_config(schedule={"every": "24h", "on_changes": 25, "min_interval": "2s"},
                         export={"incremental": True})
    daemon = daemons(config)
    wait_for(lambda: len(listed(config)) == 1, 90, "the first (catch-up) backup")
    insert_logs(source_dsn, 30)
    wait_for(lambda: len(listed(config)) == 2, 90, f"a change-triggered backup\n{daemon.log[-2000:]}")
    runs = history(tmp_path / "state")
    assert [r["trigger"] for r in runs][-1] == "changes"
    second = listed(config)[-1]
    assert second["kind"] == "incremental"
    assert daemon.events("changes_threshold_reached")
    status = json.loads((tmp_path / "state" / "changes.json").read_text())
    assert status["backup"] == second["id"]
