"""scripts/install.sh and uninstall.sh into a staging root (DESTDIR), never the real /etc: the files
land where the units and docs say, an existing config is never overwritten, the installed backupd
runs, and uninstall keeps config, state and backups."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO


def _sh(script: str, root: Path, prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(REPO / "scripts" / script), prefix], capture_output=True, text=True,
                          env={**os.environ, "DESTDIR": str(root)}, timeout=600)


@pytest.mark.slow
def test_install_then_uninstall_into_a_staging_root(tmp_path):
    root = tmp_path / "root"
    prefix = "/opt/backupd-test"
    first = _sh("install.sh", root, prefix)
    assert first.returncode == 0, first.stderr
    assert "systemctl enable --now backupd" in first.stdout and "journalctl -u backupd -f" in first.stdout

    backupd = root / prefix.lstrip("/") / "bin" / "backupd"
    version = subprocess.run([str(backupd), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("backupd ")
    units = root / "etc/systemd/system"
    for unit in ("backupd.service", "backupd@.service"):
        text = (units / unit).read_text()
        assert f"ExecStart={prefix}/bin/backupd" in text and "/opt/backupd/" not in text
    config = root / "etc/backupd/backupd.toml"
    assert config.read_text() == (REPO / "config/backupd.example.toml").read_text()
    assert config.stat().st_mode & 0o777 == 0o640
    assert (root / "etc/backupd/credentials").stat().st_mode & 0o777 == 0o700
    assert (root / "etc/backupd/credentials/dsn").read_bytes() == b""
    assert (root / "var/backups/backupd").is_dir()

    # a second install (an upgrade) keeps the operator's config
    config.write_text(config.read_text() + "\n# edited by the operator\n")
    edited = config.read_text()
    second = _sh("install.sh", root, prefix)
    assert second.returncode == 0, second.stderr
    assert "kept the existing" in second.stdout and config.read_text() == edited

    state = root / "var/lib/backupd"
    state.mkdir(parents=True)
    (state / "status.json").write_text("{}")
    (root / "var/backups/backupd/20260101T000000Z").mkdir()
    removed = _sh("uninstall.sh", root, prefix)
    assert removed.returncode == 0, removed.stderr
    assert not (root / prefix.lstrip("/")).exists()
    assert not (units / "backupd.service").exists() and not (units / "backupd@.service").exists()
    assert config.read_text() == edited and (state / "status.json").exists()
    assert (root / "var/backups/backupd/20260101T000000Z").is_dir()


def test_install_refuses_a_relative_prefix(tmp_path):
    result = _sh("install.sh", tmp_path, "opt/backupd")
    assert result.returncode == 2 and "absolute path" in result.stderr
    assert not any(tmp_path.iterdir())


def test_example_config_is_valid_once_paths_and_secrets_are_given(tmp_path):
    """config/backupd.example.toml (the contract's example) passes check-config when its paths
    and secret files exist (given here through BACKUPD_<SECTION>__<KEY> overrides)."""
    token = tmp_path / "telegram-token"
    token.write_text("123:abc\n")
    env = {**os.environ, "BACKUPD_STATE__DIR": str(tmp_path / "state"),
           "BACKUPD_DESTINATIONS__0__PATH": str(tmp_path / "backups"),
           "BACKUPD_NOTIFIERS__0__BOT_TOKEN_FILE": str(token)}
    result = subprocess.run([str(Path(os.sys.executable)), "-m", "backupd", "--config",
                             str(REPO / "config/backupd.example.toml"), "check-config"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "config ok: 1 destination(s): local (local); 1 notifier(s)" in result.stdout
