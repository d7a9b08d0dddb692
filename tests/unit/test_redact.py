"""Redaction masks secret values, never ordinary words: short or dictionary-word secrets (a DSN
password "No", a token "a") leave error messages such as "No such file or directory" readable,
while the same secrets are still masked where they stand as secrets (a DSN's password, key=value)."""

from __future__ import annotations

from backupd import redact
from tests.conftest import run_cli, write_config

WORDLIKE = ["No", "a", "such", "file", "directory", "Permission", "denied", "readable"]


def test_wordlike_secrets_never_mask_words():
    redact.register(WORDLIKE)
    message = "cannot read /etc/backupd/telegram-token: No such file or directory (Permission denied, readable)"
    assert redact.redact(message) == message
    assert redact.redact("token: No such file") == "token: No such file"


def test_short_secrets_are_still_masked_where_they_are_secrets():
    redact.register(WORDLIKE)
    assert redact.redact("postgresql://backup:No@db.example.com/postgres") == \
        "postgresql://backup:***@db.example.com/postgres"
    assert redact.redact("host=db password=a user=backup") == "host=db password=*** user=backup"
    assert redact.redact('{"token": "such"}') == '{"token": "***"}'


def test_long_secrets_are_masked_anywhere():
    redact.register(["Zq8Xw3-PlantedLong", "correcthorsebatterystaple"])
    assert redact.redact("failed: Zq8Xw3-PlantedLong rejected") == "failed: *** rejected"
    assert redact.redact("got correcthorsebatterystaple back") == "got *** back"


def test_missing_token_file_message_keeps_its_words(tmp_path):
    """The defect as an operator saw it: `...: *** such file or directory` for a missing file."""
    config = write_config(tmp_path / "backupd.toml", {
        "source": {"dsn": "postgresql://backup:No@127.0.0.1:1/postgres"},
        "state": {"dir": str(tmp_path / "state")},
        "destinations": [{"name": "local", "type": "local", "path": str(tmp_path / "backups")}],
        "notifiers": [{"type": "telegram", "bot_token_file": "/nonexistent/telegram-token", "chat_id": "1"}],
    })
    result = run_cli("--config", str(config), "check-config")
    assert result.returncode == 2
    assert "cannot read /nonexistent/telegram-token: No such file or directory" in result.stderr, result.stderr
    assert "***" not in result.stderr
