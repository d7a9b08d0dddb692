"""status.json carries `health` and the time it was computed (CONTRACT section 8), from the same
function `backupd status` uses, so a dashboard can read one file."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import run_cli, wait_for


def _status_file(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "state" / "status.json").read_text())


def _cli_status(config: Path) -> dict:
    return json.loads(run_cli("--config", str(config), "status", "--json").stdout)


def test_status_json_holds_health_computed_when_written(make_config, tmp_path):
    """After a good run status.json says `healthy` with `health_computed_at` and `age_hours`, as
    `backupd status` does; once stale_after has passed, `backupd status` says `stale` while the
    file keeps what was true when it was written; a failed run writes `failing`, as the command."""
    config = make_config(state={"stale_after": "3s"})
    before = datetime.now(UTC).replace(microsecond=0)
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    written = _status_file(tmp_path)
    assert written["health"] == "healthy" and written["age_hours"] is not None
    computed = datetime.fromisoformat(written["health_computed_at"].replace("Z", "+00:00"))
    assert before <= computed <= datetime.now(UTC)
    assert computed >= datetime.fromisoformat(written["last_run"]["finished"].replace("Z", "+00:00"))
    assert _cli_status(config)["health"] in ("healthy", "stale")

    stale = wait_for(lambda: (s := _cli_status(config))["health"] == "stale" and s, 30, "health to turn stale")
    assert stale["health_computed_at"] >= written["health_computed_at"]
    assert _status_file(tmp_path)["health"] == "healthy"  # the file says what held when it was written

    broken = make_config(state={"stale_after": "3s"}, source={"dsn": "postgresql://nobody@127.0.0.1:1/none"})
    assert run_cli("--config", str(broken), "-q", "backup").returncode == 1
    failed = _status_file(tmp_path)
    assert failed["health"] == "failing" == _cli_status(broken)["health"]
    assert failed["health_computed_at"] >= written["health_computed_at"]
