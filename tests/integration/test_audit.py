"""The audit trail in the source database: one row per backup and prune, outside the snapshot it
describes, in either table shape, and never fatal."""

from __future__ import annotations

import getpass
import json
import re

import psycopg
import zstandard

from tests.conftest import REPO, run_cli

SECURITY_DOC = REPO / "docs" / "security.md"


def doc_sql(marker: str) -> str:
    """The SQL block that follows `<!-- sql:MARKER -->` in docs/security.md (tests run the docs)."""
    text = SECURITY_DOC.read_text()
    match = re.search(rf"<!-- sql:{marker} -->\s*```sql\n(.*?)```", text, re.S)
    assert match, f"docs/security.md has no sql:{marker} block"
    return match.group(1)


def _audit_rows(dsn: str, event: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT level, source, event, message, duration_ms, context FROM logs WHERE event = %s "
            "ORDER BY created_at", [event]).fetchall()


def test_backup_writes_one_audit_row_outside_its_own_snapshot(make_config, source_dsn, tmp_path):
    """`[audit] table = "logs"`: a backup adds one `backupd.backup` row naming the OS user, the
    trigger, the id, the outcome and the counts; the backup's own logs rows do not include it."""
    with psycopg.connect(source_dsn) as conn:
        logs_before = conn.execute("SELECT count(*) FROM logs").fetchone()[0]
    config = make_config(audit={"table": "logs"})
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 0, result.stderr
    backup = next(p for p in (tmp_path / "backups").iterdir() if p.is_dir())
    manifest = json.loads((backup / "manifest.json").read_text())
    rows = _audit_rows(source_dsn, "backupd.backup")
    assert len(rows) == 1
    level, source, _event, message, duration_ms, context = rows[0]
    assert (level, source) == ("info", "user")
    assert manifest["id"] in message and "success" in message
    assert duration_ms is not None and duration_ms > 0
    assert context["actor"] == getpass.getuser() and context["trigger"] == "manual"
    assert context["backup_id"] == manifest["id"] and context["outcome"] == "success"
    assert context["counts"]["rows"] == sum(t["rows"] for t in manifest["tables"].values())
    assert context["detail"]["destinations"]["local"]["ok"] is True
    # the row was written after the snapshot: the backup holds the logs table as it was before
    assert manifest["tables"]["logs"]["rows"] == logs_before
    export = json.loads(zstandard.ZstdDecompressor().stream_reader(
        (backup / "export.json.zst").open("rb")).read())
    assert not [r for r in export["data"]["logs"] if r["event"] == "backupd.backup"]


def test_failed_backup_is_audited_as_error(make_config, source_dsn, tmp_path):
    """A backup that fails (pg_dump missing) still leaves an `error` row with the failure."""
    config = make_config(audit={"table": "logs"}, dump={"pg_dump": str(tmp_path / "no-such-pg_dump")})
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 1
    rows = _audit_rows(source_dsn, "backupd.backup")
    assert len(rows) == 1
    level, _source, _event, message, _duration, context = rows[0]
    assert level == "error" and context["outcome"] == "failed" and "failed" in message
    assert context["error"]


def test_prune_is_audited_with_counts(make_config, source_dsn, tmp_path):
    """`backupd prune` (not --dry-run) adds one `backupd.prune` row with removed/kept counts."""
    config = make_config(audit={"table": "logs"})
    for _ in range(2):
        assert run_cli("--config", str(config), "backup").returncode == 0
    config = make_config(audit={"table": "logs"}, destinations=[
        {"name": "local", "type": "local", "path": str(tmp_path / "backups"), "retention": {"keep_last": 1}}])
    assert run_cli("--config", str(config), "prune", "--dry-run").returncode == 0
    assert _audit_rows(source_dsn, "backupd.prune") == []
    result = run_cli("--config", str(config), "prune")
    assert result.returncode == 0, result.stderr
    rows = _audit_rows(source_dsn, "backupd.prune")
    assert len(rows) == 1
    context = rows[0][5]
    assert context["counts"] == {"removed": 1, "kept": 1}
    assert len(_audit_rows(source_dsn, "backupd.backup")) == 2


def test_documented_audit_table_shape(make_config, source_dsn, pg):
    """The table shape given in docs/security.md receives actor, action, id, outcome and counts."""
    pg.execute(source_dsn, "DO $$ BEGIN CREATE ROLE backupd; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    pg.execute(source_dsn, doc_sql("audit-table"))
    config = make_config(audit={"table": "public.backupd_audit"})
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 0, result.stderr
    rows = pg.execute(source_dsn, "SELECT actor, action, backup_id, outcome, rows, bytes, trigger, detail "
                                  "FROM backupd_audit")
    assert len(rows) == 1
    actor, action, backup_id, outcome, row_count, byte_count, trigger, detail = rows[0]
    assert (actor, action, outcome, trigger) == (getpass.getuser(), "backup", "success", "manual")
    assert backup_id and row_count > 2000 and byte_count > 0
    assert detail["backup_id"] == backup_id


def test_audit_failure_is_logged_never_fatal(make_config, source_dsn):
    """An audit table that does not exist: the backup still succeeds; `audit_failed` is logged."""
    config = make_config(audit={"table": "no_such_audit_table"})
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 0, result.stderr
    assert "audit_failed" in result.stderr and "no_such_audit_table" in result.stderr


def test_audit_table_name_is_an_identifier_not_sql(make_config, source_dsn, pg):
    """A table name carrying SQL is quoted as one identifier: nothing is executed, nothing dropped."""
    config = make_config(audit={"table": 'logs"; DROP TABLE tasks; --'})
    assert run_cli("--config", str(config), "backup").returncode == 0
    assert pg.execute(source_dsn, "SELECT to_regclass('public.tasks') IS NOT NULL")[0][0] is True


def test_verify_is_audited(make_config, source_dsn):
    """`backupd verify latest` adds one `backupd.verify` row with the outcome and the backup id."""
    config = make_config(audit={"table": "logs"})
    assert run_cli("--config", str(config), "backup").returncode == 0
    result = run_cli("--config", str(config), "verify", "latest")
    assert result.returncode == 0, result.stderr
    rows = _audit_rows(source_dsn, "backupd.verify")
    assert len(rows) == 1
    context = rows[0][5]
    assert context["outcome"] == "success" and context["backup_id"]
    assert context["backup_id"] == _audit_rows(source_dsn, "backupd.backup")[0][5]["backup_id"]


def test_restore_is_audited(make_config, source_dsn, pg, tmp_path):
    """A restore adds one `backupd.restore` row in the source database naming the backup and the
    counts; `--supabase-skeleton` without `--sql` is a usage error (exit 2) that restores nothing."""
    config = make_config(audit={"table": "logs"})
    assert run_cli("--config", str(config), "backup").returncode == 0
    target = pg.fresh_db("audited", template=None)
    refused = run_cli("--config", str(config), "restore", "latest", "--supabase-skeleton", "--target", target)
    assert refused.returncode == 2 and "--sql" in refused.stderr
    assert not _audit_rows(source_dsn, "backupd.restore")
    result = run_cli("--config", str(config), "restore", "latest", "--sql", "--target", target)
    assert result.returncode == 0, result.stderr
    rows = _audit_rows(source_dsn, "backupd.restore")
    assert len(rows) == 1
    context = rows[0][5]
    assert context["outcome"] == "success" and context["detail"]["strategy"] == "sql"
    assert context["counts"]["inserted"] > 0
