"""Disk full: the local destination, or the state dir (staging, status.json, history.jsonl), on a
small tmpfs mounted by the test and filled with ballast. The run fails with one clear line naming
the path; no partial artifact stays; earlier backups stay intact; the state files stay whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from backupd.errors import StorageFull
from backupd.status import StatusStore
from tests.conftest import run_cli
from tests.reliability.conftest import check_local_backup, error_lines, fill, incomplete_folders, listed_ids

pytestmark = pytest.mark.slow


def _hidden_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob(".*") if p.is_file() and p.name != ".ballast")


def _history(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / "history.jsonl").read_text().splitlines()]


def test_destination_full_fails_naming_the_path_and_keeps_earlier_backups(make_config, tmp_path, tmpfs):
    """The destination's filesystem has 1 MB left for a 5 MB backup: exit 1 with one line
    `no space left on device writing <path>`, no folder or temp file left there, the earlier
    backup verifies, status.json records the failure; with space freed, the next run succeeds."""
    volume = tmpfs("dest", "12m")
    config = make_config(destinations=[{"name": "local", "type": "local", "path": str(volume / "backups")}])
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    earlier = listed_ids(config)["local"]
    fill(volume, leave=1 << 20)
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 1, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "no space left on device writing" in errors[0], result.stderr
    assert str(volume / "backups") in errors[0]
    assert "Traceback" not in result.stderr
    assert listed_ids(config)["local"] == earlier
    assert incomplete_folders(volume / "backups") == [] and _hidden_files(volume) == []
    check_local_backup(volume / "backups" / earlier[0])
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["last_run"]["outcome"] == "failed"
    assert "no space left" in status["destinations"]["local"]["last_error"]
    (volume / ".ballast").unlink()
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    assert len(listed_ids(config)["local"]) == 2


def test_state_dir_full_fails_in_staging_and_state_files_stay_valid(make_config, tmp_path, tmpfs):
    """The state dir (where staging lives) has 1 MB left: the run fails naming the staged file,
    staging is emptied, nothing reaches the destination, status.json and every history line stay
    valid JSON, and the earlier backup is untouched."""
    state = tmpfs("state", "12m")
    config = make_config(state={"dir": str(state)})
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    earlier = listed_ids(config)["local"]
    fill(state, leave=1 << 20)
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 1, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "no space left on device writing" in errors[0], result.stderr
    assert str(state / "staging") in errors[0] and "Traceback" not in result.stderr
    assert not list((state / "staging").iterdir())
    assert listed_ids(config)["local"] == earlier
    assert incomplete_folders(tmp_path / "backups") == []
    check_local_backup(tmp_path / "backups" / earlier[0])
    assert json.loads((state / "status.json").read_text())["last_run"]["outcome"] == "failed"
    assert [r["outcome"] for r in _history(state)] == ["success", "failed"]


def test_status_and_history_on_a_full_disk_are_never_half_written(tmpfs):
    """status.json and history.jsonl on a disk with a few KB left, given a record bigger than that:
    StorageFull naming the file, and the old status.json and every history line stay whole (a
    single write() on a nearly full disk stores what fits and reports success)."""
    state = tmpfs("tiny", "1m")
    store = StatusStore(state)
    small = {"id": "20260101T000000Z", "outcome": "success", "finished": "2026-01-01T00:00:01Z",
             "destinations": {}}
    store.record_run(small)
    before = (state / "status.json").read_bytes()
    fill(state, leave=8 << 10)
    huge = {**small, "id": "20260101T000001Z", "error": "x" * 50_000, "outcome": "failed"}
    with pytest.raises(StorageFull) as raised:
        store.record_run(huge)
    assert "history.jsonl" in str(raised.value) or "status.json" in str(raised.value)
    assert (state / "status.json").read_bytes() == before
    assert [r["id"] for r in _history(state)] == [small["id"]]
    assert sorted(os.listdir(state)) == [".ballast", "history.jsonl", "status.json", "status.lock"]
