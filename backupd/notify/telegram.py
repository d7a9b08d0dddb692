"""Telegram through the Bot API with python-telegram-bot: an HTML message to `chat_id`.

Requests go to `<api_url>/bot<token>/sendMessage` (form-encoded). A 429 (`RetryAfter`) is honoured
once when the wait fits in the notifier's `timeout`. The token is part of every URL, so neither
PTB's nor httpx's loggers are allowed to print requests (see `backupd.notify.dispatch`), and every
error text passes `redact`.
"""

from __future__ import annotations

import asyncio
import html
from datetime import timedelta
from typing import Any

from telegram import Bot, LinkPreviewOptions
from telegram.error import RetryAfter, TelegramError
from telegram.request import HTTPXRequest

from backupd.notify import Event
from backupd.notify.events import destination_lines, detail_lines, icon, run_lines
from backupd.redact import redact

MAX_TEXT = 4096  # Telegram's limit on one message


class TelegramDeliveryError(Exception):
    """A redacted Bot API failure (PTB's own exception may quote the token)."""


def render_html(event: Event) -> str:
    """The event as Telegram HTML: bold title, the run's facts, destinations, next run, host."""
    def esc(text: Any) -> str:
        return html.escape(str(text), quote=False)

    lines = [f"{icon(event)} <b>{esc(event['title'])}</b>".strip(), esc(event["summary"])]
    run = event.get("run")
    if run:
        lines.append("")
        lines += [esc(line) for line in run_lines(run)]
        destinations = destination_lines(run)
        if destinations:
            lines.append("<b>Destinations</b>")
            lines += [f"\u2022 {esc(line)}" for line in destinations]
    if event["event"] != "stale":
        details = detail_lines(event)
        if details:
            lines.append("")
            lines += [esc(line) for line in details]
    lines.append("")
    last = event.get("last_success")
    if last and event["event"] in ("failure", "stale"):
        lines.append(f"Last success: <code>{esc(last.get('id'))}</code> at {esc(last.get('finished'))}")
    lines.append(f"Next run: {esc(event.get('next_run') or 'not scheduled')}")
    lines.append(f"Host: <code>{esc(event['host'])}</code>")
    text = "\n".join(lines)
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 20].rsplit("\n", 1)[0] + "\n\u2026 (truncated)"
    return text


class TelegramNotifier:
    """Sends events to one Telegram chat."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.name = "telegram"
        self.timeout = float(config.timeout.total_seconds())

    def send(self, event: Event) -> None:
        """One sendMessage (plus one retry after a 429 that fits the bound); raises on failure."""
        try:
            asyncio.run(self._send(render_html(event)))
        except TelegramError as exc:
            raise TelegramDeliveryError(redact(f"{type(exc).__name__}: {exc.message}")) from None

    async def _send(self, text: str) -> None:
        request = HTTPXRequest(connection_pool_size=2, read_timeout=self.timeout, write_timeout=self.timeout,
                               connect_timeout=self.timeout, pool_timeout=self.timeout)
        bot = Bot(self.config.bot_token.get_secret_value(), base_url=f"{self.config.api_url.rstrip('/')}/bot",
                  request=request, get_updates_request=request)
        await request.initialize()  # not bot.initialize(): that calls getMe and quotes the token on failure
        try:
            for attempt in (1, 2):
                try:
                    await bot.send_message(
                        chat_id=self.config.chat_id, text=text, parse_mode="HTML",
                        link_preview_options=LinkPreviewOptions(is_disabled=True),
                    )
                    return
                except RetryAfter as exc:
                    wait = _seconds(getattr(exc, "_retry_after", None) or exc.retry_after)
                    if attempt == 2 or wait > self.timeout:
                        raise
                    await asyncio.sleep(wait)
        finally:
            await request.shutdown()


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)
