"""Events (schema `backupd.event/1`) and their plain-text rendering, shared by every notifier.

An event is a JSON-ready dict; `docs/alerts.md` documents every key. Every string in it has passed
`backupd.redact.redact_obj`, so a notifier may send any part of it as it is.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any

from backupd.manifest import iso
from backupd.notify import Event
from backupd.redact import redact_obj

SCHEMA = "backupd.event/1"

SEVERITY: dict[str, str] = {
    "success": "info", "recovered": "info", "restore": "info", "test": "info",
    "partial": "warning", "stale": "warning",
    "failure": "error", "verify_failed": "error",
}

HEADLINES: dict[str, str] = {
    "success": "backup succeeded",
    "partial": "backup PARTIAL: some destinations failed",
    "failure": "backup FAILED",
    "recovered": "backups recovered",
    "stale": "backups are STALE",
    "restore": "restore ran",
    "verify_failed": "verification FAILED",
    "test": "test message",
}

ICONS: dict[str, str] = {
    "success": "\u2705", "recovered": "\u2705", "partial": "\u26a0\ufe0f", "failure": "\u274c",
    "stale": "\u23f0", "restore": "\u267b\ufe0f", "verify_failed": "\u274c", "test": "\U0001f514",
}

def icon(event: Event) -> str:
    """The emoji that leads a message: by event, a cross for anything of severity error."""
    return "\u274c" if event.get("severity") == "error" else ICONS.get(str(event["event"]), "")


_TOP_LEVEL = {"schema", "event", "severity", "at", "host", "title", "summary", "text", "run",
              "next_run", "last_success", "consecutive_failures", "details"}


def human_bytes(count: int) -> str:
    """1536 -> '1.5 KiB'."""
    from backupd.commands.common import human_bytes as render

    return render(count)


def human_seconds(seconds: float) -> str:
    """12.34 -> '12.3 s', 125 -> '2 min 5 s', 7260 -> '2 h 1 min'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def table_summary(tables: dict[str, int], limit: int = 5) -> str:
    """The biggest tables by rows: 'tasks 2000, comments 3990 (+7 more)'."""
    if not tables:
        return ""
    ranked = sorted(tables.items(), key=lambda item: (-int(item[1]), item[0]))
    shown = ", ".join(f"{name} {rows}" for name, rows in ranked[:limit])
    rest = len(ranked) - limit
    return shown + (f" (+{rest} more)" if rest > 0 else "")


def build_event(name: str, *, run: dict[str, Any] | None = None, status: dict[str, Any] | None = None,
                summary: str | None = None, details: dict[str, Any] | None = None,
                now: datetime | None = None) -> Event:
    """A complete, redacted event called `name` (success, failure, stale, ...)."""
    status = status or {}
    host = str((run or {}).get("host") or socket.gethostname())
    event: Event = {
        "schema": SCHEMA,
        "event": name,
        "severity": SEVERITY.get(name, "info"),
        "at": iso(now or datetime.now(UTC)),
        "host": host,
        "title": f"backupd on {host}: {HEADLINES.get(name, name)}",
        "summary": "",
        "text": "",
        "run": run,
        "next_run": status.get("next_run"),
        "last_success": status.get("last_success"),
        "consecutive_failures": int(status.get("consecutive_failures") or 0),
        "details": dict(details or {}),
    }
    if name == "restore" and event["details"].get("outcome") == "failed":
        event["severity"] = "error"
        event["title"] = f"backupd on {host}: restore FAILED"
    event["summary"] = summary or _summary(event)
    event["text"] = render_text(event)
    redacted = redact_obj(event)
    assert isinstance(redacted, dict)
    return redacted


def complete_event(raw: dict[str, Any]) -> Event:
    """An event given by another command (`restore`, `verify_failed`), completed to the schema.

    Keys outside the schema move into `details`; `event` is required (KeyError otherwise).
    """
    name = str(raw["event"])
    details = dict(raw.get("details") or {})
    details.update({k: v for k, v in raw.items() if k not in _TOP_LEVEL})
    status: dict[str, Any] = {k: raw[k] for k in ("next_run", "last_success", "consecutive_failures") if k in raw}
    summary = str(raw["summary"]) if raw.get("summary") else None
    event = build_event(name, run=raw.get("run"), status=status, summary=summary, details=details)
    if raw.get("title"):
        event["title"] = str(redact_obj(str(raw["title"])))
        event["text"] = render_text(event)
    return event


