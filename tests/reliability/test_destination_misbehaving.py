"""Destinations misbehaving in ways tests/contract/test_destination_faults.py does not already
cover (it has: a dead endpoint, 500 then success, 403 not retried, an upload cut half-way, one
dead destination of two): an S3 endpoint that accepts connections and never answers (bounded by
the timeout, the run goes on), and a git push rejected as non-fast-forward. Both end `partial`
(exit 3) with status.json saying which destination failed and why."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.reliability.conftest import check_local_backup, incomplete_folders, listed_ids

pytestmark = pytest.mark.slow


@pytest.fixture
def stalling_server() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte (a hung
    load balancer, a black-holed S3 endpoint)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        listener.close()


def test_stalled_s3_endpoint_is_bounded_and_the_next_destination_still_gets_the_backup(make_config, tmp_path,
                                                                                      stalling_server):
    """S3 first, local second; S3 accepts and never answers. With `timeout = "2s"` the S3 store
    gives up within a bounded time, the local destination still receives a complete backup, the run
    is `partial` (exit 3), status.json names s3 with a timeout error and local as ok."""
    config = make_config(destinations=[
        {"name": "s3", "type": "s3", "bucket": "stalled", "endpoint_url": stalling_server,
         "access_key_id": "AKIATEST", "secret_access_key": "secret-for-test", "timeout": "2s", "retries": 0},
        {"name": "local", "type": "local", "path": str(tmp_path / "backups")},
    ])
    began = time.monotonic()
    result = run_cli("--config", str(config), "backup", timeout=240)
    elapsed = time.monotonic() - began
    print(f"\nstalled endpoint: exit {result.returncode} after {elapsed:.1f}s")
    assert result.returncode == 3, result.stderr
    assert elapsed < 120, elapsed
    assert "Traceback" not in result.stderr
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["last_run"]["outcome"] == "partial"
    outcome = status["last_run"]["destinations"]
    assert outcome["local"]["ok"] is True and outcome["s3"]["ok"] is False
    # botocore reports the stall as a read timeout or, when a retry's connection is dropped at the
    # deadline, as a closed connection: either way the line names the upload and the endpoint
    error = outcome["s3"]["error"].lower()
    assert "s3 upload" in error and any(w in error for w in ("time", "read", "closed")), outcome["s3"]
    (backup_id,) = listed_ids(config, "local")["local"]
    check_local_backup(tmp_path / "backups" / backup_id)


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_git_push_rejected_non_fast_forward_is_partial_and_keeps_nothing_half_done(make_config, tmp_path):
    """A foreign commit lands on the bare remote's branch between two backups: the next push is
    rejected (non-fast-forward), so the git destination fails with a hint, its local commit is taken
    back (not listed), the local destination succeeds, exit 3; the foreign commit survives."""
    remote = tmp_path / "remote.git"
    _git("init", "-q", "--bare", "-b", "main", str(remote))
    config = make_config(destinations=[
        {"name": "git", "type": "git", "path": str(tmp_path / "repo"), "remote": str(remote), "branch": "main"},
        {"name": "local", "type": "local", "path": str(tmp_path / "backups")},
    ])
    first = run_cli("--config", str(config), "-q", "backup")
    assert first.returncode == 0, first.stderr
    git_before = listed_ids(config)["git"]
    other = tmp_path / "other"
    _git("clone", "-q", "-b", "main", str(remote), str(other))
    (other / "NOTE.md").write_text("someone else's commit\n")
    _git("add", "NOTE.md", cwd=other)
    _git("-c", "user.name=Other", "-c", "user.email=o@example.org", "commit", "-q", "-m", "foreign", cwd=other)
    _git("push", "-q", "origin", "main", cwd=other)
    foreign = _git("rev-parse", "HEAD", cwd=other).strip()

    second = run_cli("--config", str(config), "backup")
    assert second.returncode == 3, second.stderr
    assert "Traceback" not in second.stderr
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["last_run"]["outcome"] == "partial"
    git_result = status["last_run"]["destinations"]["git"]
    assert git_result["ok"] is False and "push" in git_result["error"], git_result
    assert status["last_run"]["destinations"]["local"]["ok"] is True
    assert listed_ids(config)["git"] == git_before  # the rejected commit is not a backup there
    assert _git("rev-parse", "main", cwd=remote).strip() == foreign
    assert len(listed_ids(config)["local"]) == 2 and incomplete_folders(tmp_path / "backups") == []
