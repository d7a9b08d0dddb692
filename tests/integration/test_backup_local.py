"""The backup engine end to end against a real PostgreSQL, through the CLI as an operator runs it."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
from pathlib import Path

import psycopg
import zstandard

from tests.conftest import JARVIS_TABLES, run_cli, table_checksums


def _only_backup(folder: Path) -> Path:
    backups = [p for p in folder.iterdir() if p.is_dir()]
    assert len(backups) == 1, backups
    return backups[0]


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_backup_writes_hybrid_backup_with_manifest_matching_database(make_config, source_dsn, tmp_path):
    """One `backupd backup`: schema, data and JSON export, a manifest whose rows and sha256s are right."""
    config = make_config(source={"exclude_columns": {"users": ["email"]}})
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 0, result.stderr
    backup = _only_backup(tmp_path / "backups")
    manifest = _manifest(backup)
    assert manifest["id"] == backup.name and manifest["kind"] == "full"
    assert manifest["snapshot"] and manifest["source"]["server_version_num"] >= 150000
    assert sorted(manifest["tables"]) == sorted(JARVIS_TABLES)
    with psycopg.connect(source_dsn) as conn:
        for table, entry in manifest["tables"].items():
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            assert entry["rows"] == count, table
    names = {a["name"] for a in manifest["artifacts"]}
    assert names == {"schema.sql.zst", "data.sql.zst", "export.json.zst"}
    for artifact in manifest["artifacts"]:
        data = (backup / artifact["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == artifact["sha256"]
        assert len(data) == artifact["bytes"]
    assert "email" not in manifest["tables"]["users"]["columns"]


def test_sql_round_trip_gives_identical_tables(make_config, source_dsn, pg, tmp_path):
    """schema.sql + data.sql through psql --single-transaction into an empty database: every table's
    rows and content checksum equal the source's (and the manifest's)."""
    config = make_config(source={"exclude_columns": {"users": ["email"]}})
    assert run_cli("--config", str(config), "backup").returncode == 0
    backup = _only_backup(tmp_path / "backups")
    manifest = _manifest(backup)
    target = pg.fresh_db("restore", template=None)
    sql = b"".join(zstandard.ZstdDecompressor().decompressobj().decompress((backup / n).read_bytes())
                   for n in ("schema.sql.zst", "data.sql.zst"))
    restore = subprocess.run([str(pg.server.bin_dir / "psql"), "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1", "-d", target],
                             input=sql, capture_output=True)
    assert restore.returncode == 0, restore.stderr.decode()[-2000:]
    restored = table_checksums(target, manifest["tables"])
    source = table_checksums(source_dsn, manifest["tables"])
    assert len(restored) == 12
    assert restored == source
    for table, (rows, checksum) in restored.items():
        assert (rows, checksum) == (manifest["tables"][table]["rows"], manifest["tables"][table]["checksum"])
    # the excluded column never left the database: restored as NULL
    assert pg.execute(target, "SELECT count(*) FROM users WHERE email IS NOT NULL")[0][0] == 0


def test_json_export_renders_values_as_postgresql_does(make_config, source_dsn, tmp_path):
    """export.json is JSON v2.0 with PostgreSQL's own renderings: exact numerics, interval text,
    bytea hex, and no excluded column anywhere."""
    with psycopg.connect(source_dsn) as conn:
        conn.execute("UPDATE projects SET budget = 12.50 WHERE id = (SELECT min(id::text)::uuid FROM projects)")
        conn.execute("UPDATE tasks SET estimate = interval '1 mon' WHERE id = (SELECT min(id::text)::uuid FROM tasks)")
        conn.commit()
    config = make_config(source={"exclude_columns": {"users": ["email"]}})
    assert run_cli("--config", str(config), "backup").returncode == 0
    backup = _only_backup(tmp_path / "backups")
    raw = zstandard.ZstdDecompressor().decompressobj().decompress((backup / "export.json.zst").read_bytes())
    assert b'"budget":12.50' in raw
    document = json.loads(raw)
    assert document["version"] == "2.0" and document["format"] == "full" and document["incremental"] is False
    assert document["deleted"] == {}
    assert set(document["tables"]) == set(JARVIS_TABLES)
    for table in JARVIS_TABLES:
        assert len(document["data"][table]) == document["recordCount"][table]
    assert all("email" not in row for row in document["data"]["users"])
    intervals = [r["estimate"] for r in document["data"]["tasks"] if r["estimate"]]
    assert "1 mon" in intervals
    blobs = [r for table in document["data"].values() for r in table for v in r.values()
             if isinstance(v, str) and v.startswith("\\x")]
    assert blobs, "bytea values render as \\x hex"


def test_status_reports_never_then_healthy(make_config):
    config = make_config()
    before = run_cli("--config", str(config), "status", "--json")
    assert before.returncode == 1 and json.loads(before.stdout)["health"] == "never"
    assert run_cli("--config", str(config), "backup").returncode == 0
    after = run_cli("--config", str(config), "status", "--json")
    status = json.loads(after.stdout)
    assert after.returncode == 0 and status["health"] == "healthy"
    assert status["last_run"]["outcome"] == "success" and status["last_run"]["rows"] > 0
    assert status["destinations"]["local"]["last_error"] is None
    history = (Path(status_dir(config)) / "history.jsonl").read_text().splitlines()
    assert len(history) == 1 and json.loads(history[0])["outcome"] == "success"


def status_dir(config: Path) -> str:
    import tomllib

    return tomllib.loads(config.read_text())["state"]["dir"]


def test_list_shows_complete_backups_only_and_next_run_sweeps_incomplete(make_config, tmp_path):
    config = make_config()
    assert run_cli("--config", str(config), "backup").returncode == 0
    half = tmp_path / "backups" / "20200101T000000Z"
    half.mkdir()
    (half / "data.sql.zst").write_bytes(b"partial")
    listed = json.loads(run_cli("--config", str(config), "list", "--json").stdout)
    assert [b["id"] for b in listed] != [] and "20200101T000000Z" not in [b["id"] for b in listed]
    assert run_cli("--config", str(config), "backup").returncode == 0
    assert not half.exists()
    assert len(json.loads(run_cli("--config", str(config), "list", "--json").stdout)) == 2


def test_unreachable_database_fails_with_one_line(make_config, tmp_path):
    config = make_config(source={"dsn": "postgresql://backup:s3cr3t-pw@127.0.0.1:1/nowhere",
                                 "connect_timeout": "2s"})
    result = run_cli("--config", str(config), "-q", "backup")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("backupd: error")]
    assert len(errors) == 1 and "cannot connect" in errors[0] and "127.0.0.1:1" in errors[0]
    assert "s3cr3t-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").iterdir())
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["last_run"]["outcome"] == "failed" and "s3cr3t-pw" not in json.dumps(status)


def test_too_old_pg_dump_is_refused_before_dumping(make_config, tmp_path):
    fake = tmp_path / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    fake.chmod(0o755)
    config = make_config(dump={"pg_dump": str(fake)})
    result = run_cli("--config", str(config), "-q", "backup")
    assert result.returncode == 1
    assert "9.6" in result.stderr and "older than the server" in result.stderr and "PostgreSQL 15" in result.stderr
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").iterdir())


def test_unwritable_state_dir_fails_cleanly(make_config, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state dir should be")
    config = make_config(state={"dir": str(blocker / "state")})
    result = run_cli("--config", str(config), "-q", "backup")
    assert result.returncode == 1
    assert "backupd: error" in result.stderr and str(blocker) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "backups").exists()


def test_second_run_while_lock_held_exits_4(make_config, tmp_path):
    config = make_config()
    state = tmp_path / "state"
    state.mkdir()
    with open(state / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = run_cli("--config", str(config), "-q", "backup")
    assert result.returncode == 4, result.stderr
    assert "another backupd run" in result.stderr


def test_permissions_of_backups_and_state(make_config, tmp_path):
    config = make_config()
    assert run_cli("--config", str(config), "backup").returncode == 0
    backup = _only_backup(tmp_path / "backups")
    for path in [backup, *backup.iterdir(), tmp_path / "state" / "status.json"]:
        mode = os.stat(path).st_mode & 0o777
        assert mode & 0o077 == 0, (path, oct(mode))
