"""`backupd diff` between real backups: exact keys added, removed and changed, across fulls and
incrementals (an incremental is compared as the state its chain gives)."""

from __future__ import annotations

import json

import psycopg

from tests.conftest import run_cli
from tests.integration.test_incremental import backup, make_changes


def diff_json(config, a: str, b: str, *extra: str) -> dict:
    result = run_cli("--config", str(config), "diff", a, b, "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sorted_keys(keys: list) -> list:
    return sorted(keys, key=lambda k: json.dumps(k, sort_keys=True))


def test_diff_reports_exact_keys_between_full_and_incremental(make_config, source_dsn):
    config = make_config(export={"incremental": True})
    full = backup(config)
    removed = make_changes(source_dsn)
    with psycopg.connect(source_dsn) as conn:
        new_task = conn.execute("SELECT id::text FROM tasks WHERE title = 'inserted after the full'").fetchone()[0]
        new_label_link = conn.execute("SELECT task_id::text, label_id::text FROM task_labels WHERE task_id = %s",
                                      (new_task,)).fetchone()
        renamed = conn.execute("SELECT id::text FROM labels WHERE name LIKE '%(renamed)'").fetchone()[0]
        done = {r[0] for r in conn.execute("SELECT id::text FROM tasks WHERE completed_at > now() - interval '1 hour'")}
    inc = backup(config)
    report = diff_json(config, full["id"], inc["id"])
    assert report["from"] == full["id"] and report["to"] == inc["id"]
    tables = report["tables"]
    for table, keys in removed.items():
        assert sorted_keys(tables[table]["removed_keys"]) == sorted_keys(keys), table
        assert tables[table]["removed"] == len(keys)
    assert tables["tasks"]["added_keys"] == [{"id": new_task}]
    assert tables["task_labels"]["added_keys"] == [{"task_id": new_label_link[0], "label_id": new_label_link[1]}]
    changed = {c["key"]["id"]: c["columns"] for c in tables["tasks"]["changed_keys"]}
    assert set(changed) == done
    assert all({"status", "completed_at", "updated_at"} <= set(cols) for cols in changed.values())
    assert [c["key"]["id"] for c in tables["labels"]["changed_keys"]] == [renamed]
    assert "name" in tables["labels"]["changed_keys"][0]["columns"]
    assert tables["users"] == {"added": 0, "removed": 0, "changed": 0,
                               "added_keys": [], "removed_keys": [], "changed_keys": []}
    # a full taken now has the same state as the incremental: no difference
    now_full = backup(config, "--full")
    same = diff_json(config, inc["id"], now_full["id"])
    assert all(t["added"] == t["removed"] == t["changed"] == 0 for t in same["tables"].values())


def test_diff_between_fulls_text_output_and_table_listing(make_config, source_dsn):
    config = make_config()
    first = backup(config)
    with psycopg.connect(source_dsn) as conn:
        project = conn.execute("SELECT id::text FROM projects ORDER BY id LIMIT 1").fetchone()[0]
        conn.execute("UPDATE projects SET description = 'changed' WHERE id = %s", (project,))
        conn.commit()
    second = backup(config)
    text = run_cli("--config", str(config), "diff", first["id"], second["id"])
    assert text.returncode == 0, text.stderr
    line = next(l for l in text.stdout.splitlines() if l.startswith("projects "))
    assert line.split()[1:] == ["0", "0", "1"]
    listing = run_cli("--config", str(config), "diff", first["id"], "latest", "--table", "projects")
    assert listing.returncode == 0, listing.stderr
    assert any(l.startswith(f'~ {{"id": "{project}"}}') and "description" in l for l in listing.stdout.splitlines())
    missing = run_cli("--config", str(config), "diff", first["id"], "20000101T000000Z")
    assert missing.returncode == 1 and "backup 20000101T000000Z not found at local" in missing.stderr
