"""Supabase connection hints and the dry-run script parser (no database, no CLI needed)."""

from __future__ import annotations

import pytest

from backupd.config import ConfigError, parse_config
from backupd.sources.supabase_cli import parse_dry_run
from backupd.errors import SourceError


def _dsn(dsn: str) -> str:
    config = parse_config({"source": {"dsn": dsn}, "destinations": [{"type": "local", "path": "/tmp/x"}]})
    return config.source.dsn.get_secret_value()


@pytest.mark.parametrize("given, expected", [
    ("postgresql://postgres:pw@db.abc.supabase.co:5432/postgres",
     "postgresql://postgres:pw@db.abc.supabase.co:5432/postgres?sslmode=require"),
    ("postgresql://postgres.abc:pw@aws-0-eu-central-1.pooler.supabase.com:5432/postgres?connect_timeout=5",
     "postgresql://postgres.abc:pw@aws-0-eu-central-1.pooler.supabase.com:5432/postgres?connect_timeout=5&sslmode=require"),
    ("host=db.abc.supabase.co user=postgres password=pw", "host=db.abc.supabase.co user=postgres password=pw sslmode=require"),
    ("postgresql://postgres:pw@db.abc.supabase.co:5432/postgres?sslmode=verify-full",
     "postgresql://postgres:pw@db.abc.supabase.co:5432/postgres?sslmode=verify-full"),
    ("postgresql://postgres:pw@db.example.com:5432/postgres", "postgresql://postgres:pw@db.example.com:5432/postgres"),
])
def test_sslmode_defaults_to_require_for_supabase_hosts(given: str, expected: str) -> None:
    assert _dsn(given) == expected


def test_transaction_pooler_port_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigError) as caught:
        _dsn("postgresql://postgres.abc:pw@aws-0-eu.pooler.supabase.com:6543/postgres")
    assert "source.dsn" in str(caught.value) and "5432" in str(caught.value) and "pw" not in str(caught.value)


SCRIPT = r'''#!/usr/bin/env bash
set -euo pipefail

export PGHOST="127.0.0.1"
export PGPASSWORD="backupd-placeholder-password"
echo "SET session_replication_role = replica;
"
pg_dump \
    --data-only \
    --schema=public|app \
    --exclude-table \"public\".\"logs\" \
| sed -E 's/^\\(un)?restrict .*$/-- &/' \
| sed -E "/^--/d" \
| uniq
echo "RESET ALL;"
'''


def test_dry_run_script_becomes_argv_and_filters() -> None:
    plan = parse_dry_run(SCRIPT)
    assert plan.program == "pg_dump"
    assert plan.args == ["--data-only", "--schema=public|app", "--exclude-table", '"public"."logs"']
    assert plan.prologue == b"SET session_replication_role = replica;\n\n" and plan.epilogue == b"RESET ALL;\n"
    assert plan.password_seen == ["backupd-placeholder-password"]
    out = list(plan.filter.run([b"\\restrict abc\n", b"COPY x;\n", b"COPY x;\n", b"-- comment\n", b"a"]))
    assert out == [b"COPY x;\n", b"a"]


def test_unknown_script_shape_is_refused() -> None:
    with pytest.raises(SourceError, match="unexpected line"):
        parse_dry_run("docker run supabase/postgres pg_dump\n")
