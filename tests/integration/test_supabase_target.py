"""`restore --sql` into a real Supabase project: a database built from Supabase's own public
migrations (tests/supabase_platform.py), restored into as the demoted `postgres` role, from a real
backup (`dump.tool = "supabase"`, the CLI's pipeline) of a Supabase-shaped source."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import GEN_DATA, SCHEMA_SQL, run_cli, table_checksums
from tests.integration.test_supabase_dump import supabase_cli  # noqa: F401 - the CLI fixture
from tests.supabase_platform import APP_SECURITY_SQL

pytestmark = pytest.mark.slow

SEED = """
INSERT INTO auth.users (instance_id, id, aud, role, email, encrypted_password, raw_app_meta_data,
                        raw_user_meta_data, created_at, updated_at, confirmed_at)
SELECT '00000000-0000-0000-0000-000000000000', id, 'authenticated', 'authenticated', email, '$2a$10$hash',
       '{"provider":"email"}', jsonb_build_object('name', display_name), created_at, updated_at, created_at
FROM public.users;
ALTER TABLE public.users ADD CONSTRAINT users_id_auth_fkey
    FOREIGN KEY (id) REFERENCES auth.users (id) ON DELETE CASCADE;
INSERT INTO storage.buckets (id, name) VALUES ('attachments', 'attachments');
ALTER PUBLICATION supabase_realtime ADD TABLE public.tasks, public.comments;
"""


def _seed_source(platform, name: str) -> str:
    """A project database holding the Jarvis app (as `postgres`), its users in auth.users, objects
    in storage, RLS policies, grants, realtime publication members, and an app role of its own."""
    dsn = platform.dsn(name)
    subprocess.run([sys.executable, str(GEN_DATA), "--dsn", dsn, "--tasks", "200", "--schema", str(SCHEMA_SQL)],
                   check=True, capture_output=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEED)
        conn.execute(APP_SECURITY_SQL)
        conn.execute("CREATE ROLE jarvis_reporting NOLOGIN")
        conn.execute("GRANT SELECT ON public.tasks TO jarvis_reporting")
    # a role only the platform's superuser could have made: BYPASSRLS
    with psycopg.connect(platform.dsn(name, user="supabase_admin"), autocommit=True) as conn:
        conn.execute("CREATE ROLE jarvis_admin NOLOGIN BYPASSRLS")
    return dsn


def _drop_app_roles(platform, source: str) -> None:
    """The app's roles are cluster-wide: gone before the restore, as in a new project elsewhere."""
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("REVOKE ALL ON public.tasks FROM jarvis_reporting")
        conn.execute("DROP ROLE jarvis_reporting")
    with psycopg.connect(platform.server.dsn("postgres"), autocommit=True) as conn:
        conn.execute("DROP ROLE jarvis_admin")


def _platform_rows(dsn: str) -> dict[str, list[tuple]]:
    """Every row of every table in auth and storage (ordered), to compare two databases."""
    rows = {}
    with psycopg.connect(dsn) as conn:
        tables = conn.execute("SELECT schemaname || '.' || tablename FROM pg_tables "
                              "WHERE schemaname IN ('auth', 'storage') ORDER BY 1").fetchall()
        for (table,) in tables:
            rows[table] = conn.execute(f"SELECT t::text FROM {table} t ORDER BY 1").fetchall()
    return rows


def _security(dsn: str) -> dict[str, object]:
    """RLS flags, policies, table grants and publication members of the public schema."""
    with psycopg.connect(dsn) as conn:
        def q(sql: str) -> list[tuple]:
            return conn.execute(sql).fetchall()
        return {
            "rls": q("SELECT relname, relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE nspname = 'public' AND relkind = 'r' ORDER BY 1"),
            "policies": q("SELECT tablename, policyname, roles::text, cmd, qual FROM pg_policies "
                          "WHERE schemaname = 'public' ORDER BY 1, 2"),
            "grants": q("SELECT table_name, grantee, privilege_type FROM information_schema.role_table_grants "
                        "WHERE table_schema = 'public' ORDER BY 1, 2, 3"),
            "publication": q("SELECT schemaname, tablename FROM pg_publication_tables "
                             "WHERE pubname = 'supabase_realtime' ORDER BY 1, 2"),
        }


