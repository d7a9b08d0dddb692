"""A failed push or upload says why: the git destination over HTTPS-style token auth (git's own
smart-HTTP server, `git http-backend`, behind basic auth on loopback: a stand-in for GitHub's HTTPS
endpoint, where the token is the password) and rclone against a dead S3 endpoint or a remote
missing from its config. The error keeps the line that names the cause and a hint naming the
setting, not a generic closing line."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli, write_config
from tests.contract.servers import _read_chunked

GOOD_TOKEN = "ghp_goodTokenForTheTest0123456789"
BAD_TOKEN = "ghp_expiredTokenForTheTest98765"


class GitHttpServer:
    """`git http-backend` (CGI) for the bare repositories under `root`, behind HTTP basic auth
    that accepts `x-access-token:GOOD_TOKEN` only (401 otherwise, as GitHub answers)."""

    def __init__(self, root: Path) -> None:
        expected = "Basic " + base64.b64encode(f"x-access-token:{GOOD_TOKEN}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._serve()

            def do_POST(self) -> None:  # noqa: N802
                self._serve()

            def _serve(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = _read_chunked(self.rfile)
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1",
                       "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
                       "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                       "REMOTE_USER": "x-access-token", "REMOTE_ADDR": "127.0.0.1",
                       "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                       "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", "")}
                out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True,
                                     check=False).stdout
                separator = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
                head, _, payload = out.partition(separator)
                headers = [line.split(":", 1) for line in head.decode().splitlines() if ":" in line]
                status = next((int(v.split()[0]) for k, v in headers if k.lower() == "status"), 200)
                self.send_response(status)
                for key, value in headers:
                    if key.lower() != "status":
                        self.send_header(key, value.strip())
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, token: str, name: str) -> str:
        return f"http://x-access-token:{token}@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def git_http(tmp_path: Path) -> Iterator[GitHttpServer]:
    root = tmp_path / "served"
    root.mkdir()
    server = GitHttpServer(root)
    try:
        yield server
    finally:
        server.close()


def _secret_file(path: Path, value: str) -> str:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def test_https_token_refused_says_authentication_and_names_remote_file(tmp_path, source_dsn, git_http):
    """Two git remotes over HTTP with a token in the URL (given as remote_file): with the good token
    the push lands on the server; with an expired one the destination fails with git's
    `Authentication failed` line (not `Could not read ...`) and a hint naming remote_file; doctor
    says `authentication refused` for it. Neither token is printed or written to status.json."""
    for name in ("good.git", "bad.git"):
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(tmp_path / "served" / name)], check=True)
    destinations = [
        {"name": "good", "type": "git", "path": str(tmp_path / "good-work"),
         "remote_file": _secret_file(tmp_path / "good.url", git_http.url(GOOD_TOKEN, "good.git"))},
        {"name": "bad", "type": "git", "path": str(tmp_path / "bad-work"),
         "remote_file": _secret_file(tmp_path / "bad.url", git_http.url(BAD_TOKEN, "bad.git"))},
    ]
    config = write_config(tmp_path / "backupd.toml", {
        "source": {"dsn": source_dsn}, "state": {"dir": str(tmp_path / "state")}, "destinations": destinations})
    result = run_cli("--config", str(config), "backup", timeout=300)
    assert result.returncode == 3, result.stderr
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    results = status["last_run"]["destinations"]
    assert results["good"]["ok"] is True, results
    subject = subprocess.run(["git", "--git-dir", str(tmp_path / "served" / "good.git"), "log", "-1", "--format=%s"],
                             capture_output=True, text=True, check=True).stdout
    assert subject.startswith(f"backupd backup {status['last_run']['id']}")
    error = results["bad"]["error"]
    assert "Authentication failed for" in error and "remote_file" in error, error
    assert "Could not read" not in error

    doctor = run_cli("--config", str(config), "doctor", timeout=120)
    assert doctor.returncode == 1
    lines = {line.split()[2]: line for line in doctor.stdout.splitlines() if " destination " in line}
    assert lines["good"].startswith("ok") and "remote reachable, main at " in lines["good"], lines
    assert lines["bad"].startswith("FAIL") and "bad: authentication refused: " in lines["bad"], lines
    written = result.stdout + result.stderr + doctor.stdout + doctor.stderr + "".join(
        p.read_text() for p in (tmp_path / "state").rglob("*.json*"))
    assert GOOD_TOKEN not in written and BAD_TOKEN not in written


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_rclone_error_keeps_the_line_that_says_why(tmp_path, source_dsn):
    """rclone against an S3 endpoint where nothing listens, and against a remote its config does
    not have: each doctor line carries rclone's reason (`connection refused`, `didn't find section
    in config file`), not the last ERROR line ("Post request rcat error: ... send request failed")."""
    config = write_config(tmp_path / "backupd.toml", {
        "source": {"dsn": source_dsn}, "state": {"dir": str(tmp_path / "state")},
        "destinations": [
            {"name": "dead", "type": "rclone", "remote": "dead:bucket/backups", "retries": 0},
            {"name": "nosection", "type": "rclone", "remote": "nosuch:backups", "retries": 0},
        ]})
    env = {"RCLONE_CONFIG": "/dev/null", "RCLONE_CONFIG_DEAD_TYPE": "s3", "RCLONE_CONFIG_DEAD_PROVIDER": "Other",
           "RCLONE_CONFIG_DEAD_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
           "RCLONE_CONFIG_DEAD_ACCESS_KEY_ID": "AKIDEAD", "RCLONE_CONFIG_DEAD_SECRET_ACCESS_KEY": "dead-secret"}
    full_env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # rclone 1.60 cannot load it
    result = subprocess.run([sys.executable, "-m", "backupd", "--config", str(config), "doctor"], capture_output=True, text=True,
                            env={**full_env, **env}, timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = {line.split()[2]: line for line in result.stdout.splitlines() if " destination " in line}
    assert "connection refused" in lines["dead"] and "Failed to " in lines["dead"], lines["dead"]
    assert "didn't find section in config file" in lines["nosection"], lines["nosection"]
    assert "check the remote's rclone config" in lines["nosection"]
