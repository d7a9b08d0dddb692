"""`backupd run`, the daemon, as systemd runs it: a subprocess with NOTIFY_SOCKET (a datagram socket
bound by the test), signals sent by pid, backups on a real PostgreSQL and a local destination."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, run_cli, wait_for, write_config




class NotifySocket:
    """Stands in for systemd's notify socket: an AF_UNIX datagram socket the daemon writes to,
    read continuously by a thread (as systemd does: an unread queue makes the sender drop)."""

    def __init__(self) -> None:
        self.address = f"@backupd-test-{uuid.uuid4().hex[:12]}"  # abstract name, as systemd may use
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.address[1:].encode())
        self.sock.settimeout(0.2)
        self.messages: list[list[str]] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            self.messages.append(data.decode().split("\n"))

    def drain(self) -> list[list[str]]:
        return list(self.messages)

    def fields(self) -> list[str]:
        return [field for message in self.drain() for field in message]

    def has(self, field: str) -> bool:
        return any(f == field or f.startswith(field) for f in self.fields())

    def close(self) -> None:
        self._closed = True
        self._reader.join(timeout=2)
        self.sock.close()


class DaemonProcess:
    """`python -m backupd --config C run` with its stderr in a file (read while it runs)."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None,
                 argv: list[str] | None = None) -> None:
        self.log_path = log_path
        self.log_file = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        full_env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            argv or [sys.executable, "-m", "backupd", "--config", str(config), "--log-format", "auto", "run"],
            stdout=subprocess.DEVNULL, stderr=self.log_file, env=full_env, cwd=REPO,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def events(self, name: str) -> list[str]:
        return [line for line in self.log.splitlines() if f"event={name}" in line]

    def wait_event(self, name: str, timeout: float = 60) -> str:
        return wait_for(lambda: (self.events(name) or [None])[-1], timeout, f"log event {name}\n{self.log[-3000:]}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(config: Path, env: dict[str, str] | None = None, argv: list[str] | None = None) -> DaemonProcess:
        daemon = DaemonProcess(config, tmp_path / f"daemon{len(started)}.log", env, argv)
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            daemon.stop()


def listed(config: Path) -> list[dict[str, Any]]:
    result = run_cli("--config", str(config), "-q", "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def history(state: Path) -> list[dict[str, Any]]:
    path = state / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of the direct children of `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid:
            found.append((int(entry.name), name))
    return found


def test_backups_on_schedule_with_sd_notify_metrics_and_http(make_config, notify, daemons, tmp_path):
    """every = 2s: a catch-up run at once, then scheduled runs; READY, STATUS, WATCHDOG and
    STOPPING reach the notify socket; status.json has next_run; the metrics file and the
    loopback endpoint report the runs; SIGTERM ends it with exit 0."""
    port = free_port()
    config = make_config(schedule={"every": "2s"}, http={"listen": f"127.0.0.1:{port}"})
    daemon = daemons(config, env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000"})
    wait_for(lambda: notify.has("READY=1"), 30, "READY=1")
    wait_for(lambda: len(listed(config)) >= 2, 60, "two backups at the destination")
    runs = history(tmp_path / "state")
    assert runs[0]["trigger"] == "catch-up" and runs[1]["trigger"] == "schedule"
    assert all(run["outcome"] == "success" for run in runs)
    first, second = (datetime.fromisoformat(r["started"].replace("Z", "+00:00")) for r in runs[:2])
    assert second - first >= timedelta(seconds=2)
    wait_for(lambda: notify.has("WATCHDOG=1"), 10, "WATCHDOG=1")
    fields = notify.fields()
    assert "STATUS=Backing up: snapshot" in fields and "STATUS=Backing up: upload" in fields
    assert any(f.startswith("STATUS=Idle, next backup at ") for f in fields)

    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["next_run"] and status["last_success"]
    cli_status = run_cli("--config", str(config), "status", "--json")
    assert cli_status.returncode == 0 and json.loads(cli_status.stdout)["health"] == "healthy"

    metrics_path = tmp_path / "state" / "backupd.prom"
    metrics = metrics_path.read_text()
    assert oct(metrics_path.stat().st_mode & 0o777) == "0o640"  # its folder's group reads it (docs/operations.md)
    assert "# TYPE backupd_last_success_timestamp_seconds gauge" in metrics
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if not line.startswith("#")}
    assert values["backupd_last_success_timestamp_seconds"] > time.time() - 120
    assert values['backupd_destination_last_run_success{destination="local"}'] == 1
    assert values["backupd_last_run_rows"] > 2000 and values["backupd_last_run_bytes"] > 0
    assert values["backupd_consecutive_failures"] == 0 and values['backupd_health{state="healthy"}'] == 1

    code, body = http_get(f"http://127.0.0.1:{port}/healthz")
    assert code == 200 and json.loads(body)["health"] == "healthy"
    code, body = http_get(f"http://127.0.0.1:{port}/status")
    assert code == 200 and json.loads(body)["last_success"]["id"]
    code, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert code == 200 and "backupd_last_run_duration_seconds" in body

    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(10) == 0
    assert notify.has("STOPPING=1")
    assert "Traceback" not in daemon.log
    # every run's manifest is complete: nothing half-written is listed
    for backup in listed(config):
        assert (tmp_path / "backups" / backup["id"] / "manifest.json").exists()


def _grow_database(pg, dsn: str, rows: int) -> None:
    pg.execute(dsn, "CREATE TABLE bulk (id bigint PRIMARY KEY, body text NOT NULL)")
    pg.execute(dsn, "INSERT INTO bulk SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, %s) g", (rows,))


@pytest.mark.slow
def test_sigterm_mid_backup_abandons_cleanly(make_config, source_dsn, pg, notify, daemons, tmp_path):
    """SIGTERM while pg_dump and the export run: pg_dump is stopped, staging removed, nothing is
    listed at the destination, no success recorded, exit 0 within 10 s."""
    _grow_database(pg, source_dsn, 400_000)
    config = make_config(schedule={"every": "1h"})
    daemon = daemons(config, env={"NOTIFY_SOCKET": notify.address})
    staging = tmp_path / "state" / "staging"

    def dumping() -> list[tuple[int, str]]:
        busy = staging.exists() and any(p.stat().st_size > 0 for p in staging.rglob("*") if p.is_file())
        children = [c for c in children_of(daemon.proc.pid) if c[1] == "pg_dump"]
        return children if busy and children else []

    children = wait_for(dumping, 60, "pg_dump running and artifacts being written", interval=0.02)
    began = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(10) == 0, daemon.log[-3000:]
    assert time.monotonic() - began < 10
    assert "backup_abandoned" in daemon.log and "Traceback" not in daemon.log
    assert notify.has("STOPPING=1")
    for pid, _name in children:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists()
                 or "Z" in (Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]), 5, f"pg_dump {pid} gone")
    assert listed(config) == []
    assert not staging.exists() or list(staging.iterdir()) == []
    backups = tmp_path / "backups"
    assert not backups.exists() or not any(backups.rglob("manifest.json"))
    status_path = tmp_path / "state" / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    assert not status.get("last_success")


SLOW_LAUNCHER = """
import sys, time
from backupd.destinations import DESTINATION_TYPES
from backupd.destinations.local import LocalDestination, LocalStore


class _Trickle:
    # A disk that writes 64 KiB every 50 ms (about 1.3 MB/s): stands in for a slow mount.
    def __init__(self, data):
        self.data = data

    def read(self, size=-1):
        time.sleep(0.05)
        return self.data.read(65536)


class SlowStore(LocalStore):
    def put(self, key, data, size):
        super().put(key, _Trickle(data), size)


def slow_local(config):
    destination = LocalDestination(config)
    destination.objects = SlowStore(config.path)
    return destination


DESTINATION_TYPES["local"] = slow_local
from backupd.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_during_upload_publishes_nothing(make_config, notify, daemons, tmp_path):
    """SIGTERM while artifacts are being copied to a (slow) local destination: the copy stops,
    what was written is removed, no manifest is published, no success recorded, exit 0 in 10 s."""
    launcher = tmp_path / "slow_backupd.py"
    launcher.write_text(SLOW_LAUNCHER)
    config = make_config(schedule={"every": "1h"}, pipeline={"compression": "none"})
    daemon = daemons(config, env={"NOTIFY_SOCKET": notify.address, "PYTHONPATH": str(REPO)},
                     argv=[sys.executable, str(launcher), "--config", str(config), "run"])
    backups = tmp_path / "backups"
    wait_for(lambda: notify.has("STATUS=Backing up: upload"), 60, "the upload phase")
    wait_for(lambda: backups.exists() and any(p.is_file() for p in backups.rglob("*")), 30,
             "the first bytes at the destination", interval=0.02)
    began = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(10) == 0, daemon.log[-3000:]
    assert time.monotonic() - began < 10
    assert "backup_abandoned" in daemon.log
    assert not any(backups.rglob("manifest.json"))
    assert [p for p in backups.rglob("*")] == [], "an abandoned upload leaves nothing behind"
    assert listed(config) == []
    status_path = tmp_path / "state" / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    assert not status.get("last_success")
    assert list((tmp_path / "state" / "staging").iterdir()) == []


def test_sighup_reload_good_and_bad_config(make_config, notify, daemons, tmp_path):
    """SIGHUP with a broken config: logged as an error, the daemon keeps the old one and goes on;
    with a valid one: RELOADING=1/READY=1 and the new schedule applies."""
    config = make_config(schedule={"every": "1h", "catch_up": False})
    original = config.read_text()
    daemon = daemons(config, env={"NOTIFY_SOCKET": notify.address})
    wait_for(lambda: notify.has("READY=1"), 30, "READY=1")
    daemon.wait_event("catch_up_disabled")

    config.write_text(original.replace('every = "1h"', 'every = "banana"'))
    notify.messages.clear()
    daemon.signal(signal.SIGHUP)
    failure = daemon.wait_event("config_reload_failed")
    assert "schedule.every" in failure and "level=error" in failure
    wait_for(lambda: notify.has("READY=1"), 10, "READY=1 after the failed reload")
    reloading = [m for m in notify.messages if "RELOADING=1" in m]
    assert reloading and any(f.startswith("MONOTONIC_USEC=") for f in reloading[0])
    assert daemon.proc.poll() is None and not (tmp_path / "backups").exists()

    config.write_text(original.replace('every = "1h"', 'every = "2s"'))
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config_reloaded")
    wait_for(lambda: listed(config), 60, "a backup on the reloaded 2s schedule")
    assert history(tmp_path / "state")[0]["trigger"] == "schedule"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(10) == 0


def _write_status(state: Path, last_success: datetime) -> None:
    state.mkdir(parents=True, exist_ok=True)
    ident = last_success.strftime("%Y%m%dT%H%M%SZ")
    finished = (last_success + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    run = {"id": ident, "started": last_success.strftime("%Y-%m-%dT%H:%M:%SZ"), "finished": finished,
           "outcome": "success", "rows": 1, "bytes": 1, "destinations": {"local": {"ok": True}}}
    status = {"last_run": run, "last_success": {"id": ident, "finished": finished, "outcome": "success"},
              "destinations": {"local": {"last_success": finished, "last_error": None}}}
    (state / "status.json").write_text(json.dumps(status))


def test_catch_up_runs_at_once_after_a_missed_slot(make_config, daemons, tmp_path):
    """Daily at a time one hour ago; status.json says the last success was 3 days ago: the
    daemon runs at once on start (trigger catch-up)."""
    now = datetime.now(UTC)
    _write_status(tmp_path / "state", now - timedelta(days=3))
    config = make_config(schedule={"at": [(now - timedelta(hours=1)).strftime("%H:%M")], "timezone": "UTC"})
    daemon = daemons(config)
    started = daemon.wait_event("catch_up_started")
    assert "passed without a successful backup" in started
    wait_for(lambda: listed(config), 60, "the catch-up backup")
    runs = history(tmp_path / "state")
    assert [r["trigger"] for r in runs] == ["catch-up"] and runs[0]["outcome"] == "success"
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    next_run = datetime.fromisoformat(status["next_run"].replace("Z", "+00:00"))
    assert timedelta(hours=22) < next_run - now < timedelta(hours=24)


def test_no_catch_up_when_the_last_slot_succeeded(make_config, notify, daemons, tmp_path):
    """The last success came after the last slot: no run on start, the next slot is planned."""
    now = datetime.now(UTC)
    _write_status(tmp_path / "state", now - timedelta(minutes=30))
    config = make_config(schedule={"at": [(now - timedelta(hours=1)).strftime("%H:%M")], "timezone": "UTC"})
    daemon = daemons(config, env={"NOTIFY_SOCKET": notify.address})
    daemon.wait_event("catch_up_not_needed")
    wait_for(lambda: notify.has("READY=1"), 10, "READY=1")
    assert not daemon.events("backup_started")
    assert any(f.startswith("STATUS=Idle, next backup at ") for f in notify.fields())
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(10) == 0
    assert history(tmp_path / "state") == [] and not (tmp_path / "backups").exists()


def test_failed_run_is_retried_at_next_slot_and_logs_for_journald(pg, daemons, tmp_path):
    """The database is missing at first: the run fails (logged with journald's <3> prefix), the
    daemon keeps going, the next slot runs again and succeeds once the database exists."""
    name = f"late_{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path / "backupd.toml", {
        "source": {"dsn": pg.dsn(name), "connect_timeout": "3s"},
        "schedule": {"every": "2s"},
        "state": {"dir": str(tmp_path / "state")},
        "destinations": [{"name": "local", "type": "local", "path": str(tmp_path / "backups")}],
    })
    daemon = daemons(config, env={"JOURNAL_STREAM": "8:12345"})
    wait_for(lambda: len(history(tmp_path / "state")) >= 2, 60, "two failed runs")
    assert daemon.proc.poll() is None
    pg.execute(pg.dsn(), f'CREATE DATABASE "{name}" TEMPLATE jarvis_template')
    wait_for(lambda: any(r["outcome"] == "success" for r in history(tmp_path / "state")), 60, "a successful retry")
    runs = history(tmp_path / "state")
    assert runs[0]["outcome"] == "failed" and runs[1]["outcome"] == "failed"
    assert [r["trigger"] for r in runs[:2]] == ["catch-up", "schedule"]
    assert len(listed(config)) >= 1
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["consecutive_failures"] == 0 and status["last_success"]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(10) == 0
    lines = daemon.log.splitlines()
    assert any(line.startswith("<3>level=error event=backup_finished") for line in lines)
    assert any(line.startswith("<6>level=info event=daemon_started") for line in lines)
    assert all(line.startswith("<") and " ts=" not in line for line in lines if line.strip())


def test_second_daemon_on_same_state_dir_refuses_and_manual_backup_still_works(make_config, notify, daemons,
                                                                                 tmp_path):
    """A second `backupd run` on the same state dir exits 4 with one clear line; a manual
    `backupd backup` while the daemon idles runs normally."""
    config = make_config(schedule={"every": "1h", "catch_up": False})
    first = daemons(config, env={"NOTIFY_SOCKET": notify.address})
    wait_for(lambda: notify.has("READY=1"), 30, "READY=1")
    second = run_cli("--config", str(config), "run", timeout=60)
    assert second.returncode == 4
    errors = [line for line in second.stderr.splitlines() if line.startswith("backupd: error:")]
    assert len(errors) == 1 and "another backupd daemon is already running" in errors[0]
    assert f"pid {first.proc.pid}" in errors[0]
    manual = run_cli("--config", str(config), "-q", "backup")
    assert manual.returncode == 0, manual.stderr
    assert first.proc.poll() is None


def test_bad_config_refused_before_start(tmp_path):
    """`backupd run` with an invalid config: exit 2, one line per problem, nothing started."""
    config = write_config(tmp_path / "bad.toml", {
        "source": {"dsn": "postgresql://u:pw@127.0.0.1:5432/db"},
        "schedule": {"every": "2s", "at": ["25:00"]},
        "http": {"listen": "0.0.0.0:9468"},
        "state": {"dir": str(tmp_path / "state")},
        "destinations": [{"type": "local", "path": str(tmp_path / "b")}],
    })
    result = run_cli("--config", str(config), "run", timeout=30)
    assert result.returncode == 2
    assert "schedule.at" in result.stderr and "http.listen" in result.stderr and "loopback" in result.stderr
    assert not (tmp_path / "state").exists()
