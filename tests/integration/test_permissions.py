"""Files and permissions: everything backupd creates is private to its user even when it is started
under a permissive umask, and a config that exposes an inline secret to other users is warned about."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli, write_config


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Start backupd from a process whose umask is 022, as a shell usually has."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _public_key(tmp_path: Path) -> Path:
    home = tmp_path / "keyhome"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet"]
    subprocess.run([*gpg, "--passphrase", "", "--quick-gen-key", "perm <perm@example.com>", "future-default",
                    "default", "never"], check=True, capture_output=True)
    public = tmp_path / "perm.asc"
    public.write_bytes(subprocess.run([*gpg, "--armor", "--export"], check=True, capture_output=True).stdout)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    return public


# backupd.prom (metrics, no secret) is 0640 on purpose: the group of its folder (backupd-metrics) reads it
INTENTIONALLY_READABLE = {"backupd.prom"}


def _loose(root: Path) -> list[str]:
    """Every path under root that its group or others may read, write or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode) or (path.name in INTENTIONALLY_READABLE and not mode & 0o022):
            continue
        if mode & 0o077:
            found.append(f"{oct(mode & 0o777)} {path}")
    return found


def test_everything_written_is_private_under_a_permissive_umask(make_config, tmp_path, permissive_umask):
    """A backup to a local folder and a git repository, then a gpg-encrypted one (git keeps plain
    text, so it has no encryption): the state dir (status, history, lock, staging, the GPG home and
    its keyring), the backups and the repository hold only 0600 files and 0700 directories (git's
    read-only objects: 0400)."""
    config = make_config(destinations=[{"name": "local", "type": "local", "path": str(tmp_path / "backups")},
                                       {"name": "git", "type": "git", "path": str(tmp_path / "repo")}])
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 0, result.stderr
    config = make_config(pipeline={"encrypt_to": [str(_public_key(tmp_path))]})
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 0, result.stderr
    state = tmp_path / "state"
    assert (state / "status.json").exists() and (state / "history.jsonl").exists()
    assert (state / "gnupg" / "pubring.kbx").exists()
    backups = [p for p in (tmp_path / "backups").iterdir() if p.is_dir()]
    assert len(backups) == 2 and all((b / "manifest.json").exists() for b in backups)
    assert (tmp_path / "repo" / ".git").is_dir()
    for root in (state, tmp_path / "backups", tmp_path / "repo"):
        assert _loose(root) == [], root


def _check(config: Path) -> str:
    result = run_cli("--config", str(config), "check-config")
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_world_readable_config_with_inline_secret_is_warned_about(tmp_path, source_dsn):
    """An inline secret in a 0644 config: a warning naming the file and the fix. A 0600 file, or
    a 0644 file whose secret lives in a <key>_file, gets none."""
    sections = {"source": {"dsn": source_dsn}, "state": {"dir": str(tmp_path / "state")},
                "destinations": [{"type": "local", "path": str(tmp_path / "b")}]}
    config = write_config(tmp_path / "inline.toml", sections)
    config.chmod(0o644)
    stderr = _check(config)
    assert "config_insecure" in stderr and "readable by other users" in stderr and str(config) in stderr
    config.chmod(0o600)
    assert "config_insecure" not in _check(config)
    secret_file = tmp_path / "dsn"
    secret_file.write_text(source_dsn + "\n")
    secret_file.chmod(0o600)
    indirect = write_config(tmp_path / "indirect.toml", {**sections, "source": {"dsn_file": str(secret_file)}})
    indirect.chmod(0o644)
    assert "config_insecure" not in _check(indirect)
