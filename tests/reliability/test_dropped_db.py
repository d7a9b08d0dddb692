"""The database goes away under a running backup: its sessions terminated (pg_terminate_backend),
its query cancelled (SQLSTATE 57014, what a statement timeout raises), the server restarted. The
run fails (exit 1) with one clear line, nothing is published, and the next run succeeds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from backupd.localpg import LocalPostgres
from tests.conftest import GEN_DATA, SCHEMA_SQL, run_cli, write_config
from tests.reliability.conftest import error_lines, incomplete_folders, listed_ids, spawn_cli

pytestmark = pytest.mark.slow

COPYING = ("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'backupd%%' AND state = 'active' "
           "AND query ILIKE 'COPY%%' AND datname = %s")


def _strike_when_copying(admin_dsn: str, database: str, process: subprocess.Popen[bytes], action: str) -> int:
    """While backupd runs, `action` (terminate or cancel) every backupd session of `database` that
    is streaming a COPY, in one statement (a cancel reaching a query that just ended is a no-op:
    keep striking until one lands or the run ends). Returns how many strikes hit a running COPY."""
    deadline = time.monotonic() + 60
    hits = 0
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        while process.poll() is None and time.monotonic() < deadline and not hits:
            rows = admin.execute(
                f"SELECT pg_{action}_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'backupd%%' "
                "AND state = 'active' AND query ILIKE 'COPY%%' AND datname = %s", (database,)).fetchall()
            hits += sum(1 for (ok,) in rows if ok)
            time.sleep(0.002)
    return hits


def _nothing_published(config: Path, tmp_path: Path, before: list[str]) -> None:
    assert listed_ids(config)["local"] == before
    assert incomplete_folders(tmp_path / "backups") == []
    staging = tmp_path / "state" / "staging"
    assert not staging.exists() or not list(staging.iterdir())
    assert json.loads((tmp_path / "state" / "status.json").read_text())["last_run"]["outcome"] == "failed"


@pytest.mark.parametrize("action", ["terminate", "cancel"])
def test_sessions_killed_mid_export_fail_the_run_and_publish_nothing(make_config, source_dsn, pg, tmp_path,
                                                                   action):
    """pg_terminate_backend / pg_cancel_backend of every backupd session while COPY streams: exit 1,
    one `backupd: error:` line saying what the server did, no backup listed, no folder left,
    staging empty, status failed; the next run succeeds."""
    config = make_config()
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    before = listed_ids(config)["local"]
    database = psycopg.conninfo.conninfo_to_dict(source_dsn)["dbname"]
    process = spawn_cli("--config", str(config), "backup", log_path=tmp_path / "run.log")
    hit = _strike_when_copying(pg.dsn(), str(database), process, action)
    code = process.wait(timeout=120)
    log = (tmp_path / "run.log").read_text()
    assert hit >= 1, log
    assert code == 1, log
    errors = error_lines(log)
    assert len(errors) == 1, log
    # the export reports the server's words; pg_dump, if it fails first, that the snapshot it shares is gone
    expected = ("terminat", "server closed", "connection", "cancel", "snapshot")
    assert any(word in errors[0].lower() for word in expected), errors[0]
    assert "Traceback" not in log
    _nothing_published(config, tmp_path, before)
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    assert len(listed_ids(config)["local"]) == 2


def test_role_statement_timeout_is_lifted_for_the_backup_sessions(make_config, source_dsn, tmp_path):
    """A DSN (or role) with statement_timeout = 1 ms: backupd lifts it inside its own snapshot
    transaction (a backup may take hours), so the backup completes instead of dying half-way;
    the query-cancelled failure path itself is the `cancel` case above."""
    config = make_config(source={"dsn": source_dsn + "?options=-c%20statement_timeout%3D1"})
    result = run_cli("--config", str(config), "-q", "backup")
    assert result.returncode == 0, result.stderr
    assert len(listed_ids(config)["local"]) == 1


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A PostgreSQL server of this test's own (restarting the session's would disturb others)."""
    server = LocalPostgres()
    server.start()
    try:
        dsn = server.create_database("jarvis")
        subprocess.run([sys.executable, str(GEN_DATA), "--dsn", dsn, "--tasks", "2000", "--schema", str(SCHEMA_SQL)],
                       check=True, capture_output=True)
        yield server
    finally:
        server.stop()


def test_server_restarted_mid_dump_fails_cleanly_and_next_run_succeeds(own_server, tmp_path):
    """`pg_ctl restart -m immediate` (a crash and recovery) while backupd's COPYs stream: exit 1, one
    clear line, nothing published; once the server is back the next run succeeds."""
    config = write_config(tmp_path / "backupd.toml", {
        "source": {"dsn": own_server.dsn("jarvis"), "connect_timeout": "5s"},
        "state": {"dir": str(tmp_path / "state")},
        "destinations": [{"name": "local", "type": "local", "path": str(tmp_path / "backups")}],
    })
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    before = listed_ids(config)["local"]
    process = spawn_cli("--config", str(config), "backup", log_path=tmp_path / "run.log")
    deadline = time.monotonic() + 60
    restarted = False
    with psycopg.connect(own_server.dsn(), autocommit=True) as admin:
        while process.poll() is None and time.monotonic() < deadline:
            if admin.execute(COPYING, ("jarvis",)).fetchall():
                break
            time.sleep(0.002)
    if process.poll() is None:
        # the new postmaster keeps pg_ctl's stdout: a file, never a pipe this test would wait on
        subprocess.run(own_server._as_user([str(own_server.bin_dir / "pg_ctl"), "-D", str(own_server.data_dir),
                                            "-l", str(own_server.base_dir / "server.log"), "-m", "immediate",
                                            "-w", "restart"]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=90)
        restarted = True
    code = process.wait(timeout=120)
    log = (tmp_path / "run.log").read_text()
    assert restarted, log
    assert code == 1, log
    errors = error_lines(log)
    assert len(errors) == 1 and "Traceback" not in log, log
    _nothing_published(config, tmp_path, before)
    again = run_cli("--config", str(config), "-q", "backup")
    assert again.returncode == 0, again.stderr
    assert len(listed_ids(config)["local"]) == 2
