"""Connecting to PostgreSQL: psycopg connections with one-line, secret-free errors, and the
split of a DSN into a password-free conninfo (for argv) plus PGPASSWORD (for the environment)."""

from __future__ import annotations

from datetime import timedelta

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backupd.errors import SourceError
from backupd.redact import redact

APPLICATION_NAME = "backupd"


def split_dsn(dsn: str) -> tuple[str, dict[str, str]]:
    """(conninfo without password, environment with PGPASSWORD) for pg_dump/psql child processes."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise SourceError(f"invalid DSN: {redact(str(exc))}") from None
    env: dict[str, str] = {}
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    params.setdefault("application_name", APPLICATION_NAME)
    if params.get("options"):
        # a DSN that sets session options may set a statement_timeout: pg_dump and psql lift it
        # themselves, but only after their first queries, which a tiny timeout can still cancel
        params["options"] = f"{params['options']} -c statement_timeout=0"
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None}), env


def with_dbname(dsn: str, dbname: str) -> str:
    """The same DSN pointing at another database."""
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def describe(dsn: str) -> str:
    """host:port/dbname of a DSN, safe to print."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(invalid DSN)"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def connect(dsn: str, *, timeout: timedelta = timedelta(seconds=15), autocommit: bool = False,
            what: str = "database") -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection; raises SourceError with a one-line, redacted reason."""
    try:
        return psycopg.connect(
            dsn,
            connect_timeout=max(1, int(timeout.total_seconds())),
            autocommit=autocommit,
            application_name=APPLICATION_NAME,
        )
    except psycopg.Error as exc:
        hint = ("give the password through PGPASSWORD, ~/.pgpass, or a file holding the whole DSN"
                if "no password supplied" in str(exc) else None)
        raise SourceError(f"cannot connect to the {what} at {describe(dsn)}: {one_line(exc)}", hint) from None


def one_line(exc: BaseException) -> str:
    """The first meaningful line of a (psycopg) error, redacted."""
    text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else text
    if first.startswith("connection failed:") and len(lines) > 1:
        first = lines[-1]
    return redact(first)


def quote_ident(name: str) -> str:
    """A SQL identifier, double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A SQL string literal (standard_conforming_strings, as every supported server has it)."""
    return "'" + text.replace("'", "''") + "'"


def qualified(schema: str, table: str) -> str:
    """schema.table, both quoted."""
    return f"{quote_ident(schema)}.{quote_ident(table)}"
