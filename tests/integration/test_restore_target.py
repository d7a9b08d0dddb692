"""`restore --target` without a password in any argv (issue #17 item 7): the DSN from
`--target-file`, or a password-less DSN with PGPASSWORD or ~/.pgpass; the password never stands
in backupd's argv nor in any child's (psql's argv as logged, and /proc/*/cmdline while it runs)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import REPO, run_cli, table_checksums


def _without_password(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    params.pop("password", None)
    return make_conninfo(**{k: str(v) for k, v in params.items()})


def _restore_watching_argvs(args: list[str], password: str, env: dict[str, str]) -> tuple[int, str, list[str]]:
    """Run `backupd -v restore ARGS`; returns (exit code, stderr, every /proc cmdline seen holding
    the password while it ran)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE", "JOURNAL_STREAM")}
    full_env.update(env)
    process = subprocess.Popen([sys.executable, "-m", "backupd", "-v", "restore", *args], cwd=REPO, env=full_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    except OSError:
                        continue
                    if password in cmdline:
                        seen.append(cmdline)
            done.wait(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        _, stderr = process.communicate(timeout=300)
    finally:
        done.set()
        watcher.join()
    return process.returncode, stderr, seen


@pytest.mark.slow
def test_restore_takes_the_password_from_a_target_file_pgpassword_or_pgpass(make_config, source_dsn, pg, tmp_path):
    """Three `restore --sql` runs into empty databases, each supplying the password differently;
    every one restores the source's rows, logs psql's argv, and no argv ever holds the password.
    Without any password the restore fails with a hint naming the three ways."""
    config = make_config()
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    password = pg.server.password
    assert password and len(password) >= 8

    by_file = pg.fresh_db("tfile", template=None)
    target_file = tmp_path / "target.dsn"
    target_file.write_text(by_file + "\n")
    target_file.chmod(0o600)
    code, stderr, seen = _restore_watching_argvs(
        ["--config", str(config), "latest", "--target-file", str(target_file), "--sql"], password, {})
    assert code == 0, stderr[-3000:]
    assert "psql" in stderr and "command_started" in stderr  # the children's argv, logged at debug
    assert password not in stderr and not seen, seen

    by_env = pg.fresh_db("tenv", template=None)
    code, stderr, seen = _restore_watching_argvs(
        ["--config", str(config), "latest", "--target", _without_password(by_env), "--sql"], password,
        {"PGPASSWORD": password})
    assert code == 0, stderr[-3000:]
    assert password not in stderr and not seen, seen

    by_pgpass = pg.fresh_db("tpgpass", template=None)
    home = tmp_path / "home"
    home.mkdir()
    params = conninfo_to_dict(by_pgpass)
    (home / ".pgpass").write_text(f"{params['host']}:{params['port']}:*:{params['user']}:{password}\n")
    (home / ".pgpass").chmod(0o600)
    code, stderr, seen = _restore_watching_argvs(
        ["--config", str(config), "latest", "--target", _without_password(by_pgpass), "--sql"], password,
        {"HOME": str(home)})
    assert code == 0, stderr[-3000:]
    assert password not in stderr and not seen, seen

    expected = table_checksums(source_dsn)
    for restored in (by_file, by_env, by_pgpass):
        assert table_checksums(restored) == expected

    no_password = pg.fresh_db("tnone", template=None)
    code, stderr, _ = _restore_watching_argvs(
        ["--config", str(config), "latest", "--target", _without_password(no_password), "--sql"], password,
        {"HOME": str(tmp_path)})
    assert code == 1
    error = [line for line in stderr.splitlines() if line.startswith("backupd: error")]
    assert error and "no password supplied" in error[0], stderr[-2000:]
    assert "PGPASSWORD, ~/.pgpass" in stderr


def test_target_file_that_cannot_be_read_is_a_usage_error(make_config, tmp_path):
    """A missing or empty --target-file: exit 2, one line naming the file; --target and
    --target-file together are refused by the parser."""
    config = make_config()
    missing = run_cli("--config", str(config), "restore", "latest", "--target-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "cannot read --target-file" in missing.stderr
    empty = tmp_path / "empty.dsn"
    empty.write_text("\n")
    result = run_cli("--config", str(config), "restore", "latest", "--target-file", str(empty))
    assert result.returncode == 2 and "holds no DSN" in result.stderr
    both = run_cli("--config", str(config), "restore", "latest", "--target", "dbname=x", "--target-file", str(empty))
    assert both.returncode == 2
