"""A destination's OS error (ENOTDIR, EROFS, ... ) is an expected failure: one line naming the
destination, the path and the reason; the run is `partial` (exit 3) or `failed` (exit 1); no
traceback, no exception class name in the logs, status.json, history.jsonl or the alert; no
`cleanup_failed` noise. The alert goes to a local HTTP stand-in for a webhook receiver."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import run_cli
from tests.reliability.conftest import error_lines

CLASS_NAMES = ("Traceback", "NotADirectoryError", "OSError", "PermissionError", "Errno")


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[bytes]]]:
    """A local stand-in for a webhook endpoint: records every POSTed body."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    finally:
        server.shutdown()
        server.server_close()


def _assert_clean(result: subprocess.CompletedProcess[str], state: Path, alerts: list[bytes]) -> None:
    everything = [result.stderr, (state / "status.json").read_text(), (state / "history.jsonl").read_text(),
                  *(body.decode() for body in alerts)]
    for text in everything:
        for name in CLASS_NAMES:
            assert name not in text, f"{name} in: {text[-2000:]}"
    assert "cleanup_failed" not in result.stderr and "destination_crashed" not in result.stderr, result.stderr


def test_regular_file_as_parent_fails_each_destination_in_one_line(make_config, tmp_path):
    """local, git and rclone destinations under a regular file fail with `cannot write <path>: Not a
    directory` (or the tool's own reason, with the path); the good local destination stores the
    backup, so the run is partial (exit 3); the alert says the same lines."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    with webhook_receiver() as (url, alerts):
        config = make_config(
            destinations=[
                {"name": "good", "type": "local", "path": str(tmp_path / "backups")},
                {"name": "blocked", "type": "local", "path": str(blocker / "backups")},
                {"name": "gitblocked", "type": "git", "path": str(blocker / "repo")},
                {"name": "rcloneblocked", "type": "rclone", "remote": f":local:{blocker / 'remote'}"},
            ],
            notifiers=[{"type": "webhook", "url": url, "on": ["failure", "partial"]}])
        result = run_cli("--config", str(config), "backup")
    assert result.returncode == 3, result.stderr[-3000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 3, result.stderr
    by_name = {name: next(e for e in errors if f"destination {name} failed:" in e)
               for name in ("blocked", "gitblocked", "rcloneblocked")}
    assert f"cannot write {blocker / 'backups'}/" in by_name["blocked"] and "Not a directory" in by_name["blocked"]
    assert str(blocker / "repo") in by_name["gitblocked"] and "Not a directory" in by_name["gitblocked"]
    assert str(blocker) in by_name["rcloneblocked"] and "not a directory" in by_name["rcloneblocked"]
    assert "destination_retrying" not in result.stderr  # an OS error is not worth retrying
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["last_run"]["outcome"] == "partial"
    assert "Not a directory" in status["destinations"]["blocked"]["last_error"]
    assert alerts and b"Not a directory" in alerts[-1]
    _assert_clean(result, tmp_path / "state", alerts)

    only = make_config(destinations=[{"name": "blocked", "type": "local", "path": str(blocker / "backups")}])
    failed = run_cli("--config", str(only), "backup")
    assert failed.returncode == 1
    errors = error_lines(failed.stderr)
    assert len(errors) == 1 and "blocked: cannot write" in errors[0] and "Not a directory" in errors[0], failed.stderr
    _assert_clean(failed, tmp_path / "state", [])


def test_read_only_destination_fails_in_one_line(make_config, tmp_path, tmpfs):
    """A local and a git destination on a read-only filesystem (a tmpfs remounted ro): exit 1,
    one line each with the path and `Read-only file system`, nothing else."""
    volume = tmpfs("ro", "4m")
    subprocess.run(["mount", "-o", "remount,ro", str(volume)], check=True, capture_output=True)
    config = make_config(destinations=[{"name": "readonly", "type": "local", "path": str(volume / "backups")},
                                       {"name": "gitreadonly", "type": "git", "path": str(volume / "repo")}])
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 1, result.stderr[-3000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr  # a failed run: one line naming each destination's error
    for name, path in (("readonly", volume / "backups"), ("gitreadonly", volume / "repo")):
        assert f"{name}: cannot " in errors[0] and str(path) in errors[0], errors[0]
    assert errors[0].count("Read-only file system") == 2, errors[0]
    _assert_clean(result, tmp_path / "state", [])
