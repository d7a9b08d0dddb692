"""`backupd export` against a real PostgreSQL: each format opens with the standard tools and holds
the database's row counts; `export.formats` adds CSV and SQLite artifacts to scheduled backups."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
import tarfile

import psycopg
import zstandard

from tests.conftest import JARVIS_TABLES, run_cli


def counts(dsn: str, tables: list[str]) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def test_json_to_stdout_is_valid_json_with_row_counts(make_config, source_dsn):
    config = make_config()
    result = subprocess.run([sys.executable, "-m", "backupd", "--config", str(config), "-q", "export"],
                            capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    checked = subprocess.run([sys.executable, "-m", "json.tool"], input=result.stdout, capture_output=True,
                             check=False)
    assert checked.returncode == 0, checked.stderr
    document = json.loads(result.stdout)
    assert document["version"] == "2.0" and document["format"] == "full"
    assert document["recordCount"] == counts(source_dsn, JARVIS_TABLES)
    assert {t: len(rows) for t, rows in document["data"].items()} == document["recordCount"]


def test_json_core_since_and_compression(make_config, source_dsn, tmp_path):
    with psycopg.connect(source_dsn) as conn:
        conn.execute("ALTER TABLE tasks DISABLE TRIGGER tasks_set_updated_at")
        conn.execute("UPDATE tasks SET updated_at = '2000-01-01' ")
        conn.execute("ALTER TABLE tasks ENABLE TRIGGER tasks_set_updated_at")
        conn.execute("UPDATE tasks SET title = 'recent' WHERE id IN (SELECT id FROM tasks ORDER BY id LIMIT 3)")
        conn.commit()
    config = make_config()
    out = tmp_path / "core.json.gz"
    result = run_cli("--config", str(config), "export", "--include", "core", "--since", "2020-01-01T00:00:00Z",
                     "--compress", "gzip", "-o", str(out))
    assert result.returncode == 0, result.stderr
    document = json.loads(gzip.decompress(out.read_bytes()))
    assert set(document["tables"]) == {"tasks", "projects", "labels", "task_labels"}
    assert document["incremental"] is True and document["since"] == "2020-01-01T00:00:00Z"
    assert sorted(r["title"] for r in document["data"]["tasks"]) == ["recent"] * 3
    # no updated_at: exported whole
    assert document["recordCount"]["task_labels"] == counts(source_dsn, ["task_labels"])["task_labels"]


def test_csv_folder_and_tar_stream(make_config, source_dsn, tmp_path):
    config = make_config()
    folder = tmp_path / "csv"
    result = run_cli("--config", str(config), "export", "--format", "csv", "-o", str(folder))
    assert result.returncode == 0, result.stderr
    expected = counts(source_dsn, JARVIS_TABLES)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{t}.csv" for t in JARVIS_TABLES)
    for table in JARVIS_TABLES:
        with open(folder / f"{table}.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        assert len(rows) - 1 == expected[table], table
        assert "id" in rows[0] or "task_id" in rows[0]
    tarred = subprocess.run([sys.executable, "-m", "backupd", "--config", str(config), "-q", "export",
                             "--format", "csv", "--include", "tasks,labels", "--compress", "zstd", "-o", "-"],
                            capture_output=True, check=False)
    assert tarred.returncode == 0, tarred.stderr
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(tarred.stdout)).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        names = archive.getnames()
        tasks = archive.extractfile("tasks.csv").read().decode()
    assert sorted(names) == ["labels.csv", "tasks.csv"]
    assert len(list(csv.reader(io.StringIO(tasks)))) - 1 == expected["tasks"]


def test_sqlite_preserves_values_and_counts(make_config, source_dsn, tmp_path):
    with psycopg.connect(source_dsn) as conn:
        conn.execute("UPDATE projects SET budget = 12.50 WHERE id = (SELECT min(id::text)::uuid FROM projects)")
        conn.execute("UPDATE tasks SET estimate = interval '1 mon' WHERE id = (SELECT min(id::text)::uuid FROM tasks)")
        conn.commit()
    config = make_config()
    out = tmp_path / "export.sqlite"
    result = run_cli("--config", str(config), "export", "--format", "sqlite", "-o", str(out))
    assert result.returncode == 0, result.stderr
    expected = counts(source_dsn, JARVIS_TABLES)
    for table in JARVIS_TABLES:
        cli = subprocess.run(["sqlite3", str(out), f'SELECT count(*) FROM "{table}"'], capture_output=True, text=True, check=False)
        assert cli.returncode == 0, cli.stderr
        assert int(cli.stdout) == expected[table], table
    def query(sql: str) -> str:
        return subprocess.run(["sqlite3", str(out), sql], capture_output=True, text=True, check=True).stdout.strip()
    assert "12.50" in query("SELECT budget FROM projects").split()
    assert "1 mon" in query("SELECT estimate FROM tasks").splitlines()
    tags = query("SELECT tags FROM tasks WHERE tags <> '[]' LIMIT 1")
    assert isinstance(json.loads(tags), list)
    assert query("SELECT typeof(thumbnail) FROM attachments WHERE thumbnail IS NOT NULL LIMIT 1") == "blob"
    assert query("SELECT typeof(is_active) FROM users LIMIT 1") == "integer"


def test_bad_include_and_since_are_usage_errors(make_config):
    config = make_config()
    bad = run_cli("--config", str(config), "export", "--include", "nope")
    assert bad.returncode == 2 and "nope" in bad.stderr
    since = run_cli("--config", str(config), "export", "--since", "yesterday")
    assert since.returncode == 2 and "--since" in since.stderr


def test_export_formats_add_artifacts_to_scheduled_backups(make_config, source_dsn, tmp_path):
    config = make_config(export={"formats": ["json", "csv", "sqlite"]})
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 0, result.stderr
    listed = json.loads(run_cli("--config", str(config), "list", "--json").stdout)
    folder = tmp_path / "backups" / listed[0]["id"]
    names = set(listed[0]["artifacts"])
    assert {"export.json.zst", "export.sqlite.zst"} <= names
    assert {f"csv/{t}.csv.zst" for t in JARVIS_TABLES} <= names
    sqlite_path = tmp_path / "restored.sqlite"
    sqlite_path.write_bytes(zstandard.ZstdDecompressor().stream_reader(
        (folder / "export.sqlite.zst").open("rb")).read())
    tasks = subprocess.run(["sqlite3", str(sqlite_path), "SELECT count(*) FROM tasks"], capture_output=True,
                           text=True, check=True).stdout
    assert int(tasks) == counts(source_dsn, ["tasks"])["tasks"]
    verify = run_cli("--config", str(config), "verify", listed[0]["id"])
    assert verify.returncode == 0, verify.stderr
