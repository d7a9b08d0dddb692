"""Restore drills from inside the daemon (`[verify] schedule = "after-backup"`): `backupd run` as
systemd runs it, a real PostgreSQL, a local destination, a webhook receiver on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.e2e.test_daemon import DaemonProcess, notify, wait_for  # noqa: F401 - notify is a fixture


class WebhookReceiver:
    """Stands in for a generic webhook alert receiver on the internet: records every JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.bodies.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self) -> list[str]:
        return [b.get("event", "") for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


def test_drill_after_backup_in_daemon_passes_then_a_failing_drill_alerts(make_config, pg, webhook, tmp_path):
    """A drill after the catch-up backup restores it into scratch databases on `scratch_dsn` and
    records `last_drill` (passed, with its restore time). With a scratch server that cannot be
    reached, the drill fails: `verify_failed` reaches the webhook and health turns failing."""
    notifiers = [{"type": "webhook", "url": webhook.url, "on": ["verify_failed"]}]
    config = make_config(schedule={"every": "1h"}, verify={"schedule": "after-backup", "scratch_dsn": pg.dsn()},
                         notifiers=notifiers)
    status_path = tmp_path / "state" / "status.json"

    def last_drill() -> dict | None:
        try:
            return json.loads(status_path.read_text()).get("last_drill")
        except (OSError, ValueError):
            return None

    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        drill = wait_for(last_drill, 90, "a drill after the catch-up backup")
        assert drill["outcome"] == "passed", drill
        assert drill["trigger"] == "after-backup" and drill["restore_test"] is True and drill["rto_seconds"] > 0
        assert json.loads(run_cli("--config", str(config), "status", "--json").stdout)["health"] == "healthy"
    finally:
        daemon.stop()
    assert webhook.events() == []

    config = make_config(schedule={"every": "1h"},
                         verify={"schedule": "after-backup", "scratch_dsn": "postgresql://drill:pw@127.0.0.1:1/x"},
                         notifiers=notifiers)
    status_path.unlink()  # a fresh start: the catch-up run happens again
    daemon = DaemonProcess(config, tmp_path / "daemon2.log")
    try:
        drill = wait_for(last_drill, 90, "a failing drill")
        assert drill["outcome"] == "failed" and "scratch server" in drill["error"]
        wait_for(lambda: "verify_failed" in webhook.events(), 30, "the verify_failed alert")
        status = run_cli("--config", str(config), "status", "--json")
        assert status.returncode == 1 and json.loads(status.stdout)["health"] == "failing"
    finally:
        daemon.stop()
    assert "pw@" not in Path(tmp_path / "daemon2.log").read_text()


class SilentServer:
    """Stands in for a scratch server that accepts connections and never answers (a stalled
    host): every connection is held open, unanswered, until close()."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        self.sock.close()
        for connection in self.held:
            connection.close()


@pytest.mark.slow
def test_a_hung_drill_neither_blocks_the_schedule_nor_keeps_the_watchdog_fed(make_config, notify, tmp_path):
    """A drill whose scratch server accepts and never answers hangs (until psycopg's 15 s connect
    timeout): meanwhile the daemon keeps its schedule (`every = 2s`: more backups start during the
    drill), and once the drill is older than four `restore_timeout`s (here 4 s) the WATCHDOG=1
    pings stop; after the drill ends they resume."""
    silent = SilentServer()
    config = make_config(schedule={"every": "2s"},
                         verify={"schedule": "after-backup", "restore_timeout": "1s",
                                 "scratch_dsn": f"postgresql://drill:pw@127.0.0.1:{silent.port}/x"})
    daemon = DaemonProcess(config, tmp_path / "daemon.log", env={"NOTIFY_SOCKET": notify.address,
                                                                   "WATCHDOG_USEC": "1000000"})
    try:
        daemon.wait_event("drill_started", 60)
        drill_began = time.monotonic()
        started_runs = len(daemon.events("backup_started"))
        wait_for(lambda: len(daemon.events("backup_started")) >= started_runs + 2, 12,
                 "two scheduled backups while the drill hangs")
        daemon.wait_event("watchdog_ping_skipped", 10)
        assert time.monotonic() - drill_began >= 3.5
        assert not daemon.events("drill_finished")
        daemon.wait_event("drill_finished", 30)
        pings = len([f for f in notify.fields() if f == "WATCHDOG=1"])
        wait_for(lambda: len([f for f in notify.fields() if f == "WATCHDOG=1"]) > pings, 10,
                 "WATCHDOG=1 again after the drill")
    finally:
        daemon.stop()
        silent.close()
    assert "Traceback" not in daemon.log


@pytest.mark.slow
def test_a_hung_backup_run_stops_the_watchdog_and_the_stale_alert_still_fires(make_config, source_dsn, notify,
                                                                                webhook, tmp_path):
    """A backup run that hangs (another session holds an ACCESS EXCLUSIVE lock on `tasks`, so the
    dump waits): once the run is older than `stale_after` (here 4 s) the WATCHDOG=1 pings stop,
    and the stale alert fires while the run still hangs. When the lock goes, the run completes
    and the pings resume."""
    import psycopg

    config = make_config(schedule={"every": "1s"}, state={"stale_after": "4s"},
                         notifiers=[{"type": "webhook", "url": webhook.url, "on": ["stale"]}])
    daemon = DaemonProcess(config, tmp_path / "daemon.log", env={"NOTIFY_SOCKET": notify.address,
                                                                   "WATCHDOG_USEC": "1000000"})
    try:
        daemon.wait_event("next_run_planned", 60)  # the catch-up run is done
        with psycopg.connect(source_dsn) as locker:
            locker.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
            started = len(daemon.events("backup_started"))
            wait_for(lambda: len(daemon.events("backup_started")) > started, 10, "the next run")
            daemon.wait_event("watchdog_ping_skipped", 15)
            wait_for(lambda: "stale" in webhook.events(), 20, "the stale alert during the hung run")
            locker.rollback()
        pings = len([f for f in notify.fields() if f == "WATCHDOG=1"])
        wait_for(lambda: len([f for f in notify.fields() if f == "WATCHDOG=1"]) > pings, 30,
                 "WATCHDOG=1 again once the run completes")
    finally:
        daemon.stop()
    assert "Traceback" not in daemon.log