def _summary(event: Event) -> str:
    run = event.get("run")
    details = event["details"]
    name = event["event"]
    if run:
        failed = [n for n, r in (run.get("destinations") or {}).items() if not r.get("ok")]
        text = f"backup {run.get('id')} {run.get('outcome')}"
        if name == "recovered":
            text = f"backup {run.get('id')} succeeded after earlier failures"
        if run.get("outcome") != "failed" and run.get("bytes"):
            text += f": {run.get('rows', 0)} rows, {human_bytes(int(run.get('bytes') or 0))}"
        if failed:
            text += f"; failed: {', '.join(failed)}"
        elif run.get("error"):
            text += f": {run['error']}"
        return text
    if name == "stale":
        age = details.get("age_hours")
        since = details.get("last_success") or "never"
        return f"no successful backup for {age} h (last success: {since}; stale after {details.get('stale_after')})"
    if name == "test":
        return "test message from backupd: this notifier works"
    if name == "restore":
        what = details.get("source") or details.get("backup_id") or details.get("backup") or "a backup"
        text = f"restore of {what}"
        if details.get("strategy"):
            text += f" ({details['strategy']}{', dry run' if details.get('dry_run') else ''})"
        text += f" {details.get('outcome') or 'ran'}"
        return text + (f": {details['error']}" if details.get("error") else "")
    for key in ("message", "error"):
        if details.get(key):
            return str(details[key])
    return str(HEADLINES.get(name, name))


def run_lines(run: dict[str, Any]) -> list[str]:
    """The run's facts, one per line: id, duration, size, rows, tables, error."""
    lines = [f"Backup: {run.get('id')} ({run.get('kind', 'full')}, {run.get('trigger', 'manual')})",
             f"Outcome: {run.get('outcome')}"]
    facts = [f"Duration: {human_seconds(float(run.get('duration_seconds') or 0))}"]
    if run.get("bytes"):
        facts.append(f"Size: {human_bytes(int(run['bytes']))}")
    if run.get("rows"):
        facts.append(f"Rows: {run['rows']}")
    lines.append(" \u00b7 ".join(facts))
    tables = table_summary(run.get("tables") or {})
    if tables:
        lines.append(f"Tables: {tables}")
    if run.get("error"):
        lines.append(f"Error: {run['error']}")
    return lines


def destination_lines(run: dict[str, Any]) -> list[str]:
    """One line per destination: 'local: ok (1.2 s)' or 's3: FAILED: <error>'."""
    destinations = run.get("destinations") or {}
    if not destinations:
        return ["(none reached: the run failed before the upload)"] if run.get("outcome") == "failed" else []
    lines = []
    for name, result in destinations.items():
        if result.get("ok"):
            seconds = result.get("seconds")
            lines.append(f"{name}: ok" + (f" ({human_seconds(float(seconds))})" if seconds is not None else ""))
        else:
            lines.append(f"{name}: FAILED: {result.get('error')}")
    return lines


def detail_lines(event: Event) -> list[str]:
    """Event-specific details as 'Key: value' lines (stale age, restore target, ...)."""
    lines = []
    for key, value in event["details"].items():
        if value in (None, "", [], {}):
            continue
        label = key.replace("_", " ").capitalize()
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        line = f"{label}: {value}"
        lines.append(line if len(line) <= 300 else line[:299] + "\u2026")
    return lines


def render_text(event: Event) -> str:
    """The event as plain text: title, summary, the run, destinations, details, next run, host."""
    lines = [f"{icon(event)} {event['title']}".strip(), event["summary"]]
    run = event.get("run")
    if run:
        lines.append("")
        lines += run_lines(run)
        destinations = destination_lines(run)
        if destinations:
            lines.append("Destinations:")
            lines += [f"  {line}" for line in destinations]
    details = detail_lines(event) if event["event"] != "stale" else []
    if details:
        lines.append("")
        lines += details
    lines.append("")
    if event.get("last_success") and event["event"] in ("failure", "stale"):
        lines.append(f"Last success: {event['last_success'].get('id')} at {event['last_success'].get('finished')}")
    lines.append(f"Next run: {event.get('next_run') or 'not scheduled'}")
    lines.append(f"Host: {event['host']}")
    return "\n".join(lines)
