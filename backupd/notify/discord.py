"""A Discord channel webhook: one embed per event, coloured by outcome, a field per destination.

A 429 is honoured once when its `retry_after` fits the notifier's `timeout`. The webhook URL is a
secret: it never appears in an error or a log line.
"""

from __future__ import annotations

from typing import Any

from backupd.notify import Event
from backupd.notify.events import detail_lines, human_bytes, human_seconds, icon, table_summary
from backupd.notify.http import post

COLOURS: dict[str, int] = {
    "success": 0x2ECC71, "recovered": 0x2ECC71, "partial": 0xE67E22, "failure": 0xE74C3C,
    "stale": 0xF1C40F, "restore": 0x3498DB, "verify_failed": 0xE74C3C, "test": 0x95A5A6,
}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def build_embed(event: Event) -> dict[str, Any]:
    """The Discord embed for an event (limits: title 256, description 4096, field value 1024)."""
    fields: list[dict[str, Any]] = []
    run = event.get("run")
    description = [event["summary"]]
    if run:
        fields.append({"name": "Backup", "value": f"`{run.get('id')}` ({run.get('kind', 'full')})", "inline": True})
        fields.append({"name": "Duration", "value": human_seconds(float(run.get("duration_seconds") or 0)),
                       "inline": True})
        if run.get("bytes"):
            fields.append({"name": "Size", "value": human_bytes(int(run["bytes"])), "inline": True})
        if run.get("rows"):
            fields.append({"name": "Rows", "value": str(run["rows"]), "inline": True})
        tables = table_summary(run.get("tables") or {})
        if tables:
            fields.append({"name": "Tables", "value": _clip(tables, 1024), "inline": False})
        for name, result in (run.get("destinations") or {}).items():
            value = "\u2705 stored" if result.get("ok") else f"\u274c {result.get('error')}"
            fields.append({"name": f"Destination {name}", "value": _clip(value, 1024), "inline": False})
        if run.get("error"):
            fields.append({"name": "Error", "value": _clip(str(run["error"]), 1024), "inline": False})
    elif event["event"] != "test":
        description += detail_lines(event)
    last = event.get("last_success")
    if last and event["event"] in ("failure", "stale"):
        fields.append({"name": "Last success", "value": f"`{last.get('id')}` at {last.get('finished')}",
                       "inline": False})
    fields.append({"name": "Next run", "value": str(event.get("next_run") or "not scheduled"), "inline": True})
    fields.append({"name": "Host", "value": str(event["host"]), "inline": True})
    return {
        "title": _clip(f"{icon(event)} {event['title']}".strip(), 256),
        "description": _clip("\n".join(description), 4096),
        "color": COLOURS.get(event["event"], 0x95A5A6),
        "fields": fields[:25],
        "timestamp": event["at"],
        "footer": {"text": f"backupd \u00b7 {event['event']}"},
    }


class DiscordNotifier:
    """Posts events to one Discord webhook."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.name = "discord"

    def send(self, event: Event) -> None:
        """POST the embed; raises DeliveryError or an httpx error on failure."""
        body = {"username": "backupd", "embeds": [build_embed(event)], "allowed_mentions": {"parse": []}}
        post(self.config.webhook_url.get_secret_value(), json_body=body,
             timeout=float(self.config.timeout.total_seconds()))
