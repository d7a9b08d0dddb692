"""Incremental backups against a real PostgreSQL: what an incremental holds (changed rows and the
exact keys deleted since), chains restored back to the source's state, retention keeping chains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import zstandard

from tests.conftest import run_cli, table_checksums


def backups(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "manifest.json").exists())


def manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def export_document(folder: Path) -> dict[str, Any]:
    raw = zstandard.ZstdDecompressor().stream_reader((folder / "export.json.zst").open("rb")).read()
    return json.loads(raw)


def backup(config: Path, *extra: str) -> dict[str, Any]:
    result = run_cli("--config", str(config), "backup", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(run_cli("--config", str(config), "list", "--json").stdout)[-1]


def make_changes(dsn: str) -> dict[str, Any]:
    """Updates, inserts and deletes: a task with comments and labels deleted, a label renamed,
    a junction row removed, a new task with a label. Returns the keys that must be `deleted`."""
    with psycopg.connect(dsn) as conn:
        victim = conn.execute(
            "SELECT t.id::text FROM tasks t WHERE EXISTS (SELECT 1 FROM comments c WHERE c.task_id = t.id) "
            "AND EXISTS (SELECT 1 FROM task_labels l WHERE l.task_id = t.id) "
            "AND NOT EXISTS (SELECT 1 FROM tasks s WHERE s.parent_task_id = t.id) ORDER BY t.id LIMIT 1"
        ).fetchone()[0]
        cascade: dict[str, list[dict[str, str]]] = {}
        cascade["tasks"] = [{"id": victim}]
        for table, cols in (("comments", ["id"]), ("task_labels", ["task_id", "label_id"]),
                            ("task_links", ["id"]), ("attachments", ["id"]), ("notifications", ["id"])):
            rows = conn.execute(f"SELECT {', '.join(c + '::text' for c in cols)} FROM {table} "
                                "WHERE task_id = %s", (victim,)).fetchall()
            if rows:
                cascade[table] = [dict(zip(cols, r)) for r in rows]
        deps = conn.execute("SELECT task_id::text, depends_on_task_id::text FROM task_dependencies "
                            "WHERE task_id = %s OR depends_on_task_id = %s", (victim, victim)).fetchall()
        if deps:
            cascade["task_dependencies"] = [{"task_id": a, "depends_on_task_id": b} for a, b in deps]
        conn.execute("DELETE FROM tasks WHERE id = %s", (victim,))
        junction = conn.execute("DELETE FROM task_labels WHERE (task_id, label_id) = "
                                "(SELECT task_id, label_id FROM task_labels ORDER BY 1, 2 LIMIT 1) "
                                "RETURNING task_id::text, label_id::text").fetchone()
        cascade.setdefault("task_labels", []).append({"task_id": junction[0], "label_id": junction[1]})
        conn.execute("UPDATE labels SET name = name || ' (renamed)' WHERE id = (SELECT min(id::text)::uuid FROM labels)")
        conn.execute("UPDATE tasks SET status = 'done', completed_at = now() "
                     "WHERE id IN (SELECT id FROM tasks WHERE status <> 'done' ORDER BY id LIMIT 20)")
        new_task = conn.execute(
            "INSERT INTO tasks (project_id, title) SELECT id, 'inserted after the full' FROM projects "
            "ORDER BY id LIMIT 1 RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO task_labels (task_id, label_id) SELECT %s, id FROM labels ORDER BY id LIMIT 1",
                     (new_task,))
        conn.commit()
    return cascade


def deleted_keys(document: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    return {table: sorted(keys, key=json.dumps) for table, keys in document["deleted"].items()}


def test_incremental_holds_changed_rows_and_exactly_the_deleted_keys(make_config, source_dsn, tmp_path):
    config = make_config(export={"incremental": True})
    full = backup(config)
    assert full["kind"] == "full"
    expected = make_changes(source_dsn)
    inc = backup(config)
    assert inc["kind"] == "incremental" and inc["base"] == full["id"]
    folder = tmp_path / "backups" / inc["id"]
    meta = manifest(folder)
    assert meta["kind"] == "incremental" and meta["base"] == full["id"] and meta["since"]
    # the SQL dump stays full in every backup
    assert {a["content"] for a in meta["artifacts"]} >= {"schema", "data", "export"}
    document = export_document(folder)
    assert document["format"] == "incremental" and document["incremental"] is True
    assert document["since"] == meta["since"]
    assert deleted_keys(document) == {t: sorted(k, key=json.dumps) for t, k in expected.items()}
    titles = [r["title"] for r in document["data"]["tasks"]]
    assert "inserted after the full" in titles
    assert len(document["data"]["tasks"]) < 100  # only changed rows, not the 2000 tasks
    assert any(r["name"].endswith("(renamed)") for r in document["data"]["labels"])
    # task_labels has no updated_at: exported whole
    with psycopg.connect(source_dsn) as conn:
        assert len(document["data"]["task_labels"]) == conn.execute("SELECT count(*) FROM task_labels").fetchone()[0]


def test_full_every_and_forced_kinds(make_config, tmp_path):
    config = make_config(export={"incremental": True, "full_every": "7d"})
    assert backup(config)["kind"] == "full"
    assert backup(config)["kind"] == "incremental"
    forced = backup(config, "--full")
    assert forced["kind"] == "full"
    after = backup(config, "--incremental")
    assert after["kind"] == "incremental" and after["base"] == forced["id"]
    zero = make_config(export={"incremental": True, "full_every": "1s"})
    assert backup(zero)["kind"] == "full"


def test_incremental_refused_when_config_has_them_off(make_config):
    config = make_config()
    result = run_cli("--config", str(config), "backup", "--incremental")
    assert result.returncode == 2
    assert "export.incremental" in result.stderr


def test_lost_state_dir_means_a_full(make_config, tmp_path):
    import shutil

    config = make_config(export={"incremental": True})
    backup(config)
    shutil.rmtree(tmp_path / "state" / "keys")
    assert backup(config)["kind"] == "full"


def empty_schema(pg) -> str:
    """A new database holding the Jarvis schema and no rows."""
    import subprocess

    from tests.conftest import SCHEMA_SQL

    dsn = pg.fresh_db("inc_target", template=None)
    loaded = subprocess.run([str(pg.server.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn,
                             "-f", str(SCHEMA_SQL)], capture_output=True, text=True, check=False)
    assert loaded.returncode == 0, loaded.stderr
    return dsn


def restore_into(config: Path, backup_id: str, target: str) -> None:
    result = run_cli("--config", str(config), "restore", backup_id, "--target", target)
    assert result.returncode == 0, result.stderr


def test_restoring_an_incremental_restores_its_chain_to_the_source_state(make_config, source_dsn, pg):
    config = make_config(export={"incremental": True})
    full = backup(config)
    make_changes(source_dsn)
    inc = backup(config)
    assert inc["base"] == full["id"]
    expected = table_checksums(source_dsn, manifest_tables(config, full["id"]))
    target = empty_schema(pg)
    restore_into(config, inc["id"], target)
    assert table_checksums(target, manifest_tables(config, full["id"])) == expected


def test_chain_of_five_incrementals_restores_each_state(make_config, source_dsn, pg):
    config = make_config(export={"incremental": True})
    full = backup(config)
    states = []
    for step in range(5):
        with psycopg.connect(source_dsn) as conn:
            conn.execute("DELETE FROM tasks WHERE id IN (SELECT id FROM tasks t WHERE NOT EXISTS "
                         "(SELECT 1 FROM tasks s WHERE s.parent_task_id = t.id) ORDER BY id OFFSET %s LIMIT 3)",
                         (step * 7,))
            conn.execute("UPDATE tasks SET priority = 'urgent', title = title || %s "
                         "WHERE id IN (SELECT id FROM tasks ORDER BY id DESC OFFSET %s LIMIT 5)", (f" #{step}", step))
            conn.execute("DELETE FROM task_labels WHERE (task_id, label_id) IN "
                         "(SELECT task_id, label_id FROM task_labels ORDER BY 2, 1 LIMIT 2)")
            conn.execute("INSERT INTO labels (name) VALUES (%s)", (f"label of step {step}",))
            conn.execute("UPDATE labels SET name = name || '!' WHERE id = (SELECT id FROM labels ORDER BY id LIMIT 1)")
            conn.commit()
        inc = backup(config)
        assert inc["kind"] == "incremental" and inc["base"] == full["id"]
        states.append((inc["id"], table_checksums(source_dsn, manifest_tables(config, full["id"]))))
    for backup_id, expected in (states[1], states[4]):
        target = empty_schema(pg)
        restore_into(config, backup_id, target)
        assert table_checksums(target, manifest_tables(config, full["id"])) == expected, backup_id


def test_retention_keeps_the_chain_of_a_kept_incremental(make_config, tmp_path):
    config = make_config(export={"incremental": True},
                         destinations=[{"name": "local", "type": "local", "path": str(tmp_path / "backups"),
                                        "retention": {"keep_last": 1}}])
    full = backup(config)
    first = backup(config)
    second = backup(config)
    ids = [b["id"] for b in json.loads(run_cli("--config", str(config), "list", "--json").stdout)]
    assert ids == [full["id"], first["id"], second["id"]]  # keep_last 1, yet the chain stays
    prune = run_cli("--config", str(config), "prune")
    assert prune.returncode == 0 and "base of" in prune.stdout
    new_full = backup(config, "--full")
    ids = [b["id"] for b in json.loads(run_cli("--config", str(config), "list", "--json").stdout)]
    assert ids == [new_full["id"]]  # the old chain is no longer needed by a kept backup


def manifest_tables(config: Path, backup_id: str) -> dict[str, Any]:
    import tomllib

    root = Path(tomllib.loads(config.read_text())["destinations"][0]["path"])
    return manifest(root / backup_id)["tables"]
