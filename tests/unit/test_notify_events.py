"""Alert events and their renderings, without any network: content, escaping, limits, redaction."""

from __future__ import annotations

import hashlib
import hmac

from backupd import redact
from backupd.notify.discord import build_embed
from backupd.notify.events import SCHEMA, build_event, complete_event, table_summary
from backupd.notify.telegram import MAX_TEXT, render_html
from backupd.notify.webhook import signature

RUN = {
    "id": "20260130T020000Z", "kind": "full", "trigger": "schedule", "duration_seconds": 41.2,
    "outcome": "failed", "error": "offsite: connect to postgresql://backup:Hunter2Pass@db:5432/postgres refused",
    "rows": 19191, "bytes": 5194376, "tables": {"tasks": 2000, "logs": 6000, "users": 5},
    "destinations": {"offsite": {"ok": False, "error": "<AccessDenied> & co"}}, "host": "db1",
}


def test_failure_event_carries_the_facts_and_no_password():
    """A failure event names the id, duration, size, rows, tables, each destination's error, the
    last success, the next run and the host; a DSN password inside an error is masked everywhere."""
    event = build_event("failure", run=RUN, status={
        "next_run": "2026-01-31T02:00:00Z", "consecutive_failures": 2,
        "last_success": {"id": "20260129T020000Z", "finished": "2026-01-29T02:00:41Z", "outcome": "success"}})
    assert event["schema"] == SCHEMA and event["severity"] == "error" and event["consecutive_failures"] == 2
    text = event["text"]
    for expected in ("backup FAILED", "20260130T020000Z", "Duration: 41.2 s", "Size: 5.0 MiB", "Rows: 19191",
                     "Tables: logs 6000, tasks 2000, users 5", "offsite: FAILED: <AccessDenied> & co",
                     "Last success: 20260129T020000Z", "Next run: 2026-01-31T02:00:00Z", "Host: db1"):
        assert expected in text, expected
    assert "Hunter2Pass" not in str(event) and "backup:***@db" in text


def test_telegram_html_is_escaped_and_bounded():
    """Telegram's HTML gets `<`, `>` and `&` escaped and stays within the 4096-character limit."""
    event = build_event("failure", run=RUN, status={})
    html = render_html(event)
    assert "&lt;AccessDenied&gt; &amp; co" in html and "<b>" in html
    long_run = {**RUN, "destinations": {f"d{i}": {"ok": False, "error": "x" * 500} for i in range(20)}}
    assert len(render_html(build_event("failure", run=long_run, status={}))) <= MAX_TEXT


def test_discord_embed_colour_and_fields():
    """The embed is red for a failure, with one field per destination holding its error."""
    embed = build_embed(build_event("failure", run=RUN, status={}))
    assert embed["color"] == 0xE74C3C
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Destination offsite"] == "\u274c <AccessDenied> & co"
    assert len(embed["fields"]) <= 25


def test_events_from_other_commands_are_completed():
    """send_event's input: unknown keys go to `details`, a failed restore is an error."""
    event = complete_event({"event": "restore", "source": "latest", "strategy": "replace", "outcome": "failed",
                            "error": "checksum mismatch"})
    assert event["severity"] == "error" and "restore FAILED" in event["title"]
    assert event["summary"] == "restore of latest (replace) failed: checksum mismatch"
    assert event["details"]["strategy"] == "replace"


def test_webhook_signature_is_hmac_sha256_of_timestamp_dot_body():
    body = b'{"event":"failure"}'
    assert signature("k3y", 1764806400, body) == "sha256=" + hmac.new(
        b"k3y", b'1764806400.{"event":"failure"}', hashlib.sha256).hexdigest()
    assert signature("k3y", 1764806401, body) != signature("k3y", 1764806400, body)


def test_table_summary_keeps_the_biggest_five():
    tables = {f"t{i}": i for i in range(8)}
    assert table_summary(tables) == "t7 7, t6 6, t5 5, t4 4, t3 3 (+3 more)"


def test_registered_secret_is_masked_in_events():
    redact.register(["zz-registered-secret-zz"])
    event = build_event("stale", status={}, details={"note": "saw zz-registered-secret-zz"})
    assert "zz-registered-secret-zz" not in str(event)
