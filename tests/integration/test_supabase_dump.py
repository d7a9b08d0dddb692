"""dump.tool = "supabase": the real Supabase CLI's --dry-run pipeline, run by backupd against a real
PostgreSQL seeded like a Supabase project, restored into another server prepared with the skeleton."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
import zstandard

from backupd.localpg import LocalPostgres
from backupd.supabase_skeleton import skeleton_sql
from tests.conftest import run_cli, table_checksums
from tests.supabase_platform import APP_SECURITY_SQL

CLI_VERSION = "2.117.0"
CLI_CACHE = Path(os.environ.get("BACKUPD_TEST_CACHE", Path.home() / ".cache" / "backupd-tests")) / "supabase-cli"


@pytest.fixture(scope="session")
def supabase_cli() -> Path:
    """The Supabase CLI from npm, installed once into a cache folder reused across runs."""
    binary = CLI_CACHE / "node_modules" / ".bin" / "supabase"
    version_file = CLI_CACHE / "node_modules" / "supabase" / "package.json"
    npm = shutil.which("npm")
    CLI_CACHE.mkdir(parents=True, exist_ok=True)
    # one installer at a time: parallel test workers (pytest -n) share the cache folder
    with open(CLI_CACHE.parent / "supabase-cli.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists() and version_file.exists() and json.loads(version_file.read_text())["version"] == CLI_VERSION:
            return CLI_CACHE
        if npm is None:
            pytest.skip("npm is not installed: cannot install the Supabase CLI (npm i -E supabase@2.117.0)")
        subprocess.run([npm, "i", "-E", "--no-audit", "--no-fund", "--prefix", str(CLI_CACHE),
                        f"supabase@{CLI_VERSION}"], check=True, capture_output=True, timeout=600)
    return CLI_CACHE


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    """A second, pristine PostgreSQL cluster: no anon/authenticated roles, no auth schema."""
    server = LocalPostgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _wrapper(folder: Path, name: str, target: str, record: Path) -> Path:
    """An executable that appends its argv (one JSON list a line) to `record`, then runs `target`."""
    script = folder / name
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"os.execv({target!r}, [{target!r}] + sys.argv[1:])\n"
    )
    script.chmod(0o755)
    return script


def _seed_supabase_like(dsn: str, login_role: str, password: str) -> None:
    """What a Supabase project's database holds around the app's tables."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(skeleton_sql())
        conn.execute(f"""
            INSERT INTO auth.users (id, aud, role, email, encrypted_password, raw_app_meta_data,
                                    raw_user_meta_data, created_at, updated_at, email_confirmed_at)
            SELECT id, 'authenticated', 'authenticated', email, '$2a$10$hash', '{{"provider":"email"}}',
                   jsonb_build_object('name', display_name), created_at, updated_at, created_at
            FROM public.users;
            INSERT INTO auth.identities (provider_id, user_id, identity_data, provider, created_at)
            SELECT id::text, id, jsonb_build_object('sub', id::text, 'email', email), 'email', created_at
            FROM public.users;
            ALTER TABLE public.users ADD CONSTRAINT users_id_auth_fkey
                FOREIGN KEY (id) REFERENCES auth.users (id) ON DELETE CASCADE;
            INSERT INTO storage.buckets (id, name, public) VALUES ('attachments', 'attachments', false);
            CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA extensions;
        """)
        conn.execute(APP_SECURITY_SQL)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login_role,)).fetchone()
        if not exists:
            conn.execute(f'CREATE ROLE "{login_role}" LOGIN SUPERUSER')
        conn.execute(f"ALTER ROLE \"{login_role}\" PASSWORD '{password.replace(chr(39), chr(39) * 2)}'")
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'jarvis_reporting'").fetchone():
            conn.execute("CREATE ROLE jarvis_reporting NOLOGIN")
        conn.execute("GRANT SELECT ON public.tasks TO jarvis_reporting")


def _decompress(path: Path) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())


def _psql(server: LocalPostgres, dbname: str, sql: bytes) -> None:
    result = subprocess.run(
        [str(server.bin_dir / "psql"), "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1",
         "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-d", dbname],
        input=sql, capture_output=True, env={**os.environ, "PGPASSWORD": server.password})
    assert result.returncode == 0, result.stderr.decode()[-3000:]


def _fingerprint(dsn: str, table: str, key: str) -> tuple[int, str]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t.{key}), '')) "
                           f"FROM {table} t").fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


