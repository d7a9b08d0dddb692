"""Config validation as the CLI reports it: exit 2, one line per problem with its key path, no secret."""

from __future__ import annotations

from datetime import timedelta

import pytest

from backupd.config import apply_env_overrides, load_config, parse_duration
from backupd.errors import ConfigError
from tests.conftest import run_cli

GOOD = """
[source]
dsn = "postgresql://backup:Sup3rSecretPw@db.example.com:5432/postgres"
[state]
dir = "{state}"
[[destinations]]
name = "local"
type = "local"
path = "{backups}"
"""


def _write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text.format(state=tmp_path / "s", backups=tmp_path / "b"))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("text,duration", [("90s", 90), ("30min", 1800), ("48h", 172800), ("7d", 604800),
                                           ("1h30min", 5400), ("2w", 1209600)])
def test_durations(text, duration):
    assert parse_duration(text) == timedelta(seconds=duration)


@pytest.mark.parametrize("bad", ["", "soon", "5 parsecs", "-3h", "h", 86_400_000_000_000, float("inf"),
                                 float("nan"), "999999999999999d"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_good_config_checks(tmp_path):
    result = run_cli("--config", str(_write(tmp_path, GOOD)), "check-config")
    assert result.returncode == 0, result.stderr
    assert "config ok" in result.stdout


def test_problems_named_by_key_path_without_secrets(tmp_path):
    text = GOOD + """
[[destinations]]
name = "offsite"
type = "s3"
prefix = "x"
[schedule]
at = ["25:00"]
bogus = 1
"""
    result = run_cli("--config", str(_write(tmp_path, text)), "check-config")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.endswith("destinations[1].bucket: required") for line in lines), lines
    assert any("schedule.at" in line and "25:00" in line for line in lines), lines
    assert any("schedule.bogus: unknown key" in line for line in lines), lines
    assert "Traceback" not in result.stderr and "Sup3rSecretPw" not in result.stderr


def test_unknown_destination_type(tmp_path):
    text = GOOD.replace('type = "local"', 'type = "ftp"')
    result = run_cli("--config", str(_write(tmp_path, text)), "check-config")
    assert result.returncode == 2
    assert "destinations[0]" in result.stderr and "unknown type" in result.stderr


def test_toml_syntax_error(tmp_path):
    result = run_cli("--config", str(_write(tmp_path, GOOD + "\n[source\n")), "check-config")
    assert result.returncode == 2 and "TOML syntax error" in result.stderr


def test_missing_config_file(tmp_path):
    result = run_cli("--config", str(tmp_path / "nope.toml"), "check-config")
    assert result.returncode == 2 and "not found" in result.stderr


def test_secret_from_file_and_credentials_dir(tmp_path, monkeypatch):
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://u:FromFile@h:5432/d\n")
    text = GOOD.replace('dsn = "postgresql://backup:Sup3rSecretPw@db.example.com:5432/postgres"',
                        f'dsn_file = "{secret}"')
    config = load_config(_write(tmp_path, text))
    assert config.source.dsn.get_secret_value() == "postgresql://u:FromFile@h:5432/d"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "dsn").write_text("postgresql://u:FromCreds@h:5432/d")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    text = GOOD.replace('dsn = "postgresql://backup:Sup3rSecretPw@db.example.com:5432/postgres"\n', "")
    config = load_config(_write(tmp_path, text))
    assert config.source.dsn.get_secret_value().endswith("FromCreds@h:5432/d")


def test_unreadable_secret_file_names_key(tmp_path):
    text = GOOD.replace('dsn = "postgresql://backup:Sup3rSecretPw@db.example.com:5432/postgres"',
                        f'dsn_file = "{tmp_path}/missing"')
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert info.value.problems[0].startswith("source.dsn_file: cannot read")


def test_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUPD_SOURCE__DSN", "postgresql://u:EnvPw@other:5432/x")
    monkeypatch.setenv("BACKUPD_STATE__STALE_AFTER", "3h")
    monkeypatch.setenv("BACKUPD_SOURCE__SCHEMAS", '["public", "app"]')
    config = load_config(_write(tmp_path, GOOD))
    assert "other:5432" in config.source.dsn.get_secret_value()
    assert config.state.stale_after == timedelta(hours=3)
    assert config.source.schemas == ["public", "app"]


def test_env_override_indexes_destinations():
    raw = {"destinations": [{"type": "local", "path": "/a"}]}
    assert apply_env_overrides(raw, {"BACKUPD_DESTINATIONS__0__PATH": "/b"})["destinations"][0]["path"] == "/b"


def test_transaction_pooler_port_refused(tmp_path):
    text = GOOD.replace("db.example.com:5432", "aws-0-eu.pooler.supabase.com:6543")
    result = run_cli("--config", str(_write(tmp_path, text)), "check-config")
    assert result.returncode == 2 and "source.dsn" in result.stderr and "5432" in result.stderr
    assert "Sup3rSecretPw" not in result.stderr


def test_schedule_every_or_at(tmp_path):
    config = load_config(_write(tmp_path, GOOD + '[schedule]\nevery = "6h"\n'))
    assert config.schedule.every == timedelta(hours=6) and config.schedule.at == []
    result = run_cli("--config", str(_write(tmp_path, GOOD + '[schedule]\nevery = "6h"\nat = ["01:00"]\n')),
                     "check-config")
    assert result.returncode == 2 and "schedule" in result.stderr
