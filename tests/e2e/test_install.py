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
    example = (REPO / "config/backupd.example.toml").read_text()
    metrics_line = '# metrics_file = "/var/lib/backupd-metrics/backupd.prom"'
    assert metrics_line in example and config.read_text() == example.replace(metrics_line, metrics_line[2:])
    assert config.stat().st_mode & 0o777 == 0o640
    # the metrics folder: setgid, group backupd-metrics (set by chown on a real install) reads, nobody else
    assert (root / "var/lib/backupd-metrics").stat().st_mode & 0o7777 == 0o2750
    assert (root / "etc/backupd/credentials").stat().st_mode & 0o777 == 0o700
    assert (root / "etc/backupd/credentials/dsn").read_bytes() == b""
    key = root / "etc/backupd/credentials/signing_key"  # the credential backupd.service loads
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_text().strip()) == 64
    signing_key = key.read_text()
    assert "LoadCredential=signing_key:/etc/backupd/credentials/signing_key" in \
        (units / "backupd.service").read_text()
    assert (root / "var/backups/backupd").is_dir()
    assert os.readlink(root / "usr/local/bin/backupd") == f"{prefix}/bin/backupd"
    assert "complete -F _backupd backupd" in (root / "usr/share/bash-completion/completions/backupd").read_text()
    assert (root / "usr/share/zsh/vendor-completions/_backupd").read_text().startswith("#compdef backupd")
    python = (root / prefix.lstrip("/") / "bin" / "python3").resolve()
    assert not str(python).startswith(("/root/", "/home/")), python

    # a second install (an upgrade) keeps the operator's config
    config.write_text(config.read_text() + "\n# edited by the operator\n")
    edited = config.read_text()
    second = _sh("install.sh", root, prefix)
    assert second.returncode == 0, second.stderr
    assert "kept the existing" in second.stdout and config.read_text() == edited
    assert key.read_text() == signing_key  # never replaced: the old backups need it

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
    assert not (root / "usr/local/bin/backupd").is_symlink()
    assert not (root / "usr/share/bash-completion/completions/backupd").exists()


def test_install_refuses_a_relative_prefix(tmp_path):
    result = _sh("install.sh", tmp_path, "opt/backupd")
    assert result.returncode == 2 and "absolute path" in result.stderr
    assert not any(tmp_path.iterdir())


def test_example_config_is_valid_once_paths_and_secrets_are_given(tmp_path):
    """config/backupd.example.toml, installed as install.sh installs it (0640), passes check-config
    once its paths exist (BACKUPD_<SECTION>__<KEY> overrides here) and its secrets are in the
    credentials (the one secrets scheme: /etc/backupd/credentials/<key>; --credentials-dir here),
    without tripping backupd's own config_insecure warning: it holds no secret."""
    config = tmp_path / "backupd.toml"
    config.write_text((REPO / "config/backupd.example.toml").read_text())
    config.chmod(0o640)
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "dsn").write_text("postgresql://backup:Example-pw-1@db.example.com:5432/postgres\n")
    (credentials / "bot_token").write_text("123:abc\n")
    env = {**os.environ, "BACKUPD_STATE__DIR": str(tmp_path / "state"),
           "BACKUPD_DESTINATIONS__0__PATH": str(tmp_path / "backups")}
    result = subprocess.run([str(Path(os.sys.executable)), "-m", "backupd", "--config", str(config),
                             "--credentials-dir", str(credentials), "check-config"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "config ok: 1 destination(s): local (local); 1 notifier(s)" in result.stdout
    assert "config_insecure" not in result.stderr


def test_install_refuses_an_interpreter_the_unit_cannot_see(tmp_path):
    """#21: a python3 under /root or /home (pyenv, a user's build) is hidden from the service by
    ProtectHome=yes (203/EXEC): install refuses it, naming the system interpreter instead."""
    real = os.path.realpath(os.sys.executable)
    if not real.startswith(("/root/", "/home/")):
        pytest.skip(f"the test's interpreter {real} is not under /root or /home")
    result = subprocess.run(["sh", str(REPO / "scripts" / "install.sh"), "/opt/backupd-test"], capture_output=True,
                            text=True, env={**os.environ, "DESTDIR": str(tmp_path), "PYTHON": os.sys.executable},
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ProtectHome=yes" in result.stderr and "PYTHON=/usr/bin/python3" in result.stderr
    assert not (tmp_path / "opt").exists()