def test_restore_sql_into_a_new_supabase_project(supabase_platform, supabase_cli, tmp_path):  # noqa: F811
    """A backup of a Supabase project restores with `restore --sql` into a new project as
    `postgres`: every public table (rows and checksums), every auth/storage row, RLS flags,
    policies, grants, publication members and the app's own roles come back; the platform's own
    relations are not counted as "not empty". What a non-superuser target cannot take is skipped
    with a warning naming the role (an existing role, BYPASSRLS, GRANT ... ON PARAMETER). A
    restore into a project whose auth.users already holds rows is refused naming that table, the
    target untouched; so is one into a project that already has the app's tables."""
    source = _seed_source(supabase_platform, supabase_platform.new_database("src"))
    config = tmp_path / "backupd.toml"
    config.write_text(
        f'[source]\ndsn = "{source}"\n[dump]\ntool = "supabase"\nsupabase_cli = "{supabase_cli}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n'
        f'[[destinations]]\nname = "local"\ntype = "local"\npath = "{tmp_path / "backups"}"\n')
    config.chmod(0o600)
    backup = run_cli("--config", str(config), "-q", "backup")
    assert backup.returncode == 0, backup.stderr[-3000:]
    manifest = json.loads(next((tmp_path / "backups").glob("*/manifest.json")).read_text())
    expected = {"checksums": table_checksums(source, manifest["tables"]), "platform": _platform_rows(source),
                "security": _security(source)}
    _drop_app_roles(supabase_platform, source)

    occupied = supabase_platform.dsn(supabase_platform.new_database("used"))
    with psycopg.connect(occupied, autocommit=True) as conn:
        conn.execute("INSERT INTO auth.users (id, email) VALUES (gen_random_uuid(), 'early@example.com')")
    refused = run_cli("--config", str(config), "restore", "latest", "--sql", "--target", occupied, "--yes")
    assert refused.returncode == 1, refused.stderr[-3000:]
    error = [line for line in refused.stderr.splitlines() if line.startswith("backupd: error:")]
    assert len(error) == 1 and "auth.users" in error[0] and "holds rows" in error[0], refused.stderr
    assert _platform_rows(occupied)["auth.users"] and len(_platform_rows(occupied)["auth.users"]) == 1
    with psycopg.connect(occupied) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'jarvis_reporting'").fetchone() is None

    target = supabase_platform.dsn(supabase_platform.new_database("dst"))
    restored = run_cli("--config", str(config), "restore", "latest", "--sql", "--target", target, "--yes")
    assert restored.returncode == 0, restored.stderr[-3000:]
    warnings = [line for line in restored.stderr.splitlines() if "event=role_skipped" in line]
    assert any("role anon already exists on the target: kept as it is" in w for w in warnings), warnings
    assert any("role jarvis_admin: BYPASSRLS needs a superuser on the target" in w for w in warnings), warnings
    assert any("role postgres:" in w and "ON PARAMETER" in w for w in warnings), warnings
    assert not any("jarvis_reporting" in w for w in warnings), warnings
    assert "note: role jarvis_admin: BYPASSRLS needs a superuser" in restored.stdout

    assert table_checksums(target, manifest["tables"]) == expected["checksums"]
    assert _platform_rows(target) == expected["platform"]
    assert _security(target) == expected["security"]
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = 'jarvis_admin'"
                            ).fetchone() == (False, False)

    again = run_cli("--config", str(config), "restore", "latest", "--sql", "--target", target, "--yes")
    assert again.returncode == 1
    assert "the target Supabase project is not empty" in again.stderr and "public." in again.stderr
