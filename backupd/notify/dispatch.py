"""Turning a finished run into events for the configured notifiers.

A notifier's failure is logged and never changes the run's outcome or exit code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from backupd.notify import NOTIFIER_TYPES

if TYPE_CHECKING:
    from backupd.config import Config
    from backupd.runner import RunResult

log = structlog.get_logger("backupd.notify")


def dispatch_run(config: Config, result: RunResult, status: dict[str, Any]) -> None:
    """Send the run's event (`success`, `partial`, `failure`) to every notifier that wants it."""
    event = {"success": "success", "partial": "partial", "failed": "failure"}[result.outcome]
    for index, notifier_config in enumerate(config.notifiers):
        if event not in notifier_config.on:
            continue
        factory = NOTIFIER_TYPES.get(notifier_config.type)
        if factory is None:
            continue
        try:
            factory(notifier_config).send({"event": event, "run": result.record(), "status": status})
        except Exception as exc:  # noqa: BLE001 - alerting never fails a backup
            log.error("notify_failed", notifier=f"notifiers[{index}]", type=notifier_config.type, error=str(exc))
