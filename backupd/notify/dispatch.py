"""The alert policy, written once: which event goes to which notifier, and when.

- Every run becomes one event: `success`, `partial` or `failure`.
- A `failure` (or `partial`) alerts at once; while the runs keep ending the same way, again at most
  every notifier's `repeat_after`. A delivery that failed is tried again at the next run.
- The first success after failures, partials or a stale episode is `recovered` (for a notifier
  that does not want `recovered` but wants `success`, it is a plain `success`).
- `stale` fires once per staleness episode: when no success for `state.stale_after` (counted from
  the last success, or from when backupd first looked, if it never succeeded).
- Run monitors (healthchecks) hear `/start` and every run's outcome, without suppression.
- Events are filtered per notifier by its `on` list (a test message ignores `on`).

The policy's memory is `<state.dir>/alerts.json` (atomic writes, an flock beside it), so it
survives restarts and two processes never interleave their updates. A notifier's error or timeout
is logged as `notify_failed` with its cause; it never changes a run's outcome or exit code, and
nothing here raises.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from backupd.manifest import iso
from backupd.notify import NOTIFIER_TYPES, Event, Notifier, RunMonitor
from backupd.notify.events import build_event, complete_event
from backupd.redact import redact
from backupd.status import atomic_write, parse_time

if TYPE_CHECKING:
    from backupd.config import Config
    from backupd.runner import RunResult

log = structlog.get_logger("backupd.notify")

ALERTS_NAME = "alerts.json"
STATE_VERSION = 1
STALE_RETRY_AFTER = timedelta(minutes=15)
"""A stale alert whose delivery failed is tried again after this long (check_stale runs every minute)."""

RUN_EVENTS = {"success": "success", "partial": "partial", "failed": "failure"}
PROBLEMS = ("failure", "partial")

# The bot token is part of every Telegram URL; httpx logs request URLs at INFO.
for _name in ("httpx", "httpcore", "telegram", "hpack"):
    logging.getLogger(_name).setLevel(logging.WARNING if _name != "telegram" else logging.ERROR)


def notifier_key(index: int, notifier_config: Any) -> str:
    """The name a notifier has in logs, alerts.json and `send_test`: `notifiers[0]:telegram`."""
    return f"notifiers[{index}]:{notifier_config.type}"


# -- the policy's memory ---------------------------------------------------------------------------


class AlertState:
    """alerts.json: the last run's condition, the stale episode, and per notifier what was sent when."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / ALERTS_NAME
        self.data: dict[str, Any] = {}

    def load(self) -> None:
        """Read alerts.json; an absent or unreadable file is an empty memory."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            data = {"version": STATE_VERSION}
        data.setdefault("notifiers", {})
        self.data = data

    def save(self) -> None:
        """Replace alerts.json atomically."""
        atomic_write(self.path, (json.dumps(self.data, indent=2, sort_keys=True) + "\n").encode())

    def sent(self, key: str, event: str) -> dict[str, Any]:
        """What was last delivered to notifier `key` for `event`: {'at', 'ok', 'episode'} or {}."""
        entry = self.data["notifiers"].get(key, {}).get(event)
        return entry if isinstance(entry, dict) else {}

    def record(self, key: str, event: str, ok: bool, now: datetime, episode: str | None = None) -> None:
        """Remember a delivery attempt."""
        self.data["notifiers"].setdefault(key, {})[event] = {"at": iso(now), "ok": ok, "episode": episode}


@contextmanager
def _locked_state(state_dir: Path) -> Iterator[AlertState]:
    """alerts.json loaded under an exclusive flock, saved on the way out."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / ".alerts.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        state = AlertState(state_dir)
        state.load()
        before = json.dumps(state.data, sort_keys=True)
        yield state
        if json.dumps(state.data, sort_keys=True) != before:
            state.save()
    finally:
        os.close(fd)


# -- delivery ---------------------------------------------------------------------------------------


def _bound(notifier_config: Any) -> float:
    """The hard bound on one delivery: two attempts plus a honoured Retry-After, each <= timeout."""
    return float(notifier_config.timeout.total_seconds()) * 3 + 1


