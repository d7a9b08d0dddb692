"""The notifier registry: config `type` -> implementation, and the Protocols notifiers follow.

A notifier is one file (`telegram.py`, `discord.py`, `webhook.py`, `healthchecks.py`), one config
model in `backupd.config`, and one entry in `NOTIFIER_TYPES`. The alert policy (what is sent
when, repeat suppression, `recovered`, `stale`) lives once in `backupd.notify.dispatch`.

Events are plain JSON-ready dicts (schema `backupd.event/1`, see `docs/alerts.md` and
`backupd.notify.events`). Implementations are imported lazily so that `check-config` stays quick.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

Event = dict[str, Any]


class Notifier(Protocol):
    """Delivers events to one service."""

    name: str

    def send(self, event: Event) -> None:
        """Deliver one event (already filtered by `on` and the policy).

        Raises any exception on failure (an HTTP error, a timeout, a refusal); the dispatcher
        logs it as `notify_failed` and goes on. Must not take much longer than the configured
        `timeout` per attempt; the dispatcher also bounds the whole delivery.
        """
        ...


@runtime_checkable
class RunMonitor(Protocol):
    """A dead man's switch (healthchecks): told when a run starts and how every run ended.

    Monitors are not subject to repeat suppression: the monitoring service needs every run.
    """

    name: str

    def send(self, event: Event) -> None:
        """Deliver one event; raises on failure (see `Notifier.send`)."""
        ...

    def run_started(self, run_id: str) -> None:
        """Signal that a run began (healthchecks `/start`); raises on failure."""
        ...


def _telegram(config: Any) -> Notifier:
    from backupd.notify.telegram import TelegramNotifier

    return TelegramNotifier(config)


def _discord(config: Any) -> Notifier:
    from backupd.notify.discord import DiscordNotifier

    return DiscordNotifier(config)


def _webhook(config: Any) -> Notifier:
    from backupd.notify.webhook import WebhookNotifier

    return WebhookNotifier(config)


def _healthchecks(config: Any) -> Notifier:
    from backupd.notify.healthchecks import HealthchecksNotifier

    return HealthchecksNotifier(config)


NOTIFIER_TYPES: dict[str, Callable[[Any], Notifier]] = {
    "telegram": _telegram,
    "discord": _discord,
    "webhook": _webhook,
    "healthchecks": _healthchecks,
}


def build(config: Any) -> Notifier:
    """The Notifier for one configured `[[notifiers]]` entry."""
    return NOTIFIER_TYPES[config.type](config)
