"""`backupd restore` against a real PostgreSQL, through the CLI as an operator runs it: round trips
of all 12 Jarvis tables, the strategies on crafted conflicts, all-or-nothing, refusals before the
target is touched, JSON files made elsewhere, --tables, --sql, incremental chains."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard

from tests.conftest import SCHEMA_SQL, moto_server, run_cli, table_checksums


def _backup(config: Path, backups: Path) -> Path:
    result = run_cli("--config", str(config), "-q", "backup")
    assert result.returncode == 0, result.stderr
    newest = max(p for p in backups.iterdir() if p.is_dir())
    return newest


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def _schema_only_db(pg: Any) -> str:
    """A new database holding the Jarvis schema and no rows."""
    dsn = pg.fresh_db("tgt", template=None)
    subprocess.run([str(pg.server.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn,
                    "-f", str(SCHEMA_SQL)], check=True, capture_output=True)
    return dsn


def _restore(config: Path | None, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["--config", str(config)] if config else []
    return run_cli(*prefix, "-q", "restore", *args, env=env)


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("backupd: error")]


def test_json_replace_into_empty_schema_round_trips_all_tables(make_config, source_dsn, pg, tmp_path):
    """Replace into an empty schema: all 12 tables hold exactly the source (rows and content
    checksums), the summary counts inserts, history.jsonl gets a restore line."""
    config = make_config()
    backup = _backup(config, tmp_path / "backups")
    manifest = _manifest(backup)
    target = _schema_only_db(pg)
    result = _restore(config, "latest", "--target", target, "--strategy", "replace", "--yes")
    assert result.returncode == 0, result.stderr
    restored = table_checksums(target, manifest["tables"])
    assert len(restored) == 12
    assert restored == table_checksums(source_dsn, manifest["tables"])
    for table, (rows, checksum) in restored.items():
        assert (rows, checksum) == (manifest["tables"][table]["rows"], manifest["tables"][table]["checksum"])
    total = next(line for line in result.stdout.splitlines() if line.startswith("total")).split()
    assert int(total[1]) == sum(t["rows"] for t in manifest["tables"].values())
    history = [json.loads(line) for line in (tmp_path / "state" / "history.jsonl").read_text().splitlines()]
    restore_lines = [h for h in history if h["event"] == "restore"]
    assert restore_lines[-1]["outcome"] == "success" and restore_lines[-1]["strategy"] == "replace"
    assert "tasks" in restore_lines[-1]["tables"]
    assert pg.server.password not in json.dumps(history) + result.stdout + result.stderr


def test_sql_restore_into_empty_database_and_refuses_a_non_empty_one(make_config, source_dsn, pg, tmp_path):
    """--sql: schema then data through psql in one transaction; checksums equal the source's.
    A second --sql into the now non-empty database is refused and changes nothing."""
    config = make_config()
    backup = _backup(config, tmp_path / "backups")
    manifest = _manifest(backup)
    target = pg.fresh_db("sql", template=None)
    result = _restore(config, manifest["id"], "--target", target, "--sql")
    assert result.returncode == 0, result.stderr
    restored = table_checksums(target, manifest["tables"])
    assert len(restored) == 12 and restored == table_checksums(source_dsn, manifest["tables"])
    # foreign keys and triggers are back after the load
    fks = pg.execute(target, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'")[0][0]
    assert fks == pg.execute(source_dsn, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'")[0][0]
    assert pg.execute(target, "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgenabled = 'O'")[0][0] == 9
    again = _restore(config, "latest", "--target", target, "--sql")
    assert again.returncode == 1
    assert "not empty" in _error_lines(again)[0]
    assert table_checksums(target, manifest["tables"]) == restored


def _tasks(dsn: str, ids: list[str]) -> dict[str, tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id::text, title, updated_at::text FROM tasks WHERE id::text = ANY(%s)",
                            (ids,)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.fixture
def conflicts(make_config, source_dsn, pg, tmp_path):
    """A backup of the source, and a function making a target that differs from it in known ways:
    task A edited after the backup (newer), task B edited with an old updated_at (older), a
    target-only label, a comment deleted in the target."""
    config = make_config()
    backup = _backup(config, tmp_path / "backups")
    with psycopg.connect(source_dsn) as conn:
        a, b = [r[0] for r in conn.execute("SELECT id::text FROM tasks ORDER BY id LIMIT 2").fetchall()]
        comment = conn.execute("SELECT id::text FROM comments ORDER BY id LIMIT 1").fetchone()[0]

    def make_target() -> str:
        target = pg.fresh_db("conf")
        with psycopg.connect(target) as conn:
            conn.execute("UPDATE tasks SET title = 'edited later' WHERE id = %s", (a,))  # trigger: now()
            conn.execute("ALTER TABLE tasks DISABLE TRIGGER tasks_set_updated_at")
            conn.execute("UPDATE tasks SET title = 'edited long ago', updated_at = '2001-01-01' WHERE id = %s", (b,))
            conn.execute("ALTER TABLE tasks ENABLE TRIGGER tasks_set_updated_at")
            conn.execute("INSERT INTO labels (name) VALUES ('target only')")
            conn.execute("DELETE FROM comments WHERE id = %s", (comment,))
        return target

    return {"config": config, "backup": backup, "a": a, "b": b, "comment": comment, "make_target": make_target}


def _counts(stdout: str, table: str) -> list[int]:
    line = next(row for row in stdout.splitlines() if row.split() and row.split()[0] == table)
    return [int(v) for v in line.split()[1:5]]


def test_upsert_backup_rows_win_and_target_only_rows_stay(conflicts, source_dsn):
    config, make_target = conflicts["config"], conflicts["make_target"]
    target = make_target()
    source_tasks = _tasks(source_dsn, [conflicts["a"], conflicts["b"]])
    dry = _restore(config, "latest", "--target", target, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout
    assert _counts(dry.stdout, "tasks")[:3] == [0, 2, 0]
    assert _counts(dry.stdout, "comments")[:3] == [1, 0, 0]
    assert _tasks(target, [conflicts["a"]])[conflicts["a"]][0] == "edited later"  # nothing changed
    result = _restore(config, "latest", "--target", target)
    assert result.returncode == 0, result.stderr
    assert _counts(result.stdout, "tasks")[:3] == [0, 2, 0]
    assert _tasks(target, [conflicts["a"], conflicts["b"]]) == source_tasks  # updated_at restored too
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM labels WHERE name = 'target only'").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM comments WHERE id = %s", (conflicts["comment"],)).fetchone()[0] == 1


def test_merge_newer_updated_at_wins(conflicts, source_dsn):
    config, make_target = conflicts["config"], conflicts["make_target"]
    target = make_target()
    source_tasks = _tasks(source_dsn, [conflicts["b"]])
    result = _restore(config, "latest", "--target", target, "--strategy", "merge")
    assert result.returncode == 0, result.stderr
    after = _tasks(target, [conflicts["a"], conflicts["b"]])
    assert after[conflicts["a"]][0] == "edited later"            # the target's row is newer: kept
    assert after[conflicts["b"]] == source_tasks[conflicts["b"]]  # the backup's row is newer: restored
    assert _counts(result.stdout, "tasks")[:3] == [0, 1, 0]
    assert "logs: no updated_at column, merged as upsert" in result.stdout
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM labels WHERE name = 'target only'").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM comments WHERE id = %s", (conflicts["comment"],)).fetchone()[0] == 1


def test_replace_needs_yes_and_then_matches_backup_exactly(conflicts, source_dsn):
    config, make_target = conflicts["config"], conflicts["make_target"]
    target = make_target()
    before = table_checksums(target)
    refused = _restore(config, "latest", "--target", target, "--strategy", "replace")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert table_checksums(target) == before
    result = _restore(config, "latest", "--target", target, "--strategy", "replace", "--yes")
    assert result.returncode == 0, result.stderr
    assert _counts(result.stdout, "labels")[:3] == [0, 0, 1]
    assert _counts(result.stdout, "comments")[:3] == [1, 0, 0]
    manifest = _manifest(conflicts["backup"])
    assert table_checksums(target, manifest["tables"]) == table_checksums(source_dsn, manifest["tables"])


def test_failure_half_way_leaves_target_unchanged(conflicts):
    """A constraint violation in the last table (logs) after earlier tables were written: the
    whole restore rolls back."""
    config, make_target = conflicts["config"], conflicts["make_target"]
    target = make_target()
    with psycopg.connect(target) as conn:
        conn.execute("DELETE FROM logs WHERE level = 'error'")
        conn.execute("ALTER TABLE logs ADD CONSTRAINT no_errors CHECK (level <> 'error') NOT VALID")
    before = table_checksums(target)
    result = _restore(config, "latest", "--target", target)
    assert result.returncode == 1
    errors = _error_lines(result)
    assert len(errors) == 1 and "logs" in errors[0] and "no_errors" in errors[0] and "unchanged" in errors[0]
    assert table_checksums(target) == before
    assert "Traceback" not in result.stderr


def _rewrite_artifact(backup: Path, name: str, data: bytes) -> None:
    """Replace an artifact's bytes and make the manifest agree (so only the content is wrong)."""
    (backup / name).write_bytes(data)
    manifest = _manifest(backup)
    for artifact in manifest["artifacts"]:
        if artifact["name"] == name:
            artifact["bytes"] = len(data)
            artifact["sha256"] = hashlib.sha256(data).hexdigest()
    (backup / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", ["tampered", "truncated", "manifest_version", "no_manifest",
                                    "export_version", "sql_tampered"])
