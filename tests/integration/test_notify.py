"""Alerts end to end: the real CLI backs up a real PostgreSQL and tells local stand-ins for Telegram,
Discord, a generic webhook receiver and healthchecks.io, each speaking that service's documented
protocol on 127.0.0.1. What is asserted is what an operator sees: the messages, their content, how
often they come, the backup's exit code, and that no secret leaks anywhere."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from backupd.notify.webhook import signature
from tests.conftest import run_cli

BOT_TOKEN = "123456789:AAEhBOweik6ad9r_QXMENQjcrGbqCr4K-XY"
CHAT_ID = "424242"
BOT_USERNAME = "BackupdTestBot"
DISCORD_PATH = "/api/webhooks/1122334455/Zx9-sEcReTdIsCoRdToKeN_abcdef"
HOOK_SECRET = "hmac-key-0f1e2d3c4b5a"
HOOK_PATH = "/hooks/backupd-7a7a7a7a"
HC_UUID = "5f3e1c2a-9b8d-4e7f-a6b5-c4d3e2f1a0b9"


@dataclass
class Captured:
    """One request a stand-in received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """A scripted answer: status, JSON or text body, headers, and how long to stall first."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class StandIn:
    """A small HTTP server on 127.0.0.1 (port 0) in a thread, recording every request. Scripted
    replies are used first, then the service's normal answer (`default_reply`)."""

    def __init__(self) -> None:
        self.requests: list[Captured] = []
        self.script: list[Reply] = []
        self.release = threading.Event()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                captured = Captured("POST", parts.path, parse_qs(parts.query),
                                    {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
                stand_in.requests.append(captured)
                reply = stand_in.script.pop(0) if stand_in.script else stand_in.default_reply(captured)
                if reply.delay:
                    stand_in.release.wait(reply.delay)
                body = reply.body
                data = json.dumps(body).encode() if isinstance(body, (dict, list)) else (body or b"")
                if isinstance(data, str):
                    data = data.encode()
                try:
                    self.send_response(reply.status)
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    if isinstance(body, (dict, list)):
                        self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def default_reply(self, request: Captured) -> Reply:
        return Reply(200, b"OK")

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class TelegramBotApi(StandIn):
    """Stands in for Telegram's Bot API (api.telegram.org): form-encoded bodies at
    /bot<token>/sendMessage, replies {"ok": true, "result": Message}; 401 for a wrong token;
    getUpdates returns the queued updates from `offset` on (after a short wait when none)."""

    def __init__(self) -> None:
        super().__init__()
        self.updates: list[dict[str, Any]] = []
        self.tokens = {BOT_TOKEN: BOT_USERNAME}  # token -> the bot's username (getMe)

    def push_message(self, chat_id: str, text: str, user_id: str | None = None,
                     sender_chat: str | None = None) -> None:
        """Queue a message as if a user sent it to the bot (in a private chat unless `user_id`
        differs from the chat; `sender_chat`: sent on behalf of that channel, as Telegram does)."""
        user = user_id or chat_id
        message: dict[str, Any] = {
            "message_id": len(self.updates) + 1, "date": int(time.time()), "text": text,
            "chat": {"id": int(chat_id), "type": "private" if user == chat_id else "supergroup"},
            "from": {"id": int(user), "is_bot": False, "first_name": "Operator"}}
        if sender_chat:
            # what Telegram sends for a message posted as a channel: a placeholder bot user
            message["from"] = {"id": 136817688, "is_bot": True, "first_name": "Channel", "username": "Channel_Bot"}
            message["sender_chat"] = {"id": int(sender_chat), "type": "channel", "title": "A channel"}
        self.updates.append({"update_id": 1000 + len(self.updates), "message": message})

    def default_reply(self, request: Captured) -> Reply:
        token = request.path.split("/")[1][len("bot"):] if request.path.startswith("/bot") else ""
        if token not in self.tokens:
            return Reply(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        form = request.form
        if request.path.endswith("/getMe"):
            return Reply(200, {"ok": True, "result": {"id": int(token.split(":")[0]), "is_bot": True,
                                                      "first_name": "backupd", "username": self.tokens[token]}})
        if request.path.endswith("/getUpdates"):
            offset = int(form.get("offset") or 0)
            pending = [u for u in self.updates if u["update_id"] >= offset]
            if not pending:
                self.release.wait(0.3)
            return Reply(200, {"ok": True, "result": pending})
        return Reply(200, {"ok": True, "result": {
            "message_id": len(self.requests), "date": int(time.time()),
            "chat": {"id": int(form.get("chat_id", "0")), "type": "private"}, "text": form.get("text", "")}})

    @staticmethod
    def too_many(retry_after: int) -> Reply:
        return Reply(429, {"ok": False, "error_code": 429, "description": f"Too Many Requests: retry after {retry_after}",
                           "parameters": {"retry_after": retry_after}})

    def messages(self) -> list[dict[str, str]]:
        return [r.form for r in self.requests if r.path.endswith("/sendMessage")]


class DiscordWebhooks(StandIn):
    """Stands in for Discord's webhook endpoint (discord.com/api/webhooks/<id>/<token>): JSON body
    with embeds, 204 No Content; 429 with a JSON `retry_after` in seconds."""

    def default_reply(self, request: Captured) -> Reply:
        if request.path != DISCORD_PATH:
            return Reply(404, {"message": "Unknown Webhook", "code": 10015})
        return Reply(204)


def _docs_webhook_check() -> str:
    """The Python that docs/alerts.md gives receivers to check a webhook's signature."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "alerts.md").read_text()
    section = text[text.index("### Generic webhook"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


class _Headers(dict[str, str]):
    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())


class WebhookReceiver(StandIn):
    """Stands in for an operator's own HTTPS endpoint receiving backupd's JSON events, checking
    each with the very code docs/alerts.md shows (the HMAC-SHA256 of `<X-Backupd-Timestamp>.<body>`
    and a timestamp at most 5 minutes off); it refuses any request that check fails."""

    check = _docs_webhook_check()

    def default_reply(self, request: Captured) -> Reply:
        scope: dict[str, Any] = {"secret": HOOK_SECRET, "request_body": request.body,
                                 "request": type("Request", (), {"headers": _Headers(request.headers)})}
        try:
            exec(self.check, scope)  # noqa: S102 - the documented receiver code, run as written
        except (KeyError, ValueError):
            return Reply(401, {"error": "missing or malformed signature headers"})
        if not scope["ok"]:
            return Reply(401, {"error": "bad signature or stale timestamp"})
        return Reply(200, {"received": True})


class Healthchecks(StandIn):
    """Stands in for healthchecks.io's ping API (hc-ping.com/<uuid>[/start|/fail|/log]): any body,
    answers 200 "OK"; 404 "not found" for an unknown check."""

    def default_reply(self, request: Captured) -> Reply:
        if not request.path.startswith(f"/{HC_UUID}"):
            return Reply(404, b"not found")
        return Reply(200, b"OK")


@pytest.fixture
def telegram() -> Iterator[TelegramBotApi]:
    server = TelegramBotApi()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def discord() -> Iterator[DiscordWebhooks]:
    server = DiscordWebhooks()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def healthchecks() -> Iterator[Healthchecks]:
    server = Healthchecks()
    try:
        yield server
    finally:
        server.stop()


def telegram_notifier(server: TelegramBotApi, **extra: Any) -> dict[str, Any]:
    return {"type": "telegram", "bot_token": BOT_TOKEN, "chat_id": CHAT_ID, "api_url": server.root, **extra}


def discord_notifier(server: DiscordWebhooks, **extra: Any) -> dict[str, Any]:
    return {"type": "discord", "webhook_url": server.root + DISCORD_PATH, **extra}


def webhook_notifier(server: WebhookReceiver, **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": server.root + HOOK_PATH, "secret": HOOK_SECRET, **extra}


def healthchecks_notifier(server: Healthchecks, **extra: Any) -> dict[str, Any]:
    return {"type": "healthchecks", "ping_url": f"{server.root}/{HC_UUID}", **extra}


def broken_destination(tmp_path: Path, name: str = "broken") -> dict[str, Any]:
    """A local destination that cannot be written: its path runs through a regular file."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where a folder should be\n")
    return {"name": name, "type": "local", "path": str(blocker / "backups")}


def good_destination(tmp_path: Path) -> dict[str, Any]:
    return {"name": "local", "type": "local", "path": str(tmp_path / "backups")}


def backup(config: Path) -> Any:
    return run_cli("--config", str(config), "backup", timeout=180)


def last_run(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "state" / "status.json").read_text())["last_run"]


def secrets_of(source_dsn: str) -> list[str]:
    password = urlsplit(source_dsn).password
    assert password
    return [BOT_TOKEN, BOT_TOKEN.split(":")[1], DISCORD_PATH.rsplit("/", 1)[1], HOOK_SECRET, HOOK_PATH,
            HC_UUID, password]


# -- tests -----------------------------------------------------------------------------------------


def test_check_config_accepts_every_notifier_type(make_config, telegram, discord, receiver, healthchecks):
    """The four notifier types are registered: check-config exits 0 with all of them configured."""
    config = make_config(notifiers=[telegram_notifier(telegram), discord_notifier(discord),
                                    webhook_notifier(receiver), healthchecks_notifier(healthchecks)])
    result = run_cli("--config", str(config), "check-config")
    assert result.returncode == 0, result.stderr


def test_failure_alert_says_what_failed_and_success_is_sent_only_when_asked(
        make_config, tmp_path, telegram, discord, source_dsn):
    """A failed backup sends one Telegram message (HTML, no link preview) naming the outcome, the
    backup id, duration, size, rows, each destination with its error, the next run and the host;
    a notifier without `success` in `on` stays silent on a good run, one that lists it is told."""
    config = make_config(destinations=[broken_destination(tmp_path)],
                         notifiers=[telegram_notifier(telegram), discord_notifier(discord, on=["success"])])
    result = backup(config)
    assert result.returncode == 1, result.stderr
    run = last_run(tmp_path)
    messages = telegram.messages()
    assert len(messages) == 1, messages
    assert discord.requests == []  # discord wants only `success`
    message = messages[0]
    assert message["chat_id"] == CHAT_ID and message["parse_mode"] == "HTML"
    assert json.loads(message["link_preview_options"]) == {"is_disabled": True}
    text = message["text"]
    assert "backup FAILED" in text
    assert run["id"] in text
    assert "Duration:" in text and "Size:" in text and f"Rows: {run['rows']}" in text
    assert "tasks 2000" in text  # the short per-table summary
    assert "broken: FAILED:" in text and "not-a-directory" in text
    assert "Next run:" in text and f"Host: <code>{run['host']}</code>" in text

    config = make_config(notifiers=[telegram_notifier(telegram, on=["failure"]),
                                    discord_notifier(discord, on=["success"])])
    result = backup(config)
    assert result.returncode == 0, result.stderr
    assert len(telegram.messages()) == 1  # no `success` (nor `recovered`) in its `on`
    assert len(discord.requests) == 1
    embed = discord.requests[0].json()["embeds"][0]
    assert "backup succeeded" in embed["title"] and embed["color"] == 0x2ECC71
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Backup"].startswith(f"`{last_run(tmp_path)['id']}`")
    assert "stored" in fields["Destination local"]
    for secret in secrets_of(source_dsn):
        for request in telegram.requests + discord.requests:
            assert secret not in request.body.decode(), secret


def test_partial_run_reaches_discord_with_a_field_per_destination_after_a_429(
        make_config, tmp_path, discord):
    """One destination failing makes the run partial (exit 3); Discord answers the first POST
    with 429 retry_after 0.5: backupd waits and the retry delivers an orange embed with a field
    per destination, the failed one carrying its error."""
    discord.script.append(Reply(429, {"message": "You are being rate limited.", "retry_after": 0.5,
                                      "global": False}))
    config = make_config(destinations=[good_destination(tmp_path), broken_destination(tmp_path)],
                         notifiers=[discord_notifier(discord)])
    started = time.monotonic()
    result = backup(config)
    assert result.returncode == 3, result.stderr
    assert len(discord.requests) == 2
    gap = time.monotonic() - started
    assert gap >= 0.5
    body = discord.requests[1].json()
    embed = body["embeds"][0]
    assert embed["color"] == 0xE67E22 and "PARTIAL" in embed["title"]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert "stored" in fields["Destination local"]
    assert "not-a-directory" in fields["Destination broken"]
    assert "notify_failed" not in result.stderr


def test_telegram_retry_after_is_honoured_once(make_config, tmp_path, telegram):
    """Telegram answers 429 with parameters.retry_after=1: the message is sent again after the wait."""
    telegram.script.append(TelegramBotApi.too_many(1))
    config = make_config(notifiers=[telegram_notifier(telegram, on=["success"])])
    result = backup(config)
    assert result.returncode == 0, result.stderr
    messages = telegram.messages()
    assert len(messages) == 2 and messages[0]["text"] == messages[1]["text"]
    assert "backup succeeded" in messages[1]["text"]
    assert "notify_failed" not in result.stderr


def test_errors_and_timeouts_of_notifiers_never_change_the_exit_code(
        make_config, tmp_path, telegram, discord, receiver, source_dsn):
    """A 500 from Discord, a Telegram API that never answers within the 1 s timeout, and a too
    long 429 wait: the backup still exits 0, promptly, and each failure is logged as notify_failed
    with its cause but without any secret."""
    discord.script.append(Reply(500, {"message": "Internal Server Error"}))
    telegram.script.append(Reply(200, {"ok": True, "result": {}}, delay=20))
    receiver.script.append(Reply(429, {"retry_after": 3600}))
    config = make_config(notifiers=[
        telegram_notifier(telegram, on=["success"], timeout="1s"),
        discord_notifier(discord, on=["success"]),
        webhook_notifier(receiver, on=["success"]),
    ])
    started = time.monotonic()
    result = backup(config)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 15
    failures = [line for line in result.stderr.splitlines() if "notify_failed" in line]
    assert len(failures) == 3, result.stderr
    by_notifier = {f.split("notifier=")[1].split()[0]: f for f in failures}
    assert "HTTP 500" in by_notifier["notifiers[1]:discord"]
    assert "Timed" in by_notifier["notifiers[0]:telegram"] or "timed out" in by_notifier["notifiers[0]:telegram"]
    assert "429" in by_notifier["notifiers[2]:webhook"]
    assert len(receiver.requests) == 1  # an hour's wait is not honoured
    for secret in secrets_of(source_dsn):
        assert secret not in result.stderr and secret not in result.stdout


def test_repeat_suppression_across_processes_then_recovered(
        make_config, tmp_path, telegram, receiver, healthchecks, source_dsn):
    """Two failing `backupd backup` processes in a row alert once (alerts.json remembers across
    processes); once `repeat_after` has passed the failure is repeated; the first good run sends
    `recovered`. The healthchecks monitor hears every run: /start, then /fail or success with the
    log tail. The webhook events carry the documented schema and a valid signature."""
    notifiers = [telegram_notifier(telegram), webhook_notifier(receiver), healthchecks_notifier(healthchecks)]
    failing = make_config(destinations=[broken_destination(tmp_path)], notifiers=notifiers)
    assert backup(failing).returncode == 1
    assert backup(failing).returncode == 1
    assert len(telegram.messages()) == 1
    assert len(receiver.requests) == 1
    alerts = tmp_path / "state" / "alerts.json"
    state = json.loads(alerts.read_text())
    assert state["condition"] == "failure"

    # 7 hours later (repeat_after defaults to 6h): rewind what alerts.json remembers
    earlier = (datetime.now(UTC) - timedelta(hours=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for sent in state["notifiers"].values():
        for entry in sent.values():
            entry["at"] = earlier
    alerts.write_text(json.dumps(state))
    assert backup(failing).returncode == 1
    assert len(telegram.messages()) == 2
    assert "backup FAILED" in telegram.messages()[1]["text"]

    good = make_config(destinations=[good_destination(tmp_path)], notifiers=notifiers)
    result = backup(good)
    assert result.returncode == 0, result.stderr
    assert len(telegram.messages()) == 3
    assert "backups recovered" in telegram.messages()[2]["text"]
    run = last_run(tmp_path)
    assert run["id"] in telegram.messages()[2]["text"]
    # a second good run is a plain success: not in this notifier's `on`
    assert backup(good).returncode == 0
    assert len(telegram.messages()) == 3

    events = [r.json() for r in receiver.requests]
    assert [e["event"] for e in events] == ["failure", "failure", "recovered"]
    for event, request in zip(events, receiver.requests):
        assert event["schema"] == "backupd.event/1"
        assert request.headers["x-backupd-event"] == event["event"]
        assert request.headers["x-backupd-signature"].startswith("sha256=")
        assert abs(int(request.headers["x-backupd-timestamp"]) - time.time()) < 600
        # the documented check passes the request as sent, and refuses it with another timestamp
        assert receiver.default_reply(request).status == 200
        moved = Captured(request.method, request.path, request.query,
                         {**request.headers, "x-backupd-timestamp": str(int(time.time()) + 1)}, request.body)
        assert receiver.default_reply(moved).status == 401
        old = int(time.time()) - 3600  # a correctly signed request, replayed an hour later
        replayed = Captured(request.method, request.path, request.query,
                            {**request.headers, "x-backupd-timestamp": str(old),
                             "x-backupd-signature": signature(HOOK_SECRET, old, request.body)}, request.body)
        assert receiver.default_reply(replayed).status == 401
        assert {"at", "host", "title", "summary", "text", "run", "next_run", "severity"} <= set(event)
    assert events[2]["run"]["outcome"] == "success" and events[2]["run"]["destinations"]["local"]["ok"]
    assert events[0]["run"]["destinations"]["broken"]["ok"] is False

    pings = [(r.path.removeprefix(f"/{HC_UUID}") or "/", r) for r in healthchecks.requests]
    assert [p for p, _ in pings] == ["/start", "/fail"] * 3 + ["/start", "/", "/start", "/"]
    for (_path, start), (_path2, end) in zip(pings[0::2], pings[1::2]):
        assert start.query["rid"] == end.query["rid"]
    fail_body = pings[1][1].body.decode()
    assert "backup FAILED" in fail_body and "log tail" in fail_body and "event=backup_finished outcome=failed" in fail_body
    assert "backup_finished" in pings[-1][1].body.decode()

    captured = [r.body.decode() + json.dumps(r.headers) for r in telegram.requests + receiver.requests
                + healthchecks.requests]
    files = [p.read_text() for p in (tmp_path / "state").glob("*.json*")]
    for secret in secrets_of(source_dsn):
        for text in captured + files:
            assert secret not in text, secret


def test_stale_fires_once_per_episode_without_any_run(make_config, tmp_path, telegram, discord):
    """With no run at all (a hung schedule), check_stale says `stale` once stale_after has passed
    since backupd started watching, not again in the same episode, and once more in a new episode
    after a success has gone stale too; notifiers without `stale` in `on` hear nothing."""
    from backupd.config import load_config
    from backupd.notify.dispatch import check_stale

    config_path = make_config(state={"stale_after": "48h"},
                              notifiers=[telegram_notifier(telegram), discord_notifier(discord, on=["failure"])])
    config = load_config(config_path)
    start = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
    check_stale(config, {}, now=start)
    check_stale(config, {}, now=start + timedelta(hours=47))
    assert telegram.messages() == []
    check_stale(config, {}, now=start + timedelta(hours=49))
    assert len(telegram.messages()) == 1
    text = telegram.messages()[0]["text"]
    assert "STALE" in text and "no successful backup for 49.0 h" in text and "last success: never; stale after 2d" in text
    for minutes in (1, 2, 60, 600):
        check_stale(config, {}, now=start + timedelta(hours=49, minutes=minutes))
    assert len(telegram.messages()) == 1

    # a success on the 12th, then nothing: a new episode 48 h after it
    status = {"last_run": {"id": "20260112T000000Z", "outcome": "success"},
              "last_success": {"id": "20260112T000000Z", "finished": "2026-01-12T00:05:00Z", "outcome": "success"}}
    check_stale(config, status, now=datetime(2026, 1, 13, tzinfo=UTC))
    assert len(telegram.messages()) == 1
    check_stale(config, status, now=datetime(2026, 1, 14, 1, tzinfo=UTC))
    check_stale(config, status, now=datetime(2026, 1, 14, 2, tzinfo=UTC))
    assert len(telegram.messages()) == 2
    assert "20260112T000000Z" in telegram.messages()[1]["text"]
    assert discord.requests == []


def test_stale_delivery_that_failed_is_retried_later(make_config, tmp_path, telegram):
    """A stale alert the Bot API refused (500) is tried again 15 minutes later, then not again."""
    from backupd.config import load_config
    from backupd.notify.dispatch import check_stale

    telegram.script.append(Reply(500, {"ok": False, "error_code": 500, "description": "Internal Server Error"}))
    config = load_config(make_config(notifiers=[telegram_notifier(telegram)]))
    start = datetime(2026, 2, 1, tzinfo=UTC)
    check_stale(config, {}, now=start)
    check_stale(config, {}, now=start + timedelta(hours=49))
    check_stale(config, {}, now=start + timedelta(hours=49, minutes=5))
    assert len(telegram.requests) == 1
    check_stale(config, {}, now=start + timedelta(hours=49, minutes=16))
    check_stale(config, {}, now=start + timedelta(hours=49, minutes=40))
    assert len(telegram.requests) == 2 and len(telegram.messages()) == 2


def test_send_test_reports_each_notifier_and_send_event_follows_on(make_config, tmp_path, telegram, discord,
                                                                      receiver, healthchecks):
    """send_test (what `doctor --test-notify` prints) sends through every notifier whatever its `on`
    and reports each; a wrong Telegram token is reported without the token. send_event delivers a
    `restore` event only where `on` asks for it."""
    from backupd.config import load_config
    from backupd.notify.dispatch import send_event, send_test

    config = load_config(make_config(notifiers=[
        telegram_notifier(telegram), discord_notifier(discord, on=["restore"]),
        webhook_notifier(receiver), healthchecks_notifier(healthchecks),
        {**telegram_notifier(telegram), "bot_token": "987654321:WrongTokenWrongTokenWrong"},
    ]))
    results = send_test(config)
    assert [(name, ok) for name, ok, _ in results] == [
        ("notifiers[0]:telegram", True), ("notifiers[1]:discord", True), ("notifiers[2]:webhook", True),
        ("notifiers[3]:healthchecks", True), ("notifiers[4]:telegram", False)]
    assert "WrongToken" not in results[4][2] and results[4][2]
    assert "test message" in telegram.messages()[0]["text"]
    assert healthchecks.requests[0].path == f"/{HC_UUID}/log"  # a test never flips the check's state
    assert receiver.requests[0].json()["event"] == "test"

    send_event(config, {"event": "restore", "backup_id": "20260101T000000Z", "target": "scratch",
                        "summary": "restored 20260101T000000Z into scratch"})
    assert len(discord.requests) == 2
    embed = discord.requests[1].json()["embeds"][0]
    assert "restored 20260101T000000Z into scratch" in embed["description"]
    assert "Target: scratch" in embed["description"]
    assert len(receiver.requests) == 1  # default `on` has no `restore`


@pytest.mark.slow
def test_telegram_commands_answer_allowed_users_of_the_configured_chat_only(make_config, tmp_path, telegram):
    """With `commands = true` the daemon answers /status and runs /backup for a user of
    `allowed_user_ids` in the configured chat. Another chat, a member not allowed, a message sent
    on behalf of a channel and `/backup@OtherBot` get no answer, run nothing, and are logged with
    the reason. A second /backup within `commands_min_interval` is refused; the command-made
    backup pushes no older backup out (keep_last = 1). SIGHUP with a new token and chat rebuilds
    the poller: it polls with the new token and answers in the new chat only."""
    from tests.e2e.test_daemon import DaemonProcess, wait_for

    operator, stranger = "777001", "777002"
    destination = {**good_destination(tmp_path), "retention": {"keep_last": 1}}

    def commands_config(token: str, chat: str) -> Path:
        return make_config(schedule={"every": "24h", "catch_up": False}, destinations=[destination],
                           notifiers=[{**telegram_notifier(telegram, commands=True, on=["success", "failure"]),
                                       "bot_token": token, "chat_id": chat, "allowed_user_ids": [int(operator)]}])

    config = commands_config(BOT_TOKEN, CHAT_ID)
    assert backup(config).returncode == 0  # an earlier backup, not made by a command
    earlier = [p.name for p in (tmp_path / "backups").iterdir()]
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        daemon.wait_event("telegram_commands_started", timeout=30)
        telegram.push_message("999", "/backup")
        telegram.push_message(CHAT_ID, "/backup", user_id=stranger)
        telegram.push_message(CHAT_ID, "/backup", sender_chat="-1001234567")
        telegram.push_message(CHAT_ID, "/backup@OtherBot", user_id=operator)
        telegram.push_message(CHAT_ID, f"/status@{BOT_USERNAME}", user_id=operator)
        reply = wait_for(lambda: [m for m in telegram.messages() if "backupd: healthy" in m["text"]], 30,
                         f"the /status reply\n{daemon.log[-2000:]}")[0]
        assert reply["chat_id"] == CHAT_ID and "Last run:" in reply["text"] and "Next run:" in reply["text"]
        reasons = [line.split("reason=")[1].strip("'\"") for line in daemon.events("telegram_command_ignored")]
        assert reasons == ["not the configured chat", "sender not in allowed_user_ids",
                           "sent on behalf of a chat, not by a user", "addressed to another bot"], reasons
        assert last_run(tmp_path)["trigger"] != "telegram"
        assert len(telegram.messages()) == 2  # the earlier backup's success, the /status reply

        telegram.push_message(CHAT_ID, "/backup", user_id=operator)
        wait_for(lambda: [m for m in telegram.messages() if "Backup requested" in m["text"]], 30, "the /backup reply")
        done = wait_for(lambda: [m for m in telegram.messages() if "backup succeeded" in m["text"]][1:], 120,
                        f"the success message\n{daemon.log[-3000:]}")
        run = last_run(tmp_path)
        assert run["trigger"] == "telegram" and run["outcome"] == "success" and run["id"] in done[0]["text"]
        # keep_last = 1, yet the command-made backup pushed the earlier one out: no
        assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == sorted([*earlier, run["id"]])
        telegram.push_message(CHAT_ID, "/backup", user_id=operator)
        refused = wait_for(lambda: [m for m in telegram.messages() if "less than 10min ago" in m["text"]], 30,
                           f"the refusal\n{daemon.log[-2000:]}")
        assert "try again in" in refused[0]["text"]
        assert all(m["chat_id"] == CHAT_ID for m in telegram.messages())

        new_token, new_chat = "987654321:BBnewTokenForTheReloadTest_abcdefgh", "515151"
        telegram.tokens[new_token] = "BackupdOtherBot"
        commands_config(new_token, new_chat)
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("telegram_commands_restarted", timeout=30)
        telegram.push_message(CHAT_ID, "/status", user_id=operator)
        telegram.push_message(new_chat, "/status@BackupdOtherBot", user_id=operator)
        wait_for(lambda: [m for m in telegram.messages() if m["chat_id"] == new_chat], 30,
                 f"the /status reply in the new chat\n{daemon.log[-2000:]}")
        assert [m["chat_id"] for m in telegram.messages()].count(CHAT_ID) == 5  # 2 successes, status, requested, refused
        assert any(r.path == f"/bot{new_token}/getUpdates" for r in telegram.requests)
        assert BOT_TOKEN.split(":")[1] not in daemon.log and new_token.split(":")[1] not in daemon.log
    finally:
        daemon.stop()
    history = (tmp_path / "state" / "history.jsonl").read_text().splitlines()
    assert len([line for line in history if '"trigger":"telegram"' in line]) == 1


def test_doctor_test_notify_reports_each_notifier(make_config, tmp_path, telegram, discord, source_dsn):
    """`backupd doctor --test-notify` sends a test message through every notifier and prints one line
    each; a notifier that fails (Discord answers 500) makes doctor exit 1, without any secret shown."""
    discord.script.append(Reply(500, {"message": "Internal Server Error"}))
    config = make_config(notifiers=[telegram_notifier(telegram), discord_notifier(discord)])
    result = run_cli("--config", str(config), "doctor", "--test-notify", timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    telegram_line = next(line for line in output.splitlines() if "notifiers[0]:telegram" in line)
    discord_line = next(line for line in output.splitlines() if "notifiers[1]:discord" in line)
    assert "sent" in telegram_line and "HTTP 500" in discord_line
    assert len(telegram.messages()) == 1 and "test message" in telegram.messages()[0]["text"]
    for secret in secrets_of(source_dsn):
        assert secret not in output
