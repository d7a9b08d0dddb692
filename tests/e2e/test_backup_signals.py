"""SIGTERM to a manual `backupd backup` (contract section 8): the run is abandoned cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_daemon import _grow_database, children_of, wait_for


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_backup_abandons_without_publishing(make_config, source_dsn, pg, tmp_path, signum):
    """While pg_dump and the export run: the signal stops pg_dump, removes staging, publishes no
    manifest, records no success, and the command exits 1 with one line, within seconds."""
    _grow_database(pg, source_dsn, 400_000)
    config = make_config()
    proc = subprocess.Popen([sys.executable, "-m", "backupd", "--config", str(config), "backup"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"})
    staging = tmp_path / "state" / "staging"

    def dumping() -> list[tuple[int, str]]:
        busy = staging.exists() and any(p.stat().st_size > 0 for p in staging.rglob("*") if p.is_file())
        children = [c for c in children_of(proc.pid) if c[1] == "pg_dump"]
        return children if busy and children else []

    children = wait_for(dumping, 60, "pg_dump running and artifacts being written", interval=0.02)
    began = time.monotonic()
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=20)
    assert time.monotonic() - began < 10
    assert proc.returncode == 1, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("backupd: error")]
    assert len(errors) == 1 and "abandoned" in errors[0] and "Traceback" not in err
    for pid, _name in children:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists()
                 or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3], 5, f"pg_dump {pid} gone")
    assert not staging.exists() or list(staging.iterdir()) == []
    backups = tmp_path / "backups"
    assert not backups.exists() or not any(backups.rglob("manifest.json"))
    status_path = tmp_path / "state" / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    assert not status.get("last_success")
