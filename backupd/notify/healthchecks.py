"""A healthchecks.io-style dead man's switch: `/start` when a run starts, the ping URL on success,
`/fail` on failure, with the run's log tail as the body.

When the host or the daemon is down, no ping arrives and the monitoring service raises the alarm
itself. Each run's pings carry `rid=<uuid>` (derived from the backup id) so the service can pair a
start with its end and measure the duration. Events that are not about a run's outcome (a test, a
restore, stale) go to `/log`, which records them without changing the check's state.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

from backupd import log as backupd_log
from backupd.notify import Event
from backupd.notify.http import post

MAX_BODY = 100_000  # healthchecks.io keeps at most 100 kB of a ping body
SUFFIX: dict[str, str] = {"success": "", "recovered": "", "failure": "/fail", "partial": "/fail",
                          "verify_failed": "/fail"}


def run_uuid(run_id: str) -> str:
    """The stable `rid` of a backup id (healthchecks wants a UUID)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"backupd:{run_id}"))


class HealthchecksNotifier:
    """Pings one healthchecks check."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.name = "healthchecks"

    def _ping(self, suffix: str, body: str, run_id: str | None) -> None:
        url = self.config.ping_url.get_secret_value().rstrip("/") + suffix
        if run_id:
            url += "?" + urlencode({"rid": run_uuid(run_id)})
        data = body.encode()[-MAX_BODY:]
        post(url, content=data, headers={"Content-Type": "text/plain; charset=utf-8"},
             timeout=float(self.config.timeout.total_seconds()))

    def run_started(self, run_id: str) -> None:
        """`<ping_url>/start?rid=...`; raises on failure."""
        self._ping("/start", f"backup {run_id} started", run_id)

    def send(self, event: Event) -> None:
        """Success, `/fail` or `/log` by event, the body being the summary and the run's log tail."""
        run = event.get("run") or {}
        run_id = run.get("id")
        suffix = SUFFIX.get(event["event"], "/log")
        lines = [event["text"]]
        tail = backupd_log.tail(run_id) if run_id else []
        if tail:
            lines += ["", "--- log tail ---", *(line if len(line) <= 2000 else line[:2000] + "..." for line in tail)]
        self._ping(suffix, "\n".join(lines) + "\n", run_id if suffix != "/log" else None)