def _call(key: str, notifier_config: Any, event_name: str, action: Any) -> tuple[bool, str]:
    """Run `action()` in a daemon thread, bounded; returns (ok, detail). Never raises."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            action()
            outcome["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - any notifier failure is only logged
            outcome["error"] = exc

    bound = _bound(notifier_config)
    worker = threading.Thread(target=target, name=f"notify-{key}", daemon=True)
    worker.start()
    worker.join(bound)
    if worker.is_alive():
        detail = f"timed out after {bound:.0f}s"
    elif outcome.get("ok"):
        log.info("notify_sent", notifier=key, notify_event=event_name)
        return True, "sent"
    else:
        exc = outcome.get("error")
        detail = redact(_describe(exc))
    log.warning("notify_failed", notifier=key, notify_event=event_name, error=detail)
    return False, detail


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _build(key: str, notifier_config: Any) -> Notifier | None:
    factory = NOTIFIER_TYPES.get(notifier_config.type)
    if factory is None:
        return None
    try:
        return factory(notifier_config)
    except Exception as exc:  # noqa: BLE001 - a broken notifier never fails the caller
        log.warning("notify_failed", notifier=key, error=redact(_describe(exc)))
        return None


def _deliver(key: str, notifier_config: Any, notifier: Notifier, event: Event) -> bool:
    ok, _detail = _call(key, notifier_config, event["event"], lambda: notifier.send(event))
    return ok


def _with_event(event: Event, name: str) -> Event:
    """The same event under another name (success -> recovered), title and text re-rendered."""
    if event["event"] == name:
        return event
    return build_event(name, run=event.get("run"), status={
        "next_run": event.get("next_run"), "last_success": event.get("last_success"),
        "consecutive_failures": event.get("consecutive_failures"),
    }, details=event.get("details"))


# -- the interfaces other code calls ------------------------------------------------------------------


def dispatch_run(config: Config, result: RunResult, status: dict[str, Any]) -> None:
    """Tell every notifier about a finished run, per the policy above. Never raises."""
    try:
        _dispatch_run(config, result, status)
    except Exception as exc:  # noqa: BLE001 - alerting never fails a backup
        log.error("notify_failed", error=redact(_describe(exc)))


def _dispatch_run(config: Config, result: RunResult, status: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    record = result.record()
    outcome = RUN_EVENTS[result.outcome]
    base = build_event(outcome, run=record, status=status, now=now)
    with _locked_state(config.state.dir) as state:
        previous = state.data.get("condition")
        stale_alerted = bool(state.data.get("stale_episode_alerted"))
        recovering = outcome == "success" and (previous in PROBLEMS or stale_alerted)
        for index, notifier_config in enumerate(config.notifiers):
            key = notifier_key(index, notifier_config)
            wanted = notifier_config.on
            notifier = None
            if outcome in PROBLEMS:
                if outcome not in wanted:
                    continue
                notifier = _build(key, notifier_config)
                if notifier is None:
                    continue
                last = state.sent(key, outcome)
                last_at = parse_time(last.get("at"))
                due = (isinstance(notifier, RunMonitor) or previous != outcome or last_at is None
                       or not last.get("ok") or now - last_at >= notifier_config.repeat_after)
                if not due:
                    log.info("notify_suppressed", notifier=key, notify_event=outcome,
                             last_sent=last.get("at"), repeat_after=str(notifier_config.repeat_after))
                    continue
                ok = _deliver(key, notifier_config, notifier, base)
                state.record(key, outcome, ok, now)
            else:
                name = "recovered" if recovering and "recovered" in wanted else "success"
                if name not in wanted:
                    continue
                notifier = _build(key, notifier_config)
                if notifier is None:
                    continue
                if isinstance(notifier, RunMonitor):
                    name = "success"
                ok = _deliver(key, notifier_config, notifier, _with_event(base, name))
                state.record(key, name, ok, now)
        if outcome != previous:
            state.data["condition_since"] = iso(now)
        state.data["condition"] = outcome
        if outcome == "success" or outcome == "partial":
            state.data["stale_episode_alerted"] = False
            state.data["stale_reference"] = record.get("finished")


def run_started(config: Config, run_id: str) -> None:
    """Ping every run monitor (healthchecks `/start`) that a run began. Never raises."""
    try:
        for index, notifier_config in enumerate(config.notifiers):
            if notifier_config.type not in NOTIFIER_TYPES:
                continue
            key = notifier_key(index, notifier_config)
            notifier = _build(key, notifier_config)
            if isinstance(notifier, RunMonitor):
                _call(key, notifier_config, "start", lambda m=notifier: m.run_started(run_id))
    except Exception as exc:  # noqa: BLE001 - alerting never fails a backup
        log.error("notify_failed", error=redact(_describe(exc)))


def check_stale(config: Config, status: dict[str, Any], now: datetime | None = None) -> None:
    """Fire `stale` once per episode when no success for `state.stale_after`. Never raises.

    Called by the daemon once a minute, whether runs happen or not. The episode is counted from
    the last success in `status`; with none ever, from the first time this was called.
    """
    try:
        _check_stale(config, status, now or datetime.now(UTC))
    except Exception as exc:  # noqa: BLE001 - a monitor must never crash the daemon
        log.error("notify_failed", notify_event="stale", error=redact(_describe(exc)))


def _check_stale(config: Config, status: dict[str, Any], now: datetime) -> None:
    stale_after = config.state.stale_after
    last_success = (status.get("last_success") or {}).get("finished")
    with _locked_state(config.state.dir) as state:
        watching_since = state.data.setdefault("watching_since", iso(now))
        reference_text = str(last_success or watching_since)
        reference = parse_time(reference_text)
        if reference is None or now - reference <= stale_after:
            return
        episode = reference_text
        age_hours = round((now - reference).total_seconds() / 3600, 1)
        event = build_event("stale", status=status, now=now, details={
            "age_hours": age_hours,
            "stale_after": _format_duration(stale_after),
            "last_success": last_success,
            "last_run": (status.get("last_run") or {}).get("id"),
            "last_outcome": (status.get("last_run") or {}).get("outcome"),
        })
        any_sent = False
        for index, notifier_config in enumerate(config.notifiers):
            if "stale" not in notifier_config.on:
                continue
            key = notifier_key(index, notifier_config)
            last = state.sent(key, "stale")
            last_at = parse_time(last.get("at"))
            if last.get("episode") == episode and last_at is not None and (
                    last.get("ok") or now - last_at < STALE_RETRY_AFTER):
                continue
            notifier = _build(key, notifier_config)
            if notifier is None:
                continue
            ok = _deliver(key, notifier_config, notifier, event)
            state.record(key, "stale", ok, now, episode=episode)
            any_sent = True
        if any_sent or not state.data.get("stale_episode_alerted"):
            log.warning("backups_stale", age_hours=age_hours, stale_after=_format_duration(stale_after))
        state.data["stale_episode_alerted"] = True
        state.data["stale_reference"] = episode


def _format_duration(value: timedelta) -> str:
    from backupd.config import format_duration

    return format_duration(value)


def send_event(config: Config, event: dict[str, Any]) -> None:
    """Send an event from another command (`restore`, `verify_failed`, ...) to every notifier
    whose `on` lists it. `event` needs at least `event`; see `events.complete_event`. Never raises."""
    try:
        complete = complete_event(event)
        for index, notifier_config in enumerate(config.notifiers):
            if complete["event"] not in notifier_config.on:
                continue
            key = notifier_key(index, notifier_config)
            notifier = _build(key, notifier_config)
            if notifier is not None:
                _deliver(key, notifier_config, notifier, complete)
    except Exception as exc:  # noqa: BLE001 - alerting never fails the command
        log.error("notify_failed", error=redact(_describe(exc)))


def send_test(config: Config) -> list[tuple[str, bool, str]]:
    """Send a test message through every notifier, ignoring `on`; returns (name, ok, detail) each."""
    results: list[tuple[str, bool, str]] = []
    event = build_event("test", status={})
    for index, notifier_config in enumerate(config.notifiers):
        key = notifier_key(index, notifier_config)
        factory = NOTIFIER_TYPES.get(notifier_config.type)
        if factory is None:
            results.append((key, False, f"type {notifier_config.type!r} is not supported"))
            continue
        try:
            notifier = factory(notifier_config)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            results.append((key, False, redact(_describe(exc))))
            continue
        ok, detail = _call(key, notifier_config, "test", lambda n=notifier: n.send(event))
        results.append((key, ok, detail))
    return results
