"""Crash at any point: `backupd backup` and `backupd run` killed with SIGKILL (no handler runs, as
in a power cut of the process or the OOM killer) at moments spread over a whole run; afterwards
nothing incomplete is listed or restorable, every earlier backup still verifies, the next run
cleans staging and succeeds."""

from __future__ import annotations

import glob
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.reliability.conftest import (
    check_local_backup,
    error_lines,
    incomplete_folders,
    listed_ids,
    spawn_cli,
    status_is_valid_json,
    wait_for,
)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class KillPoint:
    """When to kill: `delay_ms` after the process started, after a log line containing `event`
    appeared, or after a file matching `path` (a glob under tmp_path) appeared."""

    label: str
    event: str = ""
    path: str = ""
    delay_ms: int = 0


# Twenty moments over one run, in the order a run reaches them (two local destinations, a and b).
KILL_POINTS = [
    KillPoint("interpreter starting", delay_ms=150),
    KillPoint("config loaded, lock being taken", delay_ms=600),
    KillPoint("run started, staging made", event="event=backup_started"),
    KillPoint("snapshot taken", event="event=snapshot_taken"),
    KillPoint("catalog read, producers starting", event="event=snapshot_taken", delay_ms=30),
    KillPoint("pg_dump started", event="event=dump_started"),
    KillPoint("pg_dump streaming", event="event=dump_started", delay_ms=40),
    KillPoint("JSON export: tasks done", event="table_exported table=tasks"),
    KillPoint("JSON export: comments done", event="table_exported table=comments"),
    KillPoint("JSON export: logs done", event="table_exported table=logs"),
    KillPoint("JSON export finished, compression draining", event="table_exported table=attachments"),
    KillPoint("pg_dump data still compressing", event="table_exported table=attachments", delay_ms=100),
    KillPoint("both producers done, manifest built", event="event=dump_finished"),
    KillPoint("destination a: first artifact uploading", path="a/*/.export.json.zst.partial"),
    KillPoint("destination a: between artifacts", path="a/*/export.json.zst"),
    KillPoint("destination a: artifacts done, manifest next", path="a/*/data.sql.zst"),
    KillPoint("destination a stored, b starting", event="event=destination_stored"),
    KillPoint("destination b: first artifact uploading", path="b/*/.export.json.zst.partial"),
    KillPoint("destination b: artifacts done, manifest next", path="b/*/data.sql.zst"),
    KillPoint("both stored, status being written", event="event=backup_finished"),
]


def _kill_at(point: KillPoint, config: Path, tmp_path: Path, trial: int) -> dict[str, Any]:
    """Start `backupd backup`, SIGKILL it at `point`; returns what the kill hit."""
    log_path = tmp_path / f"kill{trial:02d}.log"
    started = time.monotonic()
    process = spawn_cli("--config", str(config), "backup", log_path=log_path)
    deadline = started + 60
    triggered_at: float | None = None
    while process.poll() is None and time.monotonic() < deadline:
        now = time.monotonic()
        if triggered_at is None:
            if point.event:
                hit = point.event in log_path.read_text(errors="replace")
            elif point.path:
                # only the folder this run is writing: complete ones (with a manifest) do not count
                hit = any(not (Path(found).parent / "manifest.json").exists()
                          for found in glob.glob(str(tmp_path / point.path)))
            else:
                hit = True
            if hit:
                triggered_at = now
        if triggered_at is not None and now >= triggered_at + point.delay_ms / 1000:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.0005)
    code = process.wait(timeout=30)
    events = [line.split("event=", 1)[1].split(" ", 1)[0] for line in log_path.read_text().splitlines()
              if "event=" in line]
    return {"point": point.label, "killed": code == -signal.SIGKILL, "exit": code,
            "last_event": events[-1] if events else "(none)", "ms": round((time.monotonic() - started) * 1000)}


