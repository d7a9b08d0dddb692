"""A PostgreSQL cluster shaped like a new Supabase project, built from Supabase's own public
migrations (`../shared/fixtures/supabase-postgres`, see its README) the way their `migrate.sh`
builds one: a fresh cluster whose bootstrap superuser is `supabase_admin`; `postgres` created as a
superuser and made owner of the `postgres` database; every `init-scripts/*.sql` as `postgres`,
then every `migrations/*.sql` as `supabase_admin`, in file-name order, with psql *without*
ON_ERROR_STOP so the statements that need extensions plain PostgreSQL lacks (pgjwt, pgsodium,
pg_graphql, ...) fail alone. `10000000000000_demote-postgres.sql` leaves `postgres` a
non-superuser with CREATEROLE and REPLICATION, a member of `supabase_auth_admin` and
`supabase_storage_admin`, as on the platform.

One thing of the platform is emulated: Supabase's `supautils` hook lets `postgres` set
`session_replication_role` (which a Supabase data dump sets); PostgreSQL 15 grants the same with
`GRANT SET ON PARAMETER`. Nothing else is added.

The finished `postgres` database is copied once into the template database `supabase_template`;
`new_database()` makes a fresh project database from it in well under a second, so one cluster
serves every test of the session (`supabase_platform` fixture in tests/conftest.py). Roles are
cluster-wide: a test that restores roles sees those of the tests before it.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import psycopg

from backupd.localpg import LocalPostgres

MIGRATIONS = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "supabase-postgres"
TEMPLATE = "supabase_template"
# the schemas and roles the platform creates (what `restore --sql` must recognise and leave alone)
PLATFORM_SCHEMAS = ("auth", "storage", "extensions", "realtime", "graphql_public", "pgbouncer")
# what an app on Supabase adds around its tables (the Jarvis fixture's): Storage object rows,
# RLS policies calling auth.uid(), grants to the API roles. Needs auth.users rows and a bucket
# `attachments` first.
APP_SECURITY_SQL = """
INSERT INTO storage.objects (bucket_id, name, owner, metadata)
SELECT 'attachments', storage_path, uploaded_by, jsonb_build_object('size', size_bytes)
FROM public.attachments LIMIT 50;
ALTER TABLE public.projects ENABLE ROW LEVEL SECURITY;
CREATE POLICY "owners see their projects" ON public.projects FOR SELECT TO authenticated
    USING (owner_id = auth.uid());
ALTER TABLE public.tasks ENABLE ROW LEVEL SECURITY;
CREATE POLICY "service role does anything" ON public.tasks TO service_role USING (true);
GRANT SELECT ON ALL TABLES IN SCHEMA public TO anon, authenticated;
GRANT ALL ON ALL TABLES IN SCHEMA public TO service_role;
"""


class SupabasePlatform:
    """The cluster, its passwords, and fresh project databases made from the template."""

    def __init__(self, server: LocalPostgres) -> None:
        self.server = server

    @property
    def password(self) -> str:
        """The password of both `supabase_admin` and `postgres` (as a project's dashboard shows one)."""
        return self.server.password

    def dsn(self, dbname: str, user: str = "postgres") -> str:
        """A DSN for `dbname` as `user` (default: the demoted `postgres`, what a project hands out)."""
        return self.server.dsn(dbname, user=user)

    def new_database(self, prefix: str = "project") -> str:
        """A fresh database shaped like a new project (owned by `postgres`); returns its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}" OWNER postgres')
            conn.execute(f'GRANT ALL ON DATABASE "{name}" TO dashboard_user')
        return name


def _psql(server: LocalPostgres, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(server.bin_dir / "psql"), "-X", "-q", "--no-password", "-h", "127.0.0.1",
                           "-p", str(server.port), "-U", user, "-d", "postgres", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PGPASSWORD": server.password})


def build_platform(base_dir: Path | None = None) -> SupabasePlatform:
    """Start a new cluster in `base_dir` (default: a new temporary folder) and apply Supabase's migrations to it (about 15 s).

    Raises AssertionError naming the file when a step fails in a way the migrations never do on
    the platform (anything but a missing extension or an object of one)."""
    if not (MIGRATIONS / "migrate.sh").exists():
        raise AssertionError(f"Supabase's migrations are not at {MIGRATIONS} (see its README)")
    server = LocalPostgres(base_dir, superuser="supabase_admin")
    server.start()
    try:
        bootstrap = _psql(server, "supabase_admin", "-v", "ON_ERROR_STOP=1", "-c",
                          f"create role postgres superuser login password '{server.password}';"
                          " alter database postgres owner to postgres;")
        assert bootstrap.returncode == 0, bootstrap.stderr
        steps = [("postgres", p) for p in sorted((MIGRATIONS / "init-scripts").glob("*.sql"))]
        steps += [("supabase_admin", p) for p in sorted((MIGRATIONS / "migrations").glob("*.sql"))]
        for user, path in steps:
            result = _psql(server, user, "-f", str(path))
            for line in result.stderr.splitlines():
                # tolerated as migrate.sh's images never see them: extensions plain PostgreSQL lacks
                if "ERROR:" in line and not any(word in line for word in (
                        "is not available", "pgsodium", "does not exist")):
                    raise AssertionError(f"{path.name}: {line}")
        finish = _psql(server, "supabase_admin", "-v", "ON_ERROR_STOP=1",
                       "-c", "GRANT SET ON PARAMETER session_replication_role TO postgres",
                       "-c", f'CREATE DATABASE "{TEMPLATE}" TEMPLATE postgres OWNER postgres',
                       "-c", f'ALTER DATABASE "{TEMPLATE}" IS_TEMPLATE true')
        assert finish.returncode == 0, finish.stderr
    except BaseException:
        server.stop()
        raise
    return SupabasePlatform(server)