@pytest.mark.slow
def test_supabase_dump_restores_into_skeleton_and_never_shows_the_password(
        supabase_cli, pg, source_dsn, make_config, plain_server, tmp_path):
    """The CLI's pipeline (schema, data --use-copy, roles) runs on the snapshot with the picked pg_dump;
    schema + data + roles restore into a plain server prepared with the skeleton; the app's tables,
    auth.users and storage.objects match the source; policies, grants and roles come back; the
    password is in no argv, no file and no log."""
    login_role = f"backupd_su_{secrets.token_hex(3)}"
    password = f'pa$$`w"rd\'{secrets.token_hex(4)}'
    _seed_supabase_like(source_dsn, login_role, password)
    database = source_dsn.rsplit("/", 1)[1]
    dsn = f"postgresql://{login_role}:{quote(password, safe='')}@127.0.0.1:{pg.server.port}/{database}"

    record = tmp_path / "argv.jsonl"
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    pg_dump = _wrapper(wrappers, "pg_dump", str(pg.server.bin_dir / "pg_dump"), record)
    _wrapper(wrappers, "pg_dumpall", str(pg.server.bin_dir / "pg_dumpall"), record)
    cli = _wrapper(wrappers, "supabase", str(supabase_cli / "node_modules" / ".bin" / "supabase"), record)
    config = make_config(source={"dsn": dsn},
                         dump={"tool": "supabase", "pg_dump": str(pg_dump), "supabase_cli": str(cli)})
    result = run_cli("--config", str(config), "-v", "--log-format", "json", "backup")
    assert result.returncode == 0, result.stderr[-3000:]

    backup = next(p for p in (tmp_path / "backups").iterdir() if p.is_dir())
    manifest = json.loads((backup / "manifest.json").read_text())
    contents = {a["content"]: a["name"] for a in manifest["artifacts"]}
    assert contents["schema"] == "schema.sql.zst" and contents["data"] == "data.sql.zst"
    assert contents["roles"] == "roles.sql.zst"

    calls = [json.loads(line) for line in record.read_text().splitlines()]
    dumps = [c for c in calls if c[:1] != ["db"] and ("--schema-only" in c or "--data-only" in c)]
    assert len(dumps) == 2 and all("--snapshot" in c and manifest["snapshot"] in c for c in dumps)
    assert any("--roles-only" in c for c in calls)
    assert any(c[:3] == ["db", "dump", "--dry-run"] for c in calls)
    for argv in calls:
        assert password not in " ".join(argv) and quote(password, safe="") not in " ".join(argv)

    everything = result.stdout + result.stderr
    assert password not in everything and quote(password, safe="") not in everything
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix != ".toml":
            data = _decompress(path) if path.suffix == ".zst" else path.read_bytes()
            assert password.encode() not in data, path
            assert quote(password, safe="").encode() not in data, path

    schema = _decompress(backup / "schema.sql.zst").decode()
    data = _decompress(backup / "data.sql.zst").decode()
    roles = _decompress(backup / "roles.sql.zst").decode()
    # Supabase's own filters: internal schemas out, no psql meta commands, no comments in the schema
    assert 'CREATE TABLE IF NOT EXISTS "public"."tasks"' in schema
    assert 'CREATE TABLE IF NOT EXISTS "auth"' not in schema and "\\restrict" not in schema
    assert not any(line.startswith("--") for line in schema.splitlines())
    assert data.startswith("SET session_replication_role = replica;") and data.rstrip().endswith("RESET ALL;")
    assert 'COPY "auth"."users"' in data and 'COPY "storage"."objects"' in data
    assert '"auth"."schema_migrations"' not in data
    assert 'CREATE ROLE "jarvis_reporting"' in roles and 'CREATE ROLE "anon"' not in roles

    target_db = "restored"
    plain_server.psql(f'CREATE DATABASE "{target_db}"')
    target = plain_server.dsn(target_db)
    # the operator's path: skeleton, roles.sql, schema.sql, data.sql in one transaction
    restored = run_cli("--config", str(config), "restore", "latest", "--sql", "--supabase-skeleton",
                       "--target", target)
    assert restored.returncode == 0, restored.stderr[-3000:]
    # the skeleton is idempotent: applying it again over the restored database changes nothing
    _psql(plain_server, target_db, skeleton_sql().encode())

    assert table_checksums(target, manifest["tables"]) == table_checksums(source_dsn, manifest["tables"])
    for table, key in (("auth.users", "id"), ("auth.identities", "id"), ("storage.objects", "id"),
                       ("storage.buckets", "id")):
        assert _fingerprint(target, table, key) == _fingerprint(source_dsn, table, key), table
    with psycopg.connect(target) as conn:
        policies = {r[0] for r in conn.execute("SELECT policyname FROM pg_policies WHERE schemaname = 'public'")}
        assert policies == {"owners see their projects", "service role does anything"}
        assert conn.execute("SELECT relrowsecurity FROM pg_class WHERE oid = 'public.projects'::regclass"
                            ).fetchone() == (True,)
        assert conn.execute("SELECT has_table_privilege('anon', 'public.tasks', 'SELECT')").fetchone() == (True,)
        assert conn.execute("SELECT has_table_privilege('jarvis_reporting', 'public.tasks', 'SELECT')"
                            ).fetchone() == (True,)
        # RLS works as on Supabase: a JWT subject sees only the projects it owns
        owner = conn.execute("SELECT owner_id FROM public.projects LIMIT 1").fetchone()[0]
        conn.execute("SET LOCAL ROLE authenticated")
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps({"sub": str(owner)}),))
        visible = conn.execute("SELECT DISTINCT owner_id FROM public.projects").fetchall()
        assert visible == [(owner,)]


def test_missing_cli_is_one_line_with_the_install_command(make_config, tmp_path):
    """No Supabase CLI where configured: exit 1, one error line that says how to install it."""
    config = make_config(dump={"tool": "supabase", "supabase_cli": str(tmp_path / "nowhere" / "supabase")})
    result = run_cli("--config", str(config), "-q", "backup")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("backupd: error")]
    assert len(errors) == 1, result.stderr
    assert "does not exist" in errors[0] and "npm i -E --prefix" in errors[0] and "supabase@2.117.0" in errors[0]
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").iterdir())
