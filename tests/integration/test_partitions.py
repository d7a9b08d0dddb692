"""Partitioned and inherited tables (issue #17 item 4): `exclude_columns` hold for every partition
and inheritance child in every artifact, each row is backed up exactly once, and the backup
restores both ways (`--sql` and the JSON restore) with the source's row counts."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.conftest import run_cli

SECRET = b"leak-check.example"
TABLES = ["users", "users_eu", "users_other", "accounts", "accounts_archive"]


def _schema(email_required: bool) -> str:
    not_null = " NOT NULL" if email_required else ""
    return f"""
        CREATE TABLE users (id int, region text, email text{not_null}, name text,
                            PRIMARY KEY (id, region)) PARTITION BY LIST (region);
        CREATE TABLE users_eu PARTITION OF users FOR VALUES IN ('eu');
        CREATE TABLE users_other PARTITION OF users DEFAULT;
        CREATE TABLE accounts (id int PRIMARY KEY, email text, plan text);
        CREATE TABLE accounts_archive (closed date, PRIMARY KEY (id)) INHERITS (accounts);
    """


def _source(pg: Any) -> str:
    dsn = pg.fresh_db("parts", template=None)
    pg.execute(dsn, _schema(email_required=True))
    pg.execute(dsn, f"""
        INSERT INTO users SELECT g, CASE WHEN g % 3 = 0 THEN 'eu' ELSE 'us' END,
                                 'user' || g || '@{SECRET.decode()}', 'name ' || g FROM generate_series(1, 30) g;
        INSERT INTO accounts SELECT g, 'acct' || g || '@{SECRET.decode()}', 'free' FROM generate_series(1, 10) g;
        INSERT INTO accounts_archive SELECT g, 'old' || g || '@{SECRET.decode()}', 'pro', '2020-01-01'
            FROM generate_series(11, 15) g;
    """)
    return dsn


def _counts(pg: Any, dsn: str) -> dict[str, int]:
    return {t: pg.execute(dsn, f"SELECT count(*) FROM ONLY {t}")[0][0] if t.startswith("accounts")
            else pg.execute(dsn, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


def _plain(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def _restore_both_ways(pg: Any, config: Path, source_counts: dict[str, int]) -> tuple[str, str]:
    """`restore latest --sql` into an empty database and the JSON restore (replace) into the
    schema; both hold the source's row counts. Returns the two targets' DSNs."""
    sql_target = pg.fresh_db("parts_sql", template=None)
    restored = run_cli("--config", str(config), "-q", "restore", "latest", "--target", sql_target, "--sql")
    assert restored.returncode == 0, restored.stderr
    assert _counts(pg, sql_target) == source_counts
    json_target = pg.fresh_db("parts_json", template=None)
    pg.execute(json_target, _schema(email_required=False))
    restored = run_cli("--config", str(config), "-q", "restore", "latest", "--target", json_target,
                       "--strategy", "replace", "--yes")
    assert restored.returncode == 0, restored.stderr
    assert _counts(pg, json_target) == source_counts
    return sql_target, json_target


@pytest.mark.slow
def test_excluded_columns_of_partitions_and_children_never_leave_and_rows_restore_once(make_config, pg, tmp_path):
    """A partitioned `users` (leaf `users_eu`) and an inheritance child `accounts_archive`, their
    parents' `email` excluded: no artifact (decompressed), no git commit holds an email; the
    export holds each row once; `restore --sql` and the JSON restore give the source's counts."""
    source = _source(pg)
    config = make_config(
        source={"dsn": source, "exclude_columns": {"users": ["email"], "accounts": ["email"]}},
        export={"formats": ["json", "csv", "sqlite"]},
        destinations=[{"name": "local", "type": "local", "path": str(tmp_path / "backups")},
                      {"name": "git", "type": "git", "path": str(tmp_path / "git")}],
    )
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 0, result.stderr
    backup = next(p for p in (tmp_path / "backups").iterdir() if p.is_dir())
    artifacts = [p for p in backup.rglob("*") if p.is_file()]
    assert {"data.sql.zst", "export.json.zst", "export.sqlite.zst"} <= {p.name for p in artifacts}
    for artifact in artifacts:
        assert SECRET not in _plain(artifact), artifact.name
    history = subprocess.run(["git", "-C", str(tmp_path / "git"), "log", "-p", "--all"],
                             capture_output=True, check=True).stdout
    assert b"accounts_archive" in history and SECRET not in history

    manifest = json.loads((backup / "manifest.json").read_text())
    # a partitioned table is one table of the backup, read through its parent; a child is its own
    assert {k: v["rows"] for k, v in manifest["tables"].items()} == {"users": 30, "accounts": 10,
                                                                      "accounts_archive": 5}
    source_counts = _counts(pg, source)

    sql_target, json_target = _restore_both_ways(pg, config, source_counts)
    assert pg.execute(sql_target, "SELECT count(*) FROM users WHERE email IS NOT NULL")[0][0] == 0
    # a second upsert of the same backup neither duplicates nor fails on keys
    again = run_cli("--config", str(config), "-q", "restore", "latest", "--target", json_target)
    assert again.returncode == 0, again.stderr
    assert _counts(pg, json_target) == source_counts