def test_sigkill_at_twenty_moments_loses_nothing(make_config, tmp_path):
    """20 runs killed at 20 moments (startup, snapshot, pg_dump, JSON export, compression, each
    destination's upload, between artifacts and manifest, status write). After each: status.json
    is valid, every listed backup is complete and verifies, no earlier backup is lost, an
    incomplete folder is neither listed nor restorable, and the next run sweeps staging and the
    incomplete folders and succeeds."""
    config = make_config(destinations=[
        {"name": "a", "type": "local", "path": str(tmp_path / "a")},
        {"name": "b", "type": "local", "path": str(tmp_path / "b")},
    ])
    state = tmp_path / "state"
    first = run_cli("--config", str(config), "-q", "backup")
    assert first.returncode == 0, first.stderr
    known = listed_ids(config)
    assert len(known["a"]) == 1 and known["a"] == known["b"]
    trials: list[dict[str, Any]] = []
    refused_restore = False
    for number, point in enumerate(KILL_POINTS):
        trial = _kill_at(point, config, tmp_path, number)
        assert status_is_valid_json(state), trial
        now_listed = listed_ids(config)
        for name in ("a", "b"):
            # nothing that was complete is lost; whatever is listed is whole
            assert set(known[name]) <= set(now_listed[name]), (trial, name)
            for backup_id in set(now_listed[name]) - set(known[name]):
                check_local_backup(tmp_path / name / backup_id)
            leftovers = incomplete_folders(tmp_path / name)
            assert not set(leftovers) & set(now_listed[name]), (trial, name, leftovers)
            trial[f"incomplete_{name}"] = len(leftovers)
            if leftovers and not refused_restore:
                # an incomplete folder is not a backup: restore refuses it before any connection
                restore = run_cli("--config", str(config), "restore", leftovers[0], "--from", name,
                                  "--target", "postgresql://nobody@127.0.0.1:1/none", "--dry-run")
                assert restore.returncode == 1, restore.stdout
                assert len(error_lines(restore.stderr)) == 1 and "Traceback" not in restore.stderr
                refused_restore = True
        staged = state / "staging"
        trial["staging_left"] = len(list(staged.iterdir())) if staged.exists() else 0
        # "systemd" runs the next backup: it must clean up after the killed one and succeed
        recovery = run_cli("--config", str(config), "-q", "backup")
        assert recovery.returncode == 0, (trial, recovery.stderr)
        assert not staged.exists() or not list(staged.iterdir()), trial
        assert incomplete_folders(tmp_path / "a") == incomplete_folders(tmp_path / "b") == [], trial
        known = listed_ids(config)
        trials.append(trial)

    # every backup ever completed, at both destinations, still verifies end to end
    for name in ("a", "b"):
        for backup_id in known[name]:
            check_local_backup(tmp_path / name / backup_id)
    oldest = known["a"][0]
    for target in (oldest, "latest"):
        verify = run_cli("--config", str(config), "-q", "verify", target, "--from", "b")
        assert verify.returncode == 0, verify.stdout + verify.stderr
    listing = json.loads(run_cli("--config", str(config), "-q", "list", "--json").stdout)
    assert [row["id"] for row in listing] == known["a"]
    killed = [t for t in trials if t["killed"]]
    print("\ncrash trials:", json.dumps(trials, indent=1))
    print(f"killed mid-run: {len(killed)}/{len(trials)}; backups kept: {len(known['a'])}")
    assert refused_restore, "no kill left an incomplete folder behind: the upload points were missed"
    assert len(killed) >= 18, trials  # a point or two may land after a very fast run ended


def test_daemon_sigkilled_mid_run_and_restarted_recovers(make_config, tmp_path):
    """`backupd run` SIGKILLed in the middle of a scheduled run, then started again (as systemd's
    Restart=on-failure does): the lock is free, staging and the half-written folder are swept, the
    next run succeeds and only complete backups are listed."""
    config = make_config(schedule={"every": "1h", "catch_up": True})
    state = tmp_path / "state"
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    before = listed_ids(config)["local"]
    # as if the daemon had been down for a day: its catch-up run starts at once
    status = json.loads((state / "status.json").read_text())
    status["last_success"]["id"] = "20000101T000000Z"
    (state / "status.json").write_text(json.dumps(status))
    daemon = spawn_cli("--config", str(config), "run", log_path=tmp_path / "daemon1.log")
    try:
        wait_for(lambda: glob.glob(str(tmp_path / "backups" / "*" / "export.json.zst"))
                 or glob.glob(str(state / "staging" / "*" / "*.zst")), 60, "the daemon's run to be writing")
        daemon.send_signal(signal.SIGKILL)
        assert daemon.wait(timeout=10) == -signal.SIGKILL
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert status_is_valid_json(state)
    assert listed_ids(config)["local"] == before
    restarted = spawn_cli("--config", str(config), "run", log_path=tmp_path / "daemon2.log")
    try:
        wait_for(lambda: len(listed_ids(config)["local"]) > len(before), 90,
                 "the restarted daemon's catch-up run to publish")
        wait_for(lambda: "event=backup_finished" in (tmp_path / "daemon2.log").read_text(), 30, "run end")
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=30) == 0
    after = listed_ids(config)["local"]
    assert after[: len(before)] == before and len(after) == len(before) + 1
    for backup_id in after:
        check_local_backup(tmp_path / "backups" / backup_id)
    assert incomplete_folders(tmp_path / "backups") == []
    staged = state / "staging"
    assert not staged.exists() or not list(staged.iterdir())
    assert json.loads((state / "status.json").read_text())["last_run"]["outcome"] == "success"
