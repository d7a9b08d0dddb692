"""Concurrency: one run at a time, whoever starts it. A manual `backupd backup` while the daemon's
run is going gets exit 4 at once; the daemon, finding a manual run going, waits for it instead of
failing; no two runs ever overlap. (Two daemons on one state dir: the second refuses to start,
tests/e2e/test_daemon.py::test_second_daemon_on_same_state_dir_refuses_and_manual_backup_still_works.)"""

from __future__ import annotations

import itertools
import json
import signal
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from tests.conftest import run_cli
from tests.e2e.test_daemon import NotifySocket
from tests.reliability.conftest import error_lines, spawn_cli, wait_for

pytestmark = pytest.mark.slow


def _history(state: Path) -> list[dict]:
    path = state / "history.jsonl"
    if not path.exists():
        return []
    return [r for r in (json.loads(line) for line in path.read_text().splitlines()) if r.get("event") == "backup"]


def test_manual_backup_during_daemon_run_exits_4_and_runs_never_overlap(make_config, source_dsn, tmp_path):
    """A migration holds `tasks` locked, so the daemon's run is stuck mid-export: a manual backup
    exits 4 with one line naming the lock and its holder. Then the reverse: a manual run is stuck,
    the daemon's next slot comes and waits for it. Once the lock is released every run completes,
    and history shows no two runs overlapping."""
    config = make_config(schedule={"every": "8s", "catch_up": True})
    state = tmp_path / "state"
    blocker = psycopg.connect(source_dsn)
    blocker.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")  # held until commit
    notify = NotifySocket()  # the daemon says what it is doing through sd_notify STATUS=
    daemon = spawn_cli("--config", str(config), "run", log_path=tmp_path / "daemon.log",
                       env={"NOTIFY_SOCKET": notify.address})
    manual = None
    try:
        wait_for(lambda: "event=backup_started" in (tmp_path / "daemon.log").read_text(), 60, "the daemon's run")
        refused = run_cli("--config", str(config), "backup", timeout=60)
        assert refused.returncode == 4, refused.stderr
        errors = error_lines(refused.stderr)
        assert len(errors) == 1 and "another backupd run holds" in errors[0] and f"pid {daemon.pid}" in errors[0]
        blocker.commit()
        wait_for(lambda: any(r["outcome"] == "success" for r in _history(state)), 60, "the daemon's run to finish")

        # the reverse: a manual run holds the lock; the daemon's next slot waits for it
        blocker.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        done = len(_history(state))
        notify.drain().clear()
        manual = spawn_cli("--config", str(config), "backup", log_path=tmp_path / "manual.log")
        wait_for(lambda: "event=backup_started" in (tmp_path / "manual.log").read_text(), 60, "the manual run")
        wait_for(lambda: any(f.startswith("STATUS=") and "waiting for the lock" in f for f in notify.fields()),
                 30, "the daemon's next slot to wait for the lock")
        blocker.commit()
        assert manual.wait(timeout=60) == 0
        wait_for(lambda: len(_history(state)) >= done + 2, 60, "the daemon's waiting run to finish too")
    finally:
        blocker.close()
        notify.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        if manual is not None and manual.poll() is None:
            manual.kill()
            manual.wait()
    runs = sorted(_history(state), key=lambda r: r["started"])
    assert all(r["outcome"] == "success" for r in runs), runs
    assert {r["trigger"] for r in runs} >= {"manual", "catch-up"}
    for earlier, later in itertools.pairwise(runs):
        assert datetime.fromisoformat(earlier["finished"]) <= datetime.fromisoformat(later["started"]), (earlier, later)
