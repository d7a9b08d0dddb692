"""Telegram commands for the daemon (`commands = true`): `/status` and `/backup` in `chat_id`.

A thread long-polls the Bot API's getUpdates with python-telegram-bot. A command is acted on only
when all of these hold (else it gets no answer and is logged as `telegram_command_ignored` with
the reason): it is addressed to this bot (`/backup@OtherBot` is another bot's; the username
comes from getMe before the first poll), it comes from `chat_id`, its sender is a user in
`allowed_user_ids` (a message sent on behalf of a channel or group, `sender_chat`, has no user and
is refused), and it is not older than `MAX_AGE` (sent while the daemon was down). `/backup` is
accepted at most once per `commands_min_interval`; it only asks the daemon's main loop for a run:
the run happens there, under the usual lock, and retention treats its backup as command-made
(backupd.retention: it never pushes another backup out).

The daemon builds a new poller on SIGHUP when the notifier changed (token, chat, users); the
new one takes over the old one's update offset and `/backup` clock when the token is the same,
so no update is handled twice and a reload does not reset the interval.
"""

from __future__ import annotations

import asyncio
import html
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from telegram import Bot, LinkPreviewOptions, Message, Update
from telegram.error import TelegramError
from telegram.request import HTTPXRequest

from backupd.config import format_duration
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
    """Answers /status and /backup in one chat, in a daemon thread, until `stop()`."""

    def __init__(self, config: Any, status_text: Callable[[], str], request_backup: Callable[[], bool],
                 previous: TelegramCommands | None = None) -> None:
        self.config = config
        self.status_text = status_text
        self.request_backup = request_backup
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telegram-commands", daemon=True)
        self._started = datetime.now(UTC)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.username: str | None = None
        self.offset: int | None = None
        self.last_backup: float | None = None  # time.monotonic() of the last accepted /backup
        if previous is not None and previous.token == self.token:
            self.offset, self.last_backup = previous.offset, previous.last_backup

    @property
    def token(self) -> str:
        """The bot token this poller uses."""
        return str(self.config.bot_token.get_secret_value())

    def start(self) -> None:
        """Begin polling."""
        self._thread.start()
        if not self.config.allowed_user_ids:
            log.warning("telegram_commands_unanswerable", chat_id=self.config.chat_id,
                        reason="allowed_user_ids is empty: every command is refused")
        log.info("telegram_commands_started", chat_id=self.config.chat_id,
                 allowed_user_ids=list(self.config.allowed_user_ids))

    def stop(self, wait: float = 0.0) -> None:
        """Stop polling: the long poll in flight is cancelled; waits up to `wait` seconds for the
        thread to end (a successor must not poll the same bot while this one still does)."""
        self._stop.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass  # the loop has already ended
        if wait and self._thread.is_alive():
            self._thread.join(wait)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # noqa: BLE001 - commands are a convenience; the daemon goes on
            log.error("telegram_commands_crashed", error=redact(f"{type(exc).__name__}: {exc}"))

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        if self._stop.is_set():
            return
        try:
            await self._poll()
        except asyncio.CancelledError:
            log.info("telegram_commands_stopped", chat_id=self.config.chat_id)

    async def _poll(self) -> None:
        timeout = float(self.config.timeout.total_seconds())
        request = HTTPXRequest(connection_pool_size=2, read_timeout=POLL_SECONDS + timeout,
                               write_timeout=timeout, connect_timeout=timeout, pool_timeout=timeout)
        bot = Bot(self.token, base_url=f"{self.config.api_url.rstrip('/')}/bot",
                  request=request, get_updates_request=request)
        await request.initialize()
        backoff = 1.0
        try:
            while not self._stop.is_set():
                try:
                    if self.username is None:
                        # commands addressed to another bot are refused by name: know our own first
                        self.username = (await bot.get_me()).username or ""
                    updates = await bot.get_updates(offset=self.offset, timeout=POLL_SECONDS,
                                                    allowed_updates=["message"])
                    backoff = 1.0
                except TelegramError as exc:
                    log.warning("telegram_poll_failed", error=redact(f"{type(exc).__name__}: {exc.message}"),
                                retry_in_s=backoff)
                    await asyncio.to_thread(self._stop.wait, backoff)
                    backoff = min(BACKOFF_MAX, backoff * 2)
                    continue
                for update in updates:
                    if self._stop.is_set():
                        break
                    self.offset = update.update_id + 1
                    await self._handle(bot, update)
        finally:
            await request.shutdown()

    def _refusal(self, message: Message, chat_id: str, addressed: str) -> str | None:
        """Why a command is not acted on, or None when it is."""
        if addressed and addressed.lower() != (self.username or "").lower():
            return "addressed to another bot"
        if chat_id != self.config.chat_id:
            return "not the configured chat"
        if message.sender_chat is not None:
            return "sent on behalf of a chat, not by a user"
        user = message.from_user
        if user is None or user.is_bot or user.id not in self.config.allowed_user_ids:
            return "sender not in allowed_user_ids"
        if message.date is not None and message.date < self._started - MAX_AGE:
            return "sent while the daemon was not running"
        return None

    def _backup_text(self) -> str:
        interval = float(self.config.commands_min_interval.total_seconds())
        now = time.monotonic()
        if self.last_backup is not None and now - self.last_backup < interval:
            wait_minutes = max(1, math.ceil((interval - (now - self.last_backup)) / 60))
            log.warning("telegram_backup_refused", reason="commands_min_interval", retry_in_min=wait_minutes)
            return (f"A backup was requested less than {format_duration(self.config.commands_min_interval)} ago: "
                    f"try again in {wait_minutes} min.")
        if not self.request_backup():
            return "A backup is already running or queued."
        self.last_backup = now
        return "Backup requested: it starts now; the result follows as usual."

    async def _handle(self, bot: Bot, update: Update) -> None:
        message = update.effective_message
        if message is None or not message.text or not message.text.strip().startswith("/"):
            return
        chat_id = str(message.chat.id)
        command, _, addressed = message.text.strip().split()[0].partition("@")
        command = command.lower()
        sender = message.from_user.id if message.from_user else None
        refusal = self._refusal(message, chat_id, addressed)
        if refusal is not None:
            log.warning("telegram_command_ignored", chat_id=chat_id, user_id=sender,
                        sender_chat=message.sender_chat.id if message.sender_chat else None,
                        command=message.text.strip().split()[0][:64], reason=refusal)
            return
        log.info("telegram_command", chat_id=chat_id, user_id=sender, command=command[:32])
        if command == "/status":
            text = self.status_text()
        elif command == "/backup":
            text = self._backup_text()
        else:
            text = "Commands: /status, /backup"
        try:
            await bot.send_message(chat_id=self.config.chat_id, text=text, parse_mode="HTML",
                                   link_preview_options=LinkPreviewOptions(is_disabled=True))
        except TelegramError as exc:
            log.warning("notify_failed", notifier="telegram-commands",
                        error=redact(f"{type(exc).__name__}: {exc.message}"))