@pytest.mark.slow
def test_incrementals_and_restore_tests_of_partitioned_and_inherited_tables(make_config, pg, tmp_path):
    """A full, then an incremental after inserts, updates and deletes in partitions and in the
    inheritance child: the restore test of the full passes, and both restores of the incremental
    (its chain) give the source's rows."""
    source = _source(pg)
    config = make_config(source={"dsn": source, "exclude_columns": {"users": ["email"]}},
                         export={"incremental": True})
    assert run_cli("--config", str(config), "-q", "backup", "--full").returncode == 0
    drill = run_cli("--config", str(config), "verify", "latest", "--restore-test", timeout=600)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    pg.execute(source, """
        INSERT INTO users VALUES (100, 'eu', 'x@leak-check.example', 'new eu'), (101, 'us', 'y@leak-check.example', 'new us');
        UPDATE users SET name = 'renamed' WHERE id = 3;
        DELETE FROM users WHERE id = 6;
        UPDATE accounts_archive SET plan = 'gone' WHERE id = 12;
        DELETE FROM accounts WHERE id = 2;
        INSERT INTO accounts_archive VALUES (20, 'z@leak-check.example', 'pro', '2021-01-01');
    """)
    result = run_cli("--config", str(config), "-q", "backup", "--incremental")
    assert result.returncode == 0, result.stderr
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "backups").glob("*/manifest.json")]
    assert sorted(m["kind"] for m in manifests) == ["full", "incremental"]
    source_counts = _counts(pg, source)

    for target in _restore_both_ways(pg, config, source_counts):
        assert pg.execute(target, "SELECT name FROM users WHERE id = 3")[0][0] == "renamed"
        assert pg.execute(target, "SELECT plan FROM accounts_archive WHERE id = 12")[0][0] == "gone"


@pytest.mark.slow
def test_table_exclusions_and_inclusions_carry_partitions_and_children(make_config, pg, tmp_path):
    """`exclude_tables = ["users", "accounts"]` leaves out their partitions and the inheritance
    child too (schema, data, export); `include_tables = ["users"]` takes the partitions along, and
    that backup restores with --sql into an empty database with every row."""
    source = _source(pg)
    pg.execute(source, "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'kept')")
    excluded = make_config(source={"dsn": source, "exclude_tables": ["users", "accounts"]},
                           destinations=[{"name": "local", "type": "local", "path": str(tmp_path / "excluded")}])
    assert run_cli("--config", str(excluded), "-q", "backup").returncode == 0
    backup = next((tmp_path / "excluded").iterdir())
    assert list(json.loads((backup / "manifest.json").read_text())["tables"]) == ["notes"]
    for artifact in ("schema.sql.zst", "data.sql.zst", "export.json.zst"):
        text = _plain(backup / artifact)
        assert b"users" not in text and b"accounts" not in text and SECRET not in text, artifact

    included = make_config(source={"dsn": source, "include_tables": ["users"]},
                           destinations=[{"name": "local", "type": "local", "path": str(tmp_path / "included")}])
    assert run_cli("--config", str(included), "-q", "backup").returncode == 0
    backup = next((tmp_path / "included").iterdir())
    assert b"users_eu" in _plain(backup / "schema.sql.zst") and b"users_eu" in _plain(backup / "data.sql.zst")
    target = pg.fresh_db("parts_incl", template=None)
    restored = run_cli("--config", str(included), "-q", "restore", "latest", "--target", target, "--sql")
    assert restored.returncode == 0, restored.stderr
    assert pg.execute(target, "SELECT count(*) FROM users")[0][0] == 30
    assert pg.execute(target, "SELECT count(*) FROM users_eu")[0][0] == 10
