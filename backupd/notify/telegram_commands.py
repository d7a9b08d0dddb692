"""Telegram commands for the daemon (`commands = true`): `/status` and `/backup` from `chat_id` only.

A thread long-polls the Bot API's getUpdates with python-telegram-bot. A message from any other
chat is ignored (no answer) and logged as `telegram_command_ignored`; a command older than
`MAX_AGE` (sent while the daemon was down) is not acted on. `/backup` only asks the daemon's main
loop for a run: the run itself happens there, under the usual lock.
"""

from __future__ import annotations

import asyncio
import html
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from telegram import Bot, LinkPreviewOptions, Update
from telegram.error import TelegramError
from telegram.request import HTTPXRequest

from backupd.redact import redact
from backupd.status import health

log = structlog.get_logger("backupd.telegram")

POLL_SECONDS = 20
MAX_AGE = timedelta(minutes=5)
BACKOFF_MAX = 60.0


def status_message(status: dict[str, Any], stale_after: timedelta, next_run: str | None) -> str:
    """The answer to /status, in Telegram HTML: health, last run, last success, next run."""
    def esc(value: Any) -> str:
        return html.escape(str(value), quote=False)

    state = health(status, stale_after)
    last = status.get("last_run") or {}
    success = status.get("last_success") or {}
    lines = [f"<b>backupd: {esc(state['health'])}</b>"]
    if last:
        lines.append(f"Last run: <code>{esc(last.get('id'))}</code> {esc(last.get('outcome'))}")
        if last.get("error"):
            lines.append(f"Error: {esc(last['error'])}")
        for name, result in (last.get("destinations") or {}).items():
            lines.append(f"\u2022 {esc(name)}: " + ("ok" if result.get("ok") else f"FAILED: {esc(result.get('error'))}"))
    else:
        lines.append("No run yet")
    if success:
        lines.append(f"Last success: <code>{esc(success.get('id'))}</code> ({esc(state['age_hours'])} h ago)")
    lines.append(f"Next run: {esc(next_run or status.get('next_run') or 'not scheduled')}")
    return redact("\n".join(lines))


class TelegramCommands:
    """Answers /status and /backup from one chat, in a daemon thread, until `stop()`."""

    def __init__(self, config: Any, status_text: Callable[[], str], request_backup: Callable[[], bool]) -> None:
        self.config = config
        self.status_text = status_text
        self.request_backup = request_backup
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telegram-commands", daemon=True)
        self._started = datetime.now(UTC)

    def start(self) -> None:
        """Begin polling."""
        self._thread.start()
        log.info("telegram_commands_started", chat_id=self.config.chat_id)

    def stop(self) -> None:
        """Stop polling (the thread ends after its current long poll at the latest)."""
        self._stop.set()

    def _run(self) -> None:
        try:
            asyncio.run(self._poll())
        except Exception as exc:  # noqa: BLE001 - commands are a convenience; the daemon goes on
            log.error("telegram_commands_crashed", error=redact(f"{type(exc).__name__}: {exc}"))

    async def _poll(self) -> None:
        timeout = float(self.config.timeout.total_seconds())
        request = HTTPXRequest(connection_pool_size=2, read_timeout=POLL_SECONDS + timeout,
                               write_timeout=timeout, connect_timeout=timeout, pool_timeout=timeout)
        bot = Bot(self.config.bot_token.get_secret_value(), base_url=f"{self.config.api_url.rstrip('/')}/bot",
                  request=request, get_updates_request=request)
        await request.initialize()
        offset: int | None = None
        backoff = 1.0
        try:
            while not self._stop.is_set():
                try:
                    updates = await bot.get_updates(offset=offset, timeout=POLL_SECONDS,
                                                    allowed_updates=["message"])
                    backoff = 1.0
                except TelegramError as exc:
                    log.warning("telegram_poll_failed", error=redact(f"{type(exc).__name__}: {exc.message}"),
                                retry_in_s=backoff)
                    await asyncio.to_thread(self._stop.wait, backoff)
                    backoff = min(BACKOFF_MAX, backoff * 2)
                    continue
                for update in updates:
                    offset = update.update_id + 1
                    if self._stop.is_set():
                        break
                    await self._handle(bot, update)
        finally:
            await request.shutdown()

    async def _handle(self, bot: Bot, update: Update) -> None:
        message = update.effective_message
        if message is None or not message.text:
            return
        chat_id = str(message.chat.id)
        command = message.text.strip().split()[0].split("@")[0].lower() if message.text.strip() else ""
        if chat_id != self.config.chat_id:
            log.warning("telegram_command_ignored", chat_id=chat_id, command=command[:32],
                        reason="not the configured chat")
            return
        if message.date is not None and message.date < self._started - MAX_AGE:
            log.info("telegram_command_ignored", chat_id=chat_id, command=command[:32],
                     reason="sent while the daemon was not running")
            return
        log.info("telegram_command", chat_id=chat_id, command=command[:32])
        if command == "/status":
            text = self.status_text()
        elif command == "/backup":
            text = ("Backup requested: it starts now; the result follows as usual."
                    if self.request_backup() else "A backup is already running or queued.")
        else:
            text = "Commands: /status, /backup"
        try:
            await bot.send_message(chat_id=self.config.chat_id, text=text, parse_mode="HTML",
                                   link_preview_options=LinkPreviewOptions(is_disabled=True))
        except TelegramError as exc:
            log.warning("notify_failed", notifier="telegram-commands",
                        error=redact(f"{type(exc).__name__}: {exc.message}"))