def test_damaged_backup_is_refused_before_the_target_is_touched(make_config, pg, tmp_path, damage):
    config = make_config()
    backup = _backup(config, tmp_path / "backups")
    target = pg.fresh_db("dmg")
    with psycopg.connect(target) as conn:
        conn.execute("UPDATE tasks SET title = 'target value' WHERE id = (SELECT min(id::text)::uuid FROM tasks)")
        conn.execute("DELETE FROM labels WHERE id = (SELECT min(id::text)::uuid FROM labels)")
    before = table_checksums(target)
    export = backup / "export.json.zst"
    args = ["--strategy", "replace", "--yes"]
    if damage == "tampered":
        data = bytearray(export.read_bytes())
        data[len(data) // 2] ^= 0x01
        export.write_bytes(bytes(data))
        expected = "sha256 mismatch|corrupt zstd data"  # the decoder may notice first
    elif damage == "truncated":
        _rewrite_artifact(backup, export.name, export.read_bytes()[: export.stat().st_size // 2])
        expected = "truncated zstd"
    elif damage == "manifest_version":
        manifest = _manifest(backup)
        manifest["format_version"] = 99
        (backup / "manifest.json").write_text(json.dumps(manifest))
        expected = "manifest format version 99"
    elif damage == "no_manifest":
        (backup / "manifest.json").unlink()
        expected = "not found"
    elif damage == "export_version":
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(export.read_bytes())
        raw = raw.replace(b'"version": "2.0"', b'"version": "3.0"', 1)
        _rewrite_artifact(backup, export.name, zstandard.ZstdCompressor().compress(raw))
        expected = "export version '3.0'"
    else:
        data = bytearray((backup / "data.sql.zst").read_bytes())
        data[-10] ^= 0x01
        (backup / "data.sql.zst").write_bytes(bytes(data))
        args = ["--sql"]
        target = pg.fresh_db("dmg_sql", template=None)
        before = table_checksums(target)
        expected = "sha256 mismatch"
    result = _restore(config, backup.name, "--target", target, *args)
    assert result.returncode == 1, result.stdout
    errors = _error_lines(result)
    assert len(errors) == 1 and any(e in errors[0] for e in expected.split("|")), result.stderr
    assert table_checksums(target) == before
    assert "Traceback" not in result.stderr


def _document(backup: Path) -> dict[str, Any]:
    return json.loads(zstandard.ZstdDecompressor().decompressobj().decompress(
        (backup / "export.json.zst").read_bytes()))


def test_file_restore_plain_and_gzip_without_config(make_config, source_dsn, pg, tmp_path):
    """A JSON v2.0 file made elsewhere (one huge line; pretty-printed and gzipped): restored with
    --target alone, no config file anywhere."""
    config = make_config()
    backup = _backup(config, tmp_path / "backups")
    manifest = _manifest(backup)
    document = _document(backup)
    plain = tmp_path / "jarvis-export.json"
    plain.write_text(json.dumps(document, ensure_ascii=False))
    zipped = tmp_path / "jarvis-export.json.gz"
    zipped.write_bytes(gzip.compress(json.dumps(document, indent=2).encode()))
    env = {k: v for k, v in os.environ.items() if k != "BACKUPD_CONFIG"}
    for path in (plain, zipped):
        target = _schema_only_db(pg)
        result = run_cli("-q", "restore", str(path), "--target", target, env=env)
        assert result.returncode == 0, result.stderr
        assert table_checksums(target, manifest["tables"]) == table_checksums(source_dsn, manifest["tables"])
    bad = tmp_path / "cut.json"
    bad.write_text(json.dumps(document)[:5000])
    target = _schema_only_db(pg)
    result = run_cli("-q", "restore", str(bad), "--target", target, env=env)
    assert result.returncode == 1 and "truncated" in _error_lines(result)[0]
    assert sum(rows for rows, _ in table_checksums(target).values()) == 0


def test_tables_limits_the_restore_and_refuses_dangling_references(make_config, source_dsn, pg, tmp_path):
    config = make_config()
    _backup(config, tmp_path / "backups")
    target = _schema_only_db(pg)
    refused = _restore(config, "latest", "--target", target, "--tables", "tasks")
    assert refused.returncode == 1
    error = _error_lines(refused)[0]
    assert "rows of tasks" in error and "neither in the target nor restored" in error
    assert "users" in error or "projects" in error
    assert sum(rows for rows, _ in table_checksums(target).values()) == 0
    result = _restore(config, "latest", "--target", target, "--tables", "users,projects")
    assert result.returncode == 0, result.stderr
    restored = table_checksums(target)
    source = table_checksums(source_dsn)
    assert restored["users"] == source["users"] and restored["projects"] == source["projects"]
    assert restored["tasks"][0] == 0
    unknown = _restore(config, "latest", "--target", target, "--tables", "nope")
    assert unknown.returncode == 1 and "nope" in _error_lines(unknown)[0]


def _checksum(rows: list[dict[str, Any]]) -> str:
    """The manifest's per-table checksum of rows as json.dumps writes them."""
    from backupd.checksum import TableChecksum

    checksum = TableChecksum()
    checksum.add_lines([json.dumps(row).encode() for row in rows])
    return checksum.hexdigest


def _write_incremental(backups: Path, full: Path, backup_id: str, rows: dict[str, list[dict[str, Any]]],
                       deleted: dict[str, list[Any]]) -> None:
    """An incremental backup as defined in backupd.restore: manifest kind/base, export with
    only changed rows and `deleted` keys."""
    folder = backups / backup_id
    folder.mkdir()
    base = _manifest(full)
    document = {"version": "2.0", "exportedAt": "2030-01-01T00:00:00Z", "format": "incremental",
                "incremental": True, "since": base["started_at"], "tables": list(rows),
                "data": rows, "deleted": deleted, "recordCount": {k: len(v) for k, v in rows.items()}}
    data = zstandard.ZstdCompressor().compress(json.dumps(document).encode())
    (folder / "export.json.zst").write_bytes(data)
    manifest = dict(base, id=backup_id, kind="incremental", base=full.name,
                    tables={k: dict(base["tables"][k], rows=len(v), checksum=_checksum(v)) for k, v in rows.items()},
                    artifacts=[{"name": "export.json.zst", "bytes": len(data),
                                "sha256": hashlib.sha256(data).hexdigest(), "compression": "zstd",
                                "encryption": "none", "content": "export"}])
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_incremental_restores_its_whole_chain(make_config, pg, tmp_path):
    config = make_config()
    full = _backup(config, tmp_path / "backups")
    document = _document(full)
    labels = document["data"]["labels"]
    first = dict(labels[0], name="renamed in inc 1")
    second = dict(labels[1], name="renamed in inc 2")
    # delete a label and every task_labels row pointing at it (composite keys as objects)
    unused = labels[-1]
    links = [{"task_id": r["task_id"], "label_id": r["label_id"]} for r in document["data"]["task_labels"]
             if r["label_id"] == unused["id"]]
    task_label = links[0]
    _write_incremental(tmp_path / "backups", full, "20300101T000000Z", {"labels": [first]},
                       {"labels": [unused["id"]], "task_labels": links})
    _write_incremental(tmp_path / "backups", full, "20300102T000000Z", {"labels": [second]}, {})
    target = _schema_only_db(pg)
    result = _restore(config, "20300102T000000Z", "--target", target, "--strategy", "replace", "--yes")
    assert result.returncode == 0, result.stderr
    with psycopg.connect(target) as conn:
        names = dict(conn.execute("SELECT id::text, name FROM labels").fetchall())
        assert names[first["id"]] == "renamed in inc 1" and names[second["id"]] == "renamed in inc 2"
        assert unused["id"] not in names and len(names) == len(labels) - 1
        assert conn.execute("SELECT count(*) FROM task_labels WHERE task_id = %s AND label_id = %s",
                            (task_label["task_id"], task_label["label_id"])).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == len(document["data"]["tasks"])
        assert conn.execute("SELECT count(*) FROM task_labels").fetchone()[0] == (
            len(document["data"]["task_labels"]) - len(links))
    # a chain whose full is gone is refused
    (full / "manifest.json").unlink()
    broken = _restore(config, "20300102T000000Z", "--target", target)
    assert broken.returncode == 1 and "chain is broken" in _error_lines(broken)[0]


def test_identity_sequences_are_set_past_the_restored_maximum(make_config, source_dsn, pg, tmp_path):
    with psycopg.connect(source_dsn) as conn:
        conn.execute("CREATE TABLE counters (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text)")
        conn.execute("INSERT INTO counters (name) SELECT 'c' || g FROM generate_series(1, 40) g")
    config = make_config()
    _backup(config, tmp_path / "backups")
    target = _schema_only_db(pg)
    pg.execute(target, "CREATE TABLE counters (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text)")
    result = _restore(config, "latest", "--target", target)
    assert result.returncode == 0, result.stderr
    assert pg.execute(target, "INSERT INTO counters (name) VALUES ('new') RETURNING id")[0][0] == 41


COMPAT = Path(__file__).resolve().parent.parent / "fixtures" / "compat"


@pytest.mark.parametrize("backup_id", sorted(p.name for p in COMPAT.iterdir() if p.is_dir()))
def test_backups_of_earlier_releases_still_restore(backup_id, pg, tmp_path):
    """Formats last: a backup kept from an earlier release restores (JSON and SQL) to exactly the
    rows and checksums its manifest recorded."""
    import shutil

    from tests.conftest import write_config

    shutil.copytree(COMPAT, tmp_path / "compat")
    config = write_config(tmp_path / "backupd.toml", {
        "source": {"dsn": pg.dsn()},
        "state": {"dir": str(tmp_path / "state")},
        "destinations": [{"name": "archive", "type": "local", "path": str(tmp_path / "compat")}],
    })
    manifest = _manifest(COMPAT / backup_id)
    expected = {t: (e["rows"], e["checksum"]) for t, e in manifest["tables"].items()}
    target = _schema_only_db(pg)
    result = _restore(config, backup_id, "--target", target, "--strategy", "replace", "--yes")
    assert result.returncode == 0, result.stderr
    assert table_checksums(target, manifest["tables"]) == expected
    empty = pg.fresh_db("compat_sql", template=None)
    result = _restore(config, backup_id, "--target", empty, "--sql")
    assert result.returncode == 0, result.stderr
    assert table_checksums(empty, manifest["tables"]) == expected
    # its content checksums (an older hash than new backups use) are still checked by verify
    result = run_cli("--config", str(config), "verify", backup_id)
    assert result.returncode == 0, result.stderr
    assert "match the manifest" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def moto_s3():
    """moto's S3 server on 127.0.0.1 (a real S3 HTTP endpoint, objects in memory)."""
    with moto_server() as url:
        yield url


def test_restore_from_s3(make_config, source_dsn, pg, moto_s3):
    from tests.contract.conftest import ACCESS_KEY, SECRET_KEY, make_bucket

    config = make_config(destinations=[{
        "name": "s3", "type": "s3", "bucket": make_bucket(moto_s3), "prefix": "prod", "endpoint_url": moto_s3,
        "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}])
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    target = _schema_only_db(pg)
    result = _restore(config, "latest", "--from", "s3", "--target", target)
    assert result.returncode == 0, result.stderr
    assert table_checksums(target) == table_checksums(source_dsn)


def test_encrypted_backup_restores_with_its_identity_only(make_config, source_dsn, pg, tmp_path):
    """age-encrypted artifacts: restored with --identity; without it, refused and nothing changes."""
    pyrage = pytest.importorskip("pyrage")
    identity = pyrage.x25519.Identity.generate()
    identity_file = tmp_path / "age.key"
    identity_file.write_text(str(identity) + "\n")
    config = make_config(pipeline={"age_recipients": [str(identity.to_public())]})
    backup = _backup(config, tmp_path / "backups")
    assert any(a["encryption"] == "age" for a in _manifest(backup)["artifacts"])
    target = _schema_only_db(pg)
    refused = _restore(config, "latest", "--target", target)
    assert refused.returncode in (1, 2) and _error_lines(refused)
    assert sum(rows for rows, _ in table_checksums(target).values()) == 0
    result = _restore(config, "latest", "--target", target, "--identity", str(identity_file))
    assert result.returncode == 0, result.stderr
    assert table_checksums(target) == table_checksums(source_dsn)


def test_sql_dump_of_a_newer_pg_dump_restores_into_an_older_server(make_config, source_dsn, pg, tmp_path):
    """pg_dump 18 (the embedded wheel) writes `SET transaction_timeout`, which PostgreSQL 15
    rejects, and `\\restrict` lines: --sql still restores it into the PostgreSQL 15 server."""
    from backupd.pgtools import embedded_bin_dir, tool_version

    wheel = embedded_bin_dir()
    if wheel is None or not (wheel / "pg_dump").exists():
        pytest.skip("no embedded pg_dump")
    newer = tool_version(str(wheel / "pg_dump"))
    server_major = pg.execute(source_dsn, "SELECT current_setting('server_version_num')::int / 10000")[0][0]
    if newer.major < 17 or server_major >= 17:
        pytest.skip("needs a pg_dump >= 17 and a server < 17")
    config = make_config(dump={"pg_dump": str(wheel / "pg_dump")})
    backup = _backup(config, tmp_path / "backups")
    schema = zstandard.ZstdDecompressor().decompressobj().decompress((backup / "schema.sql.zst").read_bytes())
    assert b"SET transaction_timeout = 0;" in schema
    target = pg.fresh_db("newer", template=None)
    result = _restore(config, "latest", "--target", target, "--sql")
    assert result.returncode == 0, result.stderr
    manifest = _manifest(backup)
    assert table_checksums(target, manifest["tables"]) == table_checksums(source_dsn, manifest["tables"])


def test_tampered_export_into_empty_tables_leaves_them_empty(make_config, pg, tmp_path):
    """Into empty tables rows stream straight in; a sha256 mismatch found at the end of the stream
    still rolls everything back: the target stays empty, its indexes and foreign keys intact."""
    config = make_config()
    backup = _backup(config, tmp_path / "backups")
    export = backup / "export.json.zst"
    data = bytearray(export.read_bytes())
    data[-3] ^= 0x01  # the zstd frame's last bytes: every row decodes, the sha256 does not match
    export.write_bytes(bytes(data))
    target = _schema_only_db(pg)
    shape = "SELECT (SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'), " \
            "(SELECT count(*) FROM pg_constraint WHERE contype = 'f')"
    before = pg.execute(target, shape)
    result = _restore(config, "latest", "--target", target, "--strategy", "replace", "--yes")
    assert result.returncode == 1
    assert any(e in _error_lines(result)[0] for e in ("sha256 mismatch", "corrupt zstd data"))
    assert sum(rows for rows, _ in table_checksums(target).values()) == 0
    assert pg.execute(target, shape) == before


def test_rows_changed_behind_a_remade_sha256_are_refused(make_config, pg, tmp_path):
    """The artifact's sha256 re-made after editing a row: the manifest's per-table content
    checksum still catches it, before anything is committed."""
    config = make_config()
    backup = _backup(config, tmp_path / "backups")
    raw = zstandard.ZstdDecompressor().decompressobj().decompress((backup / "export.json.zst").read_bytes())
    edited = raw.replace(b'"role":"owner"', b'"role":"admin"', 1)
    assert edited != raw
    _rewrite_artifact(backup, "export.json.zst", zstandard.ZstdCompressor().compress(edited))
    target = _schema_only_db(pg)
    result = _restore(config, "latest", "--target", target)
    assert result.returncode == 1
    assert "users do not match the manifest's checksum" in _error_lines(result)[0]
    assert sum(rows for rows, _ in table_checksums(target).values()) == 0


def test_restore_errors_keep_row_data_out_of_history_alerts_and_audit(make_config, source_dsn, pg, tmp_path):
    """A JSON restore that fails on a row (a CHECK only the target has) names the table and the
    constraint, but PostgreSQL's `Failing row contains (...)` values stay out of the error line,
    history.jsonl (what the `restore` alert is made of) and the audit row; `-v` shows them in the
    debug log."""
    config = make_config(audit={"table": "logs"})
    _backup(config, tmp_path / "backups")
    color = "#5eed42"
    pg.execute(source_dsn, "UPDATE labels SET color = %s", (color,))
    _backup(config, tmp_path / "backups")
    target = _schema_only_db(pg)
    pg.execute(target, "ALTER TABLE labels ADD CONSTRAINT labels_not_seeded CHECK (color <> '#5eed42')")
    result = _restore(config, "latest", "--target", target)
    assert result.returncode == 1
    error = _error_lines(result)[0]
    assert "labels_not_seeded" in error and "row data withheld" in error and color not in result.stderr
    history = [json.loads(line) for line in (tmp_path / "state" / "history.jsonl").read_text().splitlines()]
    failed = [h for h in history if h["event"] == "restore"][-1]
    assert failed["outcome"] == "failed" and "labels_not_seeded" in failed["error"] and color not in failed["error"]
    audit = pg.execute(source_dsn, "SELECT message, context::text FROM logs WHERE event LIKE '%restore%'")
    assert audit and all(color not in (message or "") + (context or "") for message, context in audit)
    verbose = run_cli("--config", str(config), "-v", "restore", "latest", "--target", target)
    assert verbose.returncode == 1 and color in verbose.stderr  # the debug log keeps them
