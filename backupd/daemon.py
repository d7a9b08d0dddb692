"""`backupd run`: the resident daemon. Schedule, catch-up, signals, sd_notify, health.

- The `schedule` library plans runs at the `at` times (in `timezone`) or every `every`. schedule
  neither catches a job's exception nor remembers missed runs: the daemon does both, from
  status.json. Only a successful (or partial) run moves `last_success`; a failed run is simply
  tried again at the next slot.
- Catch-up (like a systemd timer's `Persistent=true`): on start, when the last slot before now
  passed without a successful run (or no run ever succeeded), one run starts at once.
- SIGTERM/SIGINT: a run in progress is abandoned (Abandoned raised in the main thread, children
  terminated, the snapshot query cancelled, staging removed, nothing published without its
  manifest, no success recorded); the process exits 0. SIGHUP: the config is read again; a valid
  one applies from the next run, an invalid one is logged and the old one stays.
- sd_notify: READY=1 once the config is loaded, STATUS= (next run or current phase), WATCHDOG=1
  from a thread (so a long backup is not mistaken for a hang, up to `run_bound`; a drill up to
  `drill_bound`: past those the pings stop), RELOADING=1/READY=1, STOPPING=1.
- Once a minute: health (stale after `stale_after`) into status.json and the metrics file, and
  the stale alert check (from the supervisor thread while a run keeps the main loop busy).
- `[verify] schedule` drills run in a thread of their own: the schedule goes on meanwhile.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from datetime import UTC, datetime, time as day_time, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

import schedule
import structlog

from backupd.changes import ChangeWatcher
from backupd.config import Config, ScheduleConfig, format_duration, load_config
from backupd.errors import Abandoned, BackupdError, ConfigError, LockHeld
from backupd.lock import RunLock
from backupd.manifest import id_time, iso
from backupd.metrics import HealthServer, write_metrics
from backupd.runner import Runner
from backupd.sdnotify import Notifier, WatchdogThread
from backupd.status import StatusStore, health, parse_time
from backupd.statuspage import render_page

log = structlog.get_logger("backupd.daemon")

DAEMON_LOCK_NAME = "daemon.lock"
TICK_SECONDS = 1.0  # longest sleep of the main loop: its heartbeat for the watchdog
HOUSEKEEPING_SECONDS = 60.0  # stale check, status.json health, metrics
STOP_DEADLINE_SECONDS = 9.0  # a stop that takes longer is forced (systemd's TimeoutStopSec is above)
DRILL_STOP_SECONDS = 6.0  # what a running drill gets to clean up on stop (within the deadline above)


def run_bound(config: Config) -> float:
    """Seconds a backup run may last before the watchdog takes it for hung: `stale_after`
    (a run that long cannot give a timely backup anyway, and the stale alert fires meanwhile)."""
    return config.state.stale_after.total_seconds()


def drill_bound(config: Config) -> float:
    """Seconds a drill may last before the watchdog takes it for hung: four restore_timeouts (its
    two psql restores are bounded by one each; the JSON half and the comparisons get the rest)."""
    return 4 * config.verify.restore_timeout.total_seconds()
COMMANDS_STOP_SECONDS = 5.0  # a reload waits this long for the old Telegram poller to end


# -- slots ----------------------------------------------------------------------------------------


def _daily_slots(config: ScheduleConfig, now: datetime, days: range) -> list[datetime]:
    zone = ZoneInfo(config.timezone)
    local_today = now.astimezone(zone).date()
    slots = []
    for offset in days:
        day = local_today + timedelta(days=offset)
        for text in config.at:
            hour, minute = (int(part) for part in text.split(":"))
            slots.append(datetime.combine(day, day_time(hour, minute), tzinfo=zone).astimezone(UTC))
    return sorted(slots)


def previous_slot(config: ScheduleConfig, now: datetime) -> datetime | None:
    """The latest `at` slot at or before `now` (UTC); None for an `every` schedule."""
    if config.every:
        return None
    passed = [slot for slot in _daily_slots(config, now, range(-2, 1)) if slot <= now]
    return passed[-1] if passed else None


def next_slot(config: ScheduleConfig, now: datetime) -> datetime:
    """The first slot strictly after `now` (for `every`: now + every)."""
    if config.every:
        return now + config.every
    return next(slot for slot in _daily_slots(config, now, range(0, 3)) if slot > now)


def _last_success_start(status: dict[str, Any]) -> datetime | None:
    success = status.get("last_success") or {}
    try:
        return id_time(str(success.get("id") or ""))
    except ValueError:
        return parse_time(success.get("finished"))


def catch_up_reason(config: ScheduleConfig, status: dict[str, Any], now: datetime) -> str | None:
    """Why a run is due at once on start (a missed slot), or None when the schedule is on track."""
    last = _last_success_start(status)
    if last is None:
        return "no successful backup yet"
    if config.every:
        if now - last >= config.every:
            return f"last successful backup {iso(last)} is older than every = {format_duration(config.every)}"
        return None
    slot = previous_slot(config, now)
    if slot is not None and last < slot:
        return f"the slot at {iso(slot)} passed without a successful backup (last {iso(last)})"
    return None


def describe(config: ScheduleConfig) -> str:
    """The schedule in words, for logs."""
    if config.every:
        return f"every {format_duration(config.every)}"
    return f"daily at {', '.join(config.at)} {config.timezone}"


# -- the daemon -----------------------------------------------------------------------------------


class Daemon:
    """One daemon for one config file; `run()` returns the exit code."""

    def __init__(self, config_file: Path, config: Config, notifier: Notifier | None = None) -> None:
        self.config_file = config_file
        self.config = config
        self.notifier = notifier or Notifier.from_environment()
        self.scheduler = schedule.Scheduler()
        self.http: HealthServer | None = None
        self._runner: Runner | None = None
        self._in_run = False
        self._stop_signal: str | None = None
        self._reload_requested = False
        self._heartbeat = time.monotonic()
        self._phase = ""
        self._last_health: str | None = None
        self._wake_read, self._wake_write = socket.socketpair()
        self._done = threading.Event()
        self._stop_lock = threading.Lock()  # never taken by a signal handler
        self._stop_announced = False
        self._backup_requested = threading.Event()  # /backup from Telegram, served by the main loop
        self._commands: list[Any] = []
        self._changes = ChangeWatcher()
        self._run_started: float | None = None
        self._drill_started: float | None = None
        self._drill_thread: threading.Thread | None = None

    # -- signals (handlers only set flags; the one exception is Abandoned, raised once) ----------

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        first = self._stop_signal is None
        if first:
            self._stop_signal = signal.Signals(signum).name
        if first and self._in_run:
            # unwinds the run in the main thread: the runner removes staging, records nothing;
            # the supervisor thread terminates the children and cancels the snapshot's query
            raise Abandoned(f"stopped by {signal.Signals(signum).name}")

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload_requested = True

    def _install_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        self._wake_write.setblocking(False)
        # a signal writes a byte here, which ends the main loop's select() at once
        signal.set_wakeup_fd(self._wake_write.fileno(), warn_on_full_buffer=False)

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)

    # -- the main loop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT. Raises LockHeld (exit 4) when another daemon runs here."""
        state_dir = self.config.state.dir
        daemon_lock = RunLock(state_dir, DAEMON_LOCK_NAME)
        try:
            daemon_lock.acquire(wait=False)
        except LockHeld:
            holder = _lock_holder(state_dir / DAEMON_LOCK_NAME)
            raise LockHeld(
                f"another backupd daemon is already running on state dir {state_dir}"
                + (f" (pid {holder})" if holder else ""),
                "stop it first, or give this one its own [state] dir",
            ) from None
        supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        watchdog: WatchdogThread | None = None
        try:
            self._start_http()
            self._start_commands()
            self._install_signals()
            supervisor.start()
            if self.notifier.watchdog_usec:
                watchdog = WatchdogThread(self.notifier, self._alive)
                watchdog.start()
            self._plan()
            log.info("daemon_started", pid=os.getpid(), config=str(self.config_file), state_dir=str(state_dir),
                     schedule=describe(self.config.schedule), next_run=self._next_run_text(),
                     watchdog_s=(self.notifier.watchdog_usec or 0) / 1e6 or None,
                     notify_socket=self.notifier.enabled or None)
            self._housekeeping(force=True)
            self.notifier.ready(self._idle_status())
            try:
                self._catch_up()
                self._loop()
            except Abandoned as exc:
                log.warning("backup_abandoned_on_stop", reason=str(exc))
            self._announce_stop()
            return 0
        finally:
            self._stop_drill()
            self._done.set()
            for commands in self._commands:
                commands.stop()
            if watchdog:
                watchdog.stop()
            if self.http:
                self.http.stop()
            self._restore_signals()
            daemon_lock.release()
            self.notifier.close()
            log.info("daemon_stopped")

    def _loop(self) -> None:
        last_housekeeping = time.monotonic()
        while self._stop_signal is None:
            self._heartbeat = time.monotonic()
            if self._reload_requested:
                self._reload()
            planned = self.scheduler.next_run
            self.scheduler.run_pending()
            if self.scheduler.next_run != planned:
                self._after_run()
            if self._backup_requested.is_set():
                self.run_backup("telegram")
                self._backup_requested.clear()
                self._after_run()
            if self._changes.due(self.config):  # [schedule] on_changes: an extra backup
                self.run_backup("changes")
                self._after_run()
            if time.monotonic() - last_housekeeping >= HOUSEKEEPING_SECONDS:
                last_housekeeping = time.monotonic()
                self._housekeeping()
                self._drills(after_backup=False)
            idle = self.scheduler.idle_seconds
            timeout = TICK_SECONDS if idle is None else max(0.0, min(idle, TICK_SECONDS))
            readable, _, _ = select.select([self._wake_read], [], [], timeout)
            if readable:
                try:
                    self._wake_read.recv(512)
                except BlockingIOError:
                    pass

    def _alive(self) -> bool:
        """For the watchdog: the main loop turned recently, or a run keeps it busy, but neither a
        run nor a drill for longer than its bound (`run_bound`, `drill_bound`): a hung one stops
        the pings, and systemd restarts the service."""
        now = time.monotonic()
        drill_started = self._drill_started
        if drill_started is not None and now - drill_started > drill_bound(self.config):
            return False
        run_started = self._run_started
        if self._in_run and run_started is not None:
            return now - run_started <= run_bound(self.config)
        limit = max(10.0, 2 * (self.notifier.watchdog_usec or 0) / 1e6)
        return time.monotonic() - self._heartbeat < limit

    def _announce_stop(self) -> None:
        """Log the stop and send STOPPING=1, once (from the supervisor or the main thread)."""
        with self._stop_lock:
            if self._stop_announced:
                return
            self._stop_announced = True
        log.info("daemon_stopping", signal=self._stop_signal, abandoning_run=self._in_run)
        self.notifier.stopping()

    def _supervise(self) -> None:
        """A stop request seen from outside the main thread: STOPPING=1, children terminated at
        once, and a forced exit if the clean stop overruns its deadline."""
        last_stale_check = time.monotonic()
        while not self._done.wait(0.1):
            if self._stop_signal is None:
                every = min(HOUSEKEEPING_SECONDS, max(1.0, self.config.state.stale_after.total_seconds() / 4))
                if self._in_run and time.monotonic() - last_stale_check >= every:
                    # the main loop is inside a run: the stale alert must not wait for it to end
                    last_stale_check = time.monotonic()
                    self._check_stale(self.config, StatusStore(self.config.state.dir).load())
                continue
            self._announce_stop()
            runner = self._runner
            if runner is not None:
                runner.abort_producers()
            if self._done.wait(STOP_DEADLINE_SECONDS):
                return
            log.error("stop_forced", reason=f"not stopped within {STOP_DEADLINE_SECONDS:.0f}s")
            os._exit(1)

    # -- runs ------------------------------------------------------------------------------------

    def _plan(self) -> None:
        """(Re)create the scheduler's jobs from the current config."""
        self.scheduler.clear()
        config = self.config.schedule
        if config.every:
            seconds = max(1, round(config.every.total_seconds()))
            self.scheduler.every(seconds).seconds.do(self._scheduled_run)
        else:
            for at in config.at:
                self.scheduler.every().day.at(at, config.timezone).do(self._scheduled_run)

    def _next_run(self) -> datetime | None:
        planned = self.scheduler.next_run
        # schedule works in naive local time
        return planned.astimezone(UTC).replace(microsecond=0) if planned else None

    def _next_run_text(self) -> str:
        planned = self._next_run()
        return iso(planned) if planned else "none"

    def _scheduled_run(self) -> None:
        self.run_backup("schedule")

    def _catch_up(self) -> None:
        if not self.config.schedule.catch_up:
            log.info("catch_up_disabled", next_run=self._next_run_text())
            return
        status = StatusStore(self.config.state.dir).load()
        reason = catch_up_reason(self.config.schedule, status, datetime.now(UTC))
        if reason is None:
            log.info("catch_up_not_needed", last_success=(status.get("last_success") or {}).get("id"),
                     next_run=self._next_run_text())
            return
        log.info("catch_up_started", reason=reason)
        self.run_backup("catch-up")
        if self.config.schedule.every:
            self._plan()  # the interval counts from the catch-up run, not from the start
        self._after_run()

    def run_backup(self, trigger: str) -> None:
        """One run through the Runner, waiting for the lock. Every failure is logged and swallowed
        (the next slot tries again); only Abandoned (a stop signal) goes through."""
        config = self.config  # a reload during the run applies from the next one
        runner = Runner(config, on_phase=self._on_phase)
        self._runner = runner
        self._phase = "waiting for the lock"
        self.notifier.status(f"Backing up ({trigger}): waiting for the lock")
        try:
            self._in_run = True
            self._run_started = time.monotonic()
            if self._stop_signal is not None:
                raise Abandoned(f"stopped by {self._stop_signal}")
            result = runner.run(trigger=trigger, wait_for_lock=True,
                                next_run=next_slot(config.schedule, datetime.now(UTC)).replace(microsecond=0))
            if result.outcome != "failed":
                self._drills(after_backup=True)
        except Abandoned:
            raise
        except BackupdError as exc:
            log.error("backup_not_run", trigger=trigger, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - schedule does not catch; the daemon must go on
            log.exception("backup_job_crashed", trigger=trigger, error=f"{type(exc).__name__}: {exc}")
        finally:
            self._in_run = False
            self._run_started = None
            self._runner = None
            self._phase = ""
            self._heartbeat = time.monotonic()

    def _drills(self, after_backup: bool) -> None:
        """`[verify] schedule`: restore drills of the newest backup at each destination, after a
        backup or daily/weekly (see `backupd.verify.run_scheduled_drills`), in a thread of their
        own: the main loop keeps the schedule, the housekeeping and the watchdog meanwhile. One
        drill at a time. Never raises."""
        if not self.config.verify.schedule or self._stop_signal is not None:
            return
        from backupd.verify import drill_due

        thread = self._drill_thread
        if thread is not None and thread.is_alive():
            log.info("drill_skipped", reason="the previous drill is still running")
            return
        if not drill_due(self.config, datetime.now(UTC), after_backup=after_backup):
            return
        self._drill_started = time.monotonic()
        self._drill_thread = threading.Thread(target=self._drill, args=(self.config, after_backup), name="drill",
                                              daemon=True)
        self._drill_thread.start()

    def _drill(self, config: Config, after_backup: bool) -> None:
        from backupd.verify import run_scheduled_drills

        log.info("drill_started", after_backup=after_backup)
        try:
            run_scheduled_drills(config, after_backup=after_backup)
        except Exception as exc:  # noqa: BLE001 - a drill's crash must not stop the daemon
            log.exception("drill_crashed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._drill_started = None
            log.info("drill_finished")

    def _stop_drill(self) -> None:
        """On stop: a drill still running has its children (psql) terminated and gets a few
        seconds to drop its scratch databases and stop its throwaway server."""
        thread = self._drill_thread
        if thread is None or not thread.is_alive():
            return
        log.info("drill_stopping")
        from backupd import proc

        proc.terminate_all()
        thread.join(DRILL_STOP_SECONDS)
        if thread.is_alive():
            from backupd.localpg import stop_all

            stop_all()  # never leave a throwaway server behind

    def _on_phase(self, phase: str) -> None:
        self._phase = phase
        self._heartbeat = time.monotonic()
        self.notifier.status(f"Backing up: {phase}")

    def _after_run(self) -> None:
        self._housekeeping(force=True)
        self.notifier.status(self._idle_status())
        log.info("next_run_planned", next_run=self._next_run_text())

    def _idle_status(self) -> str:
        last = (StatusStore(self.config.state.dir).load().get("last_run") or {})
        tail = f"; last run {last.get('id')} {last.get('outcome')}" if last else "; no run yet"
        return f"Idle, next backup at {self._next_run_text()}{tail}"

    # -- health ----------------------------------------------------------------------------------

    def _status_source(self) -> tuple[dict[str, Any], timedelta]:
        return StatusStore(self.config.state.dir).load(), self.config.state.stale_after

    def _status_page(self) -> str:
        return render_page(self.config)

    def _housekeeping(self, force: bool = False) -> None:
        """Health into status.json and the metrics file; the stale alert check."""
        config = self.config
        store = StatusStore(config.state.dir, config.state.stale_after)
        try:
            before = _stat(store.status_path)
            status = store.load()
            state = health(status, config.state.stale_after)
            wanted = {"next_run": self._next_run_text() if self.scheduler.next_run else None, **state}
            if state["health"] != self._last_health:
                level = "info" if state["health"] in ("healthy", "never") else "warning"
                getattr(log, level)("health_changed", health=state["health"], age_hours=state["age_hours"],
                                    previous=self._last_health)
                self._last_health = state["health"]
            if force or any(status.get(k) != v for k, v in wanted.items() if k not in ("age_hours", "health_computed_at")):
                status.update(wanted)
                # a manual `backupd backup` may have written status.json meanwhile: never overwrite it
                if _stat(store.status_path) == before:
                    store.save(status)
            write_metrics(config.state.dir, config.state.stale_after, status, config.state.metrics_file)
        except BackupdError as exc:
            log.error("status_update_failed", error=str(exc))
            return
        self._check_stale(config, status)

    def _check_stale(self, config: Config, status: dict[str, Any]) -> None:
        from backupd.notify import dispatch

        check = getattr(dispatch, "check_stale", None)
        if check is None:
            return
        try:
            check(config, status)
        except Exception as exc:  # noqa: BLE001 - alerting never stops the daemon
            log.error("stale_check_failed", error=f"{type(exc).__name__}: {exc}")

    def _start_commands(self, previous: list[Any] | None = None) -> None:
        """Telegram `commands = true`: answer /status and /backup in the configured chat, from
        `allowed_user_ids` only. `previous`: the pollers a reload replaces (their state carries over)."""
        for notifier_config in self.config.notifiers:
            if notifier_config.type != "telegram" or not notifier_config.commands:
                continue
            from backupd.notify.telegram_commands import TelegramCommands, status_message

            def status_text() -> str:
                status = StatusStore(self.config.state.dir).load()
                return status_message(status, self.config.state.stale_after, self._next_run_text())

            token = notifier_config.bot_token.get_secret_value()
            before = next((c for c in previous or [] if c.token == token), None)
            commands = TelegramCommands(notifier_config, status_text, self.request_backup, previous=before)
            commands.start()
            self._commands.append(commands)

    def _restart_commands(self, old: Config) -> None:
        """A reload that changed a commands notifier (token, chat, users, interval) replaces the
        pollers: the old ones stop before the new ones poll the same bot."""
        def commanding(config: Config) -> list[Any]:
            return [n for n in config.notifiers if n.type == "telegram" and n.commands]

        if commanding(old) == commanding(self.config):
            return
        previous, self._commands = self._commands, []
        for commands in previous:
            commands.stop(wait=COMMANDS_STOP_SECONDS)
        self._start_commands(previous)
        log.info("telegram_commands_restarted", pollers=len(self._commands))

    def request_backup(self) -> bool:
        """Ask the main loop for one backup now (thread-safe); False when one runs or is queued."""
        if self._in_run or self._backup_requested.is_set():
            return False
        self._backup_requested.set()
        try:
            self._wake_write.send(b"\0")
        except OSError:
            pass  # the loop notices within a tick anyway
        return True

    def _start_http(self) -> None:
        listen = self.config.http.listen
        if not listen:
            return
        try:
            self.http = HealthServer(listen, self._status_source, self._status_page)
        except OSError as exc:
            raise BackupdError(f"cannot listen on {listen}: {exc.strerror or exc}",
                               "pick a free port in [http] listen") from None
        self.http.start()

    # -- reload ----------------------------------------------------------------------------------

    def _reload(self) -> None:
        self._reload_requested = False
        self.notifier.reloading()
        log.info("config_reload_started", config=str(self.config_file))
        try:
            new = load_config(self.config_file)
            if new.state.dir != self.config.state.dir:
                raise ConfigError(["state.dir: cannot change while the daemon runs (it holds its lock "
                                   "there): restart the service instead"])
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config_reload_failed", problem=problem, kept="the previous config")
            self.notifier.ready(self._idle_status())
            return
        old = self.config
        self.config = new
        if new.schedule != old.schedule:
            self._plan()
        if new.http.listen != old.http.listen:
            if self.http:
                self.http.stop()
                self.http = None
            try:
                self._start_http()
            except BackupdError as exc:
                log.error("http_restart_failed", error=str(exc))
        self._restart_commands(old)
        log.info("config_reloaded", schedule=describe(new.schedule), next_run=self._next_run_text(),
                 destinations=[d.name for d in new.destinations])
        self._housekeeping(force=True)
        self.notifier.ready(self._idle_status())


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def _lock_holder(path: Path) -> str:
    try:
        return path.read_text().strip()[:16]
    except OSError:
        return ""
