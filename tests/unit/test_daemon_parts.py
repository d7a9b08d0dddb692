"""The daemon's pure parts: slots and catch-up decisions, the Prometheus text, sd_notify datagrams,
the loopback-only [http] listen check."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

import pytest

from backupd.config import ScheduleConfig
from backupd.daemon import catch_up_reason, next_slot, previous_slot
from backupd.metrics import parse_listen, render
from backupd.sdnotify import Notifier

NOW = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)


def _status(last_success: datetime | None) -> dict:
    if last_success is None:
        return {}
    ident = last_success.strftime("%Y%m%dT%H%M%SZ")
    return {"last_success": {"id": ident, "finished": last_success.isoformat()}}


def test_slots_in_a_time_zone_across_the_dst_change():
    # Europe/Paris went to summer time on 2026-03-29 at 02:00 UTC+1: 02:30 local that day does
    # not exist; 08:00 local is 06:00 UTC
    config = ScheduleConfig(at=["08:00", "20:00"], timezone="Europe/Paris")
    assert previous_slot(config, NOW) == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)
    assert next_slot(config, NOW) == datetime(2026, 3, 29, 18, 0, tzinfo=UTC)
    early = datetime(2026, 3, 29, 5, 0, tzinfo=UTC)
    assert previous_slot(config, early) == datetime(2026, 3, 28, 19, 0, tzinfo=UTC)  # winter time


def test_catch_up_for_daily_slots():
    config = ScheduleConfig(at=["02:00"], timezone="UTC")
    assert catch_up_reason(config, {}, NOW) == "no successful backup yet"
    assert "passed without a successful backup" in catch_up_reason(config, _status(NOW - timedelta(days=2)), NOW)
    # the success started after today's 02:00: on track
    assert catch_up_reason(config, _status(NOW.replace(hour=2, minute=5)), NOW) is None
    # a failed last run does not count: last_success decides
    status = {**_status(NOW - timedelta(days=1, hours=9)), "last_run": {"outcome": "failed"}}
    assert catch_up_reason(config, status, NOW) is not None


def test_catch_up_for_an_interval():
    config = ScheduleConfig(every="6h")
    assert catch_up_reason(config, _status(NOW - timedelta(hours=5)), NOW) is None
    assert "older than every = 6h" in catch_up_reason(config, _status(NOW - timedelta(hours=7)), NOW)
    assert next_slot(config, NOW) == NOW + timedelta(hours=6) and previous_slot(config, NOW) is None


def test_metrics_text_has_help_type_and_labels():
    status = {
        "last_run": {"id": "20260329T110000Z", "finished": "2026-03-29T11:01:00Z", "outcome": "partial",
                     "duration_seconds": 60.5, "rows": 1234, "bytes": 5678, "tables": {"tasks": 1000},
                     "destinations": {"local": {"ok": True}, "s3 \"eu\"": {"ok": False, "error": "x"}}},
        "last_success": {"id": "20260329T110000Z", "finished": "2026-03-29T11:01:00Z"},
        "destinations": {"local": {"last_success": "2026-03-29T11:01:00Z", "consecutive_failures": 0},
                         "s3 \"eu\"": {"last_error": "x", "consecutive_failures": 3}},
        "consecutive_failures": 0, "next_run": "2026-03-30T02:00:00Z",
    }
    text = render(status, timedelta(hours=48))
    assert "# HELP backupd_last_success_timestamp_seconds " in text
    assert "# TYPE backupd_last_run_duration_seconds gauge" in text
    assert f"backupd_last_success_timestamp_seconds {int(datetime(2026, 3, 29, 11, 1, tzinfo=UTC).timestamp())}" in text
    assert "backupd_last_run_duration_seconds 60.5" in text
    assert 'backupd_last_run_outcome{outcome="partial"} 1' in text
    assert 'backupd_destination_last_run_success{destination="s3 \\"eu\\""} 0' in text
    assert 'backupd_destination_consecutive_failures{destination="s3 \\"eu\\""} 3' in text
    assert 'backupd_last_run_table_rows{table="tasks"} 1000' in text
    never = render({}, timedelta(hours=48))
    assert "backupd_last_success_timestamp_seconds 0" in never and 'backupd_health{state="never"} 1' in never


def test_sd_notify_path_socket_and_environment_cleanup(tmp_path):
    path = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    try:
        environ = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
        notifier = Notifier.from_environment(environ)
        assert environ == {}  # children never inherit them
        assert notifier.watchdog_usec == 4000000
        notifier.ready("Idle")
        assert listener.recv(256) == b"READY=1\nSTATUS=Idle"
        notifier.status("Idle")  # repeated: not sent again
        notifier.reloading()
        fields = listener.recv(256).decode().split("\n")
        assert fields[0] == "RELOADING=1" and fields[1].startswith("MONOTONIC_USEC=")
        notifier.close()
    finally:
        listener.close()
    other = Notifier.from_environment({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "5", "WATCHDOG_PID": "1"})
    assert other.watchdog_usec is None  # the watchdog is meant for another process
    assert Notifier.from_environment({}).send("READY=1") is False
    assert Notifier(str(tmp_path / "nobody-listens")).send("READY=1") is False  # never raises


def test_sd_notify_never_blocks_on_a_listener_that_does_not_read(tmp_path):
    """The socket queue of a silent listener fills after a few datagrams: sends are dropped, the
    sender (the daemon's main thread or its watchdog) never blocks."""
    path = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    try:
        notifier = Notifier(str(path))
        results = [notifier.send("WATCHDOG=1") for _ in range(500)]
        assert results[0] is True and results[-1] is False
    finally:
        listener.close()


@pytest.mark.parametrize("listen", ["127.0.0.1:9468", "[::1]:9468", "localhost:1"])
def test_http_listen_accepts_loopback(listen):
    assert parse_listen(listen)[1] > 0


@pytest.mark.parametrize("listen", ["0.0.0.0:9468", "192.168.1.5:80", "9468", "127.0.0.1:0", "example.com:80"])
def test_http_listen_refuses_anything_else(listen):
    with pytest.raises(ValueError):
        parse_listen(listen)
