"""Issue #23's defects, as an operator meets them on a production host (the real CLI, a real
PostgreSQL): a command run as root keeps the state owned by the daemon's user; manual commands read
the DSN from systemd credentials (`--credentials-dir`, or the installed unit's LoadCredential=
files); an unreadable credential is a config error naming the key and the path; restore-storage
into another Supabase project uses that project's key (a local stand-in for Supabase Storage)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli, write_config
from tests.integration.test_storage_objects import KEY, StorageApi

NOBODY = pwd.getpwnam("nobody")
SYSTEM_PYTHON = Path("/usr/bin/python3")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ownership, another user)")


def _public_dir() -> Iterator[Path]:
    """A folder other users can enter (the pytest tmp_path is root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="backupd-defects-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


public_dir = pytest.fixture(_public_dir)


def _as_nobody(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`backupd ARGS` as the unprivileged user `nobody`, through the system interpreter (the test's
    own may live in root's home) with this checkout and its virtualenv's packages on the path."""
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    command = ["runuser", "-u", "nobody", "--", "env", f"PYTHONPATH={REPO}:{site}", *[f"{k}={v}" for k, v in env.items()],
               str(SYSTEM_PYTHON), "-m", "backupd", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/")


def _system_python_matches() -> bool:
    if not SYSTEM_PYTHON.exists():
        return False
    probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == str(tuple(sys.version_info[:2]))


needs_nobody = pytest.mark.skipif(os.geteuid() != 0 or not _system_python_matches(),
                                  reason="needs root and a /usr/bin/python3 of the test's own version")


@needs_root
def test_a_root_run_keeps_the_daemons_ownership_of_the_state(make_config, tmp_path):
    """`sudo backupd backup`, `status`, `list` on a host whose daemon runs as another user: every
    file in the state dir still belongs to that user afterwards (status.json too, still 0600)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
    config = make_config()
    for args in (["backup"], ["status"], ["list"]):
        result = run_cli("--config", str(config), *args)
        assert result.returncode == 0, (args, result.stderr[-2000:])
    entries = [state, *state.rglob("*")]
    assert len(entries) > 3
    wrong = [f"{p} {p.lstat().st_uid}:{p.lstat().st_gid}" for p in entries
             if (p.lstat().st_uid, p.lstat().st_gid) != (NOBODY.pw_uid, NOBODY.pw_gid)]
    assert not wrong, wrong
    assert (state / "status.json").stat().st_mode & 0o777 == 0o600


def test_credentials_dir_gives_manual_commands_the_dsn(source_dsn, tmp_path):
    config = write_config(tmp_path / "backupd.toml", {
        "source": {"schemas": ["public"]},
        "state": {"dir": str(tmp_path / "state")},
        "destinations": [{"name": "local", "type": "local", "path": str(tmp_path / "backups")}],
    })
    missing = run_cli("--config", str(config), "check-config")
    assert missing.returncode == 2 and "source.dsn: required" in missing.stderr
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "dsn").write_text(source_dsn + "\n")
    found = run_cli("--config", str(config), "--credentials-dir", str(credentials), "doctor")
    assert found.returncode == 0, found.stderr[-2000:]


def _installed_units(root: Path) -> Path:
    """The repository's units as install.sh writes them, with /etc/backupd moved under `root`."""
    units = root / "systemd-units"
    units.mkdir()
    for unit in ("backupd.service", "backupd@.service"):
        text = (REPO / "systemd" / unit).read_text().replace("/etc/backupd/", f"{root}/etc/backupd/")
        (units / unit).write_text(text)
    return units


def test_sudo_backupd_doctor_reads_the_installed_units_credentials(source_dsn, tmp_path):
    """README's `sudo backupd doctor`: no $CREDENTIALS_DIRECTORY outside the unit, so backupd reads
    the LoadCredential= files of the unit that runs this config (backupd.service, and the template's
    instance for /etc/backupd/NAME.toml); a drop-in's `LoadCredential=` reset is honoured."""
    units = _installed_units(tmp_path)
    etc = tmp_path / "etc" / "backupd"
    (etc / "credentials" / "prod").mkdir(parents=True)
    body = {"source": {"schemas": ["public"]}, "state": {"dir": str(tmp_path / "state")},
            "destinations": [{"name": "local", "type": "local", "path": str(tmp_path / "backups")}]}
    main = write_config(etc / "backupd.toml", body)
    prod = write_config(etc / "prod.toml", {**body, "state": {"dir": str(tmp_path / "state-prod")}})
    (etc / "credentials" / "dsn").write_text(source_dsn + "\n")
    (etc / "credentials" / "prod" / "dsn").write_text(source_dsn)
    (etc / "credentials" / "bot_token").write_text("")  # install.sh's empty placeholder
    env = {"BACKUPD_UNIT_DIR": str(units)}
    for config in (main, prod):
        result = run_cli("--config", str(config), "doctor", env=env)
        assert result.returncode == 0, (config, result.stderr[-2000:])
    assert run_cli("--config", str(main), "check-config").returncode == 2  # no unit installed: no DSN

    (units / "backupd.service.d").mkdir()
    (units / "backupd.service.d" / "reset.conf").write_text("[Service]\nLoadCredential=\n")
    reset = run_cli("--config", str(main), "check-config", env=env)
    assert reset.returncode == 2 and "source.dsn: required" in reset.stderr


@needs_nobody
def test_an_unreadable_credential_is_a_config_error_with_key_and_path(public_dir):
    """#21: `$CREDENTIALS_DIRECTORY/dsn` that the service user cannot read ends check-config with
    exit 2 naming source.dsn and the path (not an internal PermissionError), and a credentials
    directory it cannot enter at all stops nothing when the config gives what it needs."""
    credentials = public_dir / "credentials"
    credentials.mkdir(mode=0o755)
    (credentials / "dsn").write_text("postgresql://backup:Secret-pw-42@127.0.0.1:1/db")
    (credentials / "dsn").chmod(0o600)
    config = write_config(public_dir / "backupd.toml", {
        "source": {"schemas": ["public"]},
        "state": {"dir": str(public_dir / "state")},
        "destinations": [{"name": "local", "type": "local", "path": str(public_dir / "backups")}],
    })
    config.chmod(0o644)
    result = _as_nobody("--config", str(config), "check-config", env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert result.returncode == 2, result.stderr
    assert f"source.dsn: cannot read {credentials}/dsn ($CREDENTIALS_DIRECTORY): Permission denied" in result.stderr
    assert "internal error" not in result.stderr and "Secret-pw-42" not in result.stderr

    credentials.chmod(0o700)  # as on this machine's kernel: the service user cannot enter it at all
    dsn_file = public_dir / "dsn"
    dsn_file.write_text("postgresql://backup:Secret-pw-42@127.0.0.1:1/db\n")
    dsn_file.chmod(0o644)
    given = write_config(public_dir / "given.toml", {
        "source": {"dsn_file": str(dsn_file)},
        "state": {"dir": str(public_dir / "state")},
        "destinations": [{"name": "local", "type": "local", "path": str(public_dir / "backups")}],
        "notifiers": [{"type": "webhook", "url": "http://127.0.0.1:9/hook"}],
    })
    given.chmod(0o644)
    ok = _as_nobody("--config", str(given), "check-config", env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert ok.returncode == 0, ok.stderr
    needed = _as_nobody("--config", str(config), "check-config", env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert needed.returncode == 2 and f"source.dsn: cannot read {credentials}/dsn" in needed.stderr


@pytest.fixture
def two_projects() -> Iterator[tuple[StorageApi, StorageApi]]:
    old, new = StorageApi(), StorageApi(key="new-project-service-key-51bd")
    for api in (old, new):
        api.thread.start()
    try:
        yield old, new
    finally:
        for api in (old, new):
            api.server.shutdown()
            api.server.server_close()


def test_restore_storage_into_a_new_project_uses_the_new_projects_key(two_projects, make_config, tmp_path):
    """Journey 4: the old project is gone, the objects go to a new one with its own key. Without
    that key restore-storage refuses (exit 2) rather than send the old key to the new project."""
    old, new = two_projects
    old.buckets = {"avatars": {"u1.jpg": (b"\xff\xd8 jpeg", "image/jpeg")}}
    config = make_config(source={"storage": [{"url": old.url, "service_role_key": KEY, "buckets": []}]},
                         export={"enabled": False})
    assert run_cli("--config", str(config), "backup").returncode == 0
    new.buckets = {"avatars": {}}

    refused = run_cli("--config", str(config), "restore-storage", "latest", "--url", new.url)
    assert refused.returncode == 2
    assert f"--url {new.url}: the configured service_role_key belongs to {old.url}" in refused.stderr
    assert not [r for r in new.requests]

    key_file = tmp_path / "new-key"
    key_file.write_text(new.key + "\n")
    restored = run_cli("--config", str(config), "restore-storage", "latest", "--url", new.url,
                       "--service-role-key-file", str(key_file))
    assert restored.returncode == 0, restored.stderr
    assert new.buckets["avatars"] == old.buckets["avatars"]
    from_env = run_cli("--config", str(config), "restore-storage", "latest", "--url", new.url,
                       env={"SUPABASE_SERVICE_ROLE_KEY": new.key})
    assert from_env.returncode == 0, from_env.stderr
    assert new.key not in restored.stderr + from_env.stderr + restored.stdout


def test_a_local_git_remote_is_not_an_inline_secret(tmp_path):
    """The git `remote` field is a secret (a URL may carry a token), but a local path is not one:
    a 0640 config with a bare remote on this disk does not trip config_insecure."""
    config = write_config(tmp_path / "backupd.toml", {
        "source": {"dsn_file": str(tmp_path / "dsn")},
        "state": {"dir": str(tmp_path / "state")},
        "destinations": [{"name": "git", "type": "git", "path": str(tmp_path / "work"),
                          "remote": str(tmp_path / "remote.git")}],
    })
    (tmp_path / "dsn").write_text("postgresql://backup:Example-pw-1@127.0.0.1:1/db\n")
    config.chmod(0o640)
    result = run_cli("--config", str(config), "check-config")
    assert result.returncode == 0, result.stderr
    assert "config_insecure" not in result.stderr
    config.write_text(config.read_text().replace(str(tmp_path / "remote.git"),
                                                 "https://user:Token-8d7f6e@git.example.com/r.git"))
    flagged = run_cli("--config", str(config), "check-config")
    assert flagged.returncode == 0 and "config_insecure" in flagged.stderr
