"""Destinations failing the way real ones do, seen from the CLI: a dead endpoint, a 500 that
passes on retry, a 403 that is not retried, an upload cut half-way, one dead destination among
two (partial), and `list`/`doctor` against every kind of destination."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli, write_config
from tests.contract.conftest import ACCESS_KEY, SECRET_KEY, SUPABASE_KEY, make_bucket
from tests.contract.servers import FaultProxy, s3_error_body

FAST_RETRY = {"retries": 1, "retry_backoff": "100ms"}


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


def _s3(endpoint: str, bucket: str, name: str = "s3", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "s3", "bucket": bucket, "endpoint_url": endpoint, "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY, "prefix": "db", **FAST_RETRY, **extra}


def _config(tmp_path: Path, source_dsn: str, destinations: list[dict[str, Any]], **sections: Any) -> Path:
    return write_config(tmp_path / "backupd.toml", {
        "source": {"dsn": source_dsn}, "state": {"dir": str(tmp_path / "state")}, **sections,
        "destinations": destinations,
    })


def _is_object_put(method: str, path: str) -> bool:
    return method == "PUT" and path.count("/") >= 3  # /bucket/db/<id>/<artifact>, not bucket creation


def test_dead_endpoint_fails_the_run_with_one_clear_line(tmp_path, source_dsn):
    """An S3 endpoint with nothing listening: the run fails (exit 1) quickly, saying which
    destination and why; status.json records the error."""
    config = _config(tmp_path, source_dsn, [_s3(_dead_url(), "deadbucket")])
    result = run_cli("--config", str(config), "backup", timeout=120)
    assert result.returncode == 1, result.stderr
    assert "s3" in result.stderr and "endpoint" in result.stderr.lower()
    assert "Traceback" not in result.stderr
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["last_run"]["outcome"] == "failed"
    assert status["destinations"]["s3"]["last_error"]


def test_500_then_success_is_retried_and_the_run_succeeds(tmp_path, source_dsn, moto_url):
    """The store answers 500 to the first artifact upload, then works: the backup completes."""
    bucket = make_bucket(moto_url)
    failed: list[str] = []

    def rule(method: str, path: str) -> tuple[int, bytes] | None:
        if _is_object_put(method, path) and not failed:
            failed.append(path)
            return 500, s3_error_body("InternalError", "We encountered an internal error. Please try again.")
        return None

    with FaultProxy(moto_url, rule) as proxy:
        config = _config(tmp_path, source_dsn, [_s3(proxy.url, bucket)])
        result = run_cli("--config", str(config), "backup", timeout=180)
        assert result.returncode == 0, result.stderr
        assert any(status == 500 for _, _, status in proxy.seen)
        listed = run_cli("--config", str(config), "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 1


def test_403_is_not_retried_and_fails_with_a_hint(tmp_path, source_dsn, moto_url):
    """AccessDenied on upload: one attempt only, exit 1, the error and a hint on one line."""
    bucket = make_bucket(moto_url)

    def rule(method: str, path: str) -> tuple[int, bytes] | None:
        if _is_object_put(method, path):
            return 403, s3_error_body("AccessDenied", "Access Denied")
        return None

    with FaultProxy(moto_url, rule) as proxy:
        config = _config(tmp_path, source_dsn, [_s3(proxy.url, bucket, retries=3)])
        result = run_cli("--config", str(config), "backup", timeout=180)
        denied = [p for m, p, s in proxy.seen if s == 403]
    assert result.returncode == 1, result.stderr
    assert "AccessDenied" in result.stderr and "hint:" in result.stderr
    assert len(denied) == 1, denied
    assert SECRET_KEY not in result.stderr + result.stdout


def test_one_dead_destination_of_two_is_partial(tmp_path, source_dsn):
    """local works, S3 is dead: exit 3 `partial`; status.json shows each destination's last
    success and last error; the local backup is complete and listed."""
    config = _config(tmp_path, source_dsn, [
        {"name": "local", "type": "local", "path": str(tmp_path / "backups")},
        _s3(_dead_url(), "deadbucket", name="offsite"),
    ])
    result = run_cli("--config", str(config), "backup", timeout=180)
    assert result.returncode == 3, result.stderr
    assert "offsite" in result.stderr
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["last_run"]["outcome"] == "partial"
    assert status["destinations"]["local"]["last_success"] and not status["destinations"]["local"]["last_error"]
    assert status["destinations"]["offsite"]["last_error"] and not status["destinations"]["offsite"].get("last_success")
    listed = run_cli("--config", str(config), "list", "--from", "local", "--json")
    assert [b["id"] for b in json.loads(listed.stdout)] == [status["last_run"]["id"]]


def test_supabase_upload_cut_half_way_leaves_nothing_listed(tmp_path, source_dsn, supabase_server):
    """The Storage API drops the connection in the middle of an artifact: that destination fails
    (the run is partial), and `list --from` it shows no backup, nor is any object left there."""
    supabase_server.cut_upload_after = 50_000
    prefix = "cut"
    config = _config(tmp_path, source_dsn, [
        {"name": "local", "type": "local", "path": str(tmp_path / "backups")},
        {"name": "supa", "type": "supabase", "url": supabase_server.url, "service_role_key": SUPABASE_KEY,
         "bucket": "backups", "prefix": prefix, "retries": 0},
    ])
    result = run_cli("--config", str(config), "backup", timeout=180)
    supabase_server.cut_upload_after = None
    assert result.returncode == 3, result.stderr
    listed = run_cli("--config", str(config), "list", "--from", "supa", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    folder = supabase_server.root / "backups" / prefix
    assert not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))
    assert SUPABASE_KEY not in result.stderr


@pytest.mark.slow
def test_list_and_doctor_work_for_every_kind(tmp_path, source_dsn, moto_url, supabase_server, rclone_env):
    """One backup fanned out to local, s3, supabase, rclone and git: `list --from` each shows it
    with its kind, size and rows; `doctor` probes each and passes; with a dead destination doctor
    says FAIL on that line and exits 1."""
    destinations = [
        {"name": "local", "type": "local", "path": str(tmp_path / "backups")},
        _s3(moto_url, make_bucket(moto_url)),
        {"name": "supa", "type": "supabase", "url": supabase_server.url, "service_role_key": SUPABASE_KEY,
         "bucket": "backups", "prefix": "every"},
        {"name": "rc", "type": "rclone", "remote": f"loc:{tmp_path / 'rclone'}"},
        {"name": "git", "type": "git", "path": str(tmp_path / "repo"), "remote": str(tmp_path / "remote.git")},
    ]
    config = _config(tmp_path, source_dsn, destinations)
    result = run_cli("--config", str(config), "backup", timeout=300)
    assert result.returncode == 0, result.stderr
    backup_id = json.loads((tmp_path / "state" / "status.json").read_text())["last_run"]["id"]
    for destination in destinations:
        listed = run_cli("--config", str(config), "list", "--from", destination["name"], "--json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [r["id"] for r in rows] == [backup_id], destination["name"]
        assert rows[0]["kind"] == "full" and rows[0]["rows"] > 2000 and rows[0]["bytes"] > 0
    text = run_cli("--config", str(config), "list", "--from", "git")
    assert backup_id in text.stdout and "full" in text.stdout
    # the git remote got the commit, and its files are plain sorted JSON
    log = run_cli("--config", str(config), "doctor")
    assert log.returncode == 0, log.stdout + log.stderr
    lines = log.stdout.splitlines()
    assert any(line.startswith("ok") and "database" in line and "PostgreSQL" in line for line in lines)
    assert any(line.startswith("ok") and "pg_dump" in line for line in lines)
    for destination in destinations:
        assert any(line.startswith("ok") and f"destination {destination['name']}" in line for line in lines), lines

    broken = _config(tmp_path, source_dsn, [destinations[0], _s3(_dead_url(), "deadbucket", name="dead")])
    doctor = run_cli("--config", str(broken), "doctor", timeout=120)
    assert doctor.returncode == 1
    assert any(line.startswith("FAIL") and "destination dead" in line for line in doctor.stdout.splitlines())
    assert any(line.startswith("ok") and "destination local" in line for line in doctor.stdout.splitlines())


def test_git_refuses_encryption_and_incrementals_at_config_load(tmp_path, source_dsn):
    """git keeps plain full backups: combined with encryption or incrementals, the config is
    refused before anything runs (exit 2, one line naming the destination)."""
    git = {"name": "git", "type": "git", "path": str(tmp_path / "repo")}
    config = _config(tmp_path, source_dsn, [git], pipeline={"encrypt_to": ["ABCDEF0123456789"]})
    result = run_cli("--config", str(config), "check-config")
    assert result.returncode == 2
    assert "destinations[0].type" in result.stderr and "encryption" in result.stderr
    config = _config(tmp_path, source_dsn, [git], export={"incremental": True})
    result = run_cli("--config", str(config), "check-config")
    assert result.returncode == 2
    assert "full backups only" in result.stderr


def test_git_backup_verifies_and_restores_by_id(tmp_path, source_dsn, pg):
    """From git: `verify ID --restore-test` checks the re-assembled export and restores it into a
    scratch database matching the manifest; the commit holds row-sorted plain table files with
    PostgreSQL's own numeric text."""
    import subprocess

    pg.execute(source_dsn, "UPDATE projects SET budget = 12.50 WHERE id = (SELECT min(id::text)::uuid FROM projects)")
    repo = tmp_path / "repo"
    config = _config(tmp_path, source_dsn, [{"name": "git", "type": "git", "path": str(repo),
                                              "remote": str(tmp_path / "remote.git")}])
    assert run_cli("--config", str(config), "backup").returncode == 0
    backup_id = json.loads((tmp_path / "state" / "status.json").read_text())["last_run"]["id"]
    verify = run_cli("--config", str(config), "verify", backup_id, "--from", "git", "--restore-test", timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    projects = subprocess.run(["git", "-C", str(tmp_path / "remote.git"), "show", "main:tables/projects.json"],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    assert projects[0] == "[" and projects[-1] == "]"
    ids = [json.loads(line.rstrip(","))["id"] for line in projects[1:-1]]
    assert ids == sorted(ids) and len(ids) == 20
    assert any('"budget":12.50' in line for line in projects)
    subject = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%s"], capture_output=True, text=True,
                             check=True).stdout
    assert backup_id in subject
