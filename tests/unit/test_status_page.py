"""The status page's rendering from hostile or damaged state files, and the listener's answer when
rendering fails (the browser test, tests/e2e/test_status_page.py, covers the normal page)."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

from backupd.config import load_config
from backupd.metrics import HealthServer
from backupd.statuspage import render_page
from tests.conftest import write_config

HOSTILE = '<img src=x onerror="alert(1)">&'


def _config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "backupd.toml", {
        "source": {"dsn": "postgresql://u:p@127.0.0.1:1/db"},
        "state": {"dir": str(tmp_path / "state")},
        "destinations": [{"name": "local", "type": "local", "path": str(tmp_path / "b")}],
    })


def test_hostile_text_is_escaped_and_damaged_history_lines_skipped(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    run = {"id": "20261204T010000Z", "kind": "full", "outcome": "failed", "error": HOSTILE,
           "finished": "2026-12-04T01:00:05Z", "duration_seconds": 5, "bytes": 0, "rows": 0,
           "destinations": {"local": {"ok": False, "error": HOSTILE}}, "host": HOSTILE}
    (state / "status.json").write_text(json.dumps({
        "last_run": run, "destinations": {"local": {"consecutive_failures": 1, "last_error": HOSTILE}},
        "consecutive_failures": 1}))
    (state / "history.jsonl").write_text("not json\n" + json.dumps({"event": "backup", **run}) + "\n[1, 2]\n{\"half")
    html = render_page(load_config(_config(tmp_path)))
    assert "<img" not in html and "onerror=&quot;" in html and "&amp;" in html
    assert html.count('<tr><td>20261204T010000Z</td>') == 1    # the one good history line
    assert '<span class="badge failing" id="health">failing</span>' in html


def test_a_page_that_fails_to_render_is_a_500_and_the_other_routes_still_answer(tmp_path):
    def broken() -> str:
        raise ValueError("damaged state")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = HealthServer(f"127.0.0.1:{port}", lambda: ({}, timedelta(hours=48)), broken)
    server.start()
    try:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10)
            raise AssertionError("expected a 500")
        except urllib.error.HTTPError as error:
            assert error.code == 500 and b"/status and /metrics still answer" in error.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as reply:
            assert reply.status == 200
    finally:
        server.stop()
