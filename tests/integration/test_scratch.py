"""Where backups are loaded for restore tests and drills (`backupd.scratch`, `backupd.localpg`):
the throwaway server's folder and authentication, parent folders left alone, and a scratch_dsn
role that holds server-side powers refused. Real PostgreSQL, real psql."""

from __future__ import annotations

import os
import pwd
import subprocess
import uuid
from pathlib import Path

import pytest

from backupd.errors import BackupdError
from backupd.localpg import LocalPostgres
from tests.conftest import run_cli


def test_throwaway_server_folder_is_private_and_asks_for_a_password(pg):
    """The session's server is a LocalPostgres like the drills' throwaway one: its folder (data
    and socket) is 0700 and belongs to the server's user, pg_hba.conf trusts nobody, and psql on
    the socket without the password is refused."""
    server = pg.server
    info = server.base_dir.stat()
    assert info.st_mode & 0o777 == 0o700
    if server.user:
        assert info.st_uid == pwd.getpwnam(server.user).pw_uid
    assert (server.base_dir / f".s.PGSQL.{server.port}").exists()
    hba = (server.data_dir / "pg_hba.conf").read_text().splitlines()
    rules = [line.split() for line in hba if line.strip() and not line.lstrip().startswith("#")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules), rules
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = subprocess.run(["psql", "-X", "-h", str(server.base_dir), "-p", str(server.port), "-U", "postgres",
                             "-w", "-c", "SELECT 1"], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode != 0 and "password" in result.stderr, result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as another user only under root")
def test_a_folder_the_server_user_cannot_reach_is_refused_and_no_parent_is_changed(tmp_path):
    """pytest's own folders are 0700 root: a server folder below them is refused with one line
    naming the closed parent, and every parent keeps its mode (never chmod'ed)."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    parents = [closed, *closed.parents]
    before = {p: p.stat().st_mode for p in parents}
    server = LocalPostgres(closed / "pg")
    with pytest.raises(BackupdError, match="cannot reach"):
        server.start()
    assert {p: p.stat().st_mode for p in parents} == before


def test_a_scratch_role_with_server_program_power_is_refused(make_config, pg, tmp_path):
    """[verify] scratch_dsn whose role may CREATEDB but is a member of pg_execute_server_program
    (no superuser, no CREATEROLE to make a clean role): the restore test refuses to load a backup
    as that role, naming the power; nothing is created on that server."""
    role = f"powerful_{uuid.uuid4().hex[:8]}"
    pg.execute(pg.dsn(), f"CREATE ROLE {role} LOGIN PASSWORD 'powerful-pw' CREATEDB")
    pg.execute(pg.dsn(), f"GRANT pg_execute_server_program TO {role}")
    scratch = f"postgresql://{role}:powerful-pw@127.0.0.1:{pg.server.port}/postgres"
    config = make_config(verify={"scratch_dsn": scratch})
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    before = {r[0] for r in pg.execute(pg.dsn(), "SELECT datname FROM pg_database")}
    result = run_cli("--config", str(config), "verify", "latest", "--restore-test")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pg_execute_server_program" in result.stderr and "powerful-pw" not in result.stderr + result.stdout
    assert {r[0] for r in pg.execute(pg.dsn(), "SELECT datname FROM pg_database")} == before
    assert Path(tmp_path / "state").exists()
