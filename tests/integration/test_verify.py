"""`backupd verify` against real backups of a real PostgreSQL, through the CLI as an operator runs it:
artifacts checked byte for byte and decoded to the end, rows checked against the manifest, restore
tests into scratch databases, and the verdict kept in status, history and `list`."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import zstandard

from tests.conftest import run_cli


def _backup(config: Path, tmp_path: Path) -> Path:
    result = run_cli("--config", str(config), "-q", "backup")
    assert result.returncode == 0, result.stderr
    folders = sorted(p for p in (tmp_path / "backups").iterdir() if p.is_dir())
    return folders[-1]


def _verify(config: Path, *args: str) -> tuple[int, str, str]:
    result = run_cli("--config", str(config), "-q", "verify", *args)
    return result.returncode, result.stdout, result.stderr


def _rewrite_artifact(backup: Path, name: str, plain: bytes) -> None:
    """Replace an artifact's content and make the manifest agree (sha256 and size recomputed):
    what someone tampering with the data before upload would leave behind."""
    stored = zstandard.ZstdCompressor().compress(plain)
    (backup / name).write_bytes(stored)
    manifest = json.loads((backup / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        if artifact["name"] == name:
            artifact["sha256"] = hashlib.sha256(stored).hexdigest()
            artifact["bytes"] = len(stored)
    (backup / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _plain(backup: Path, name: str) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress((backup / name).read_bytes())


def _tasks_block(sql: bytes) -> tuple[list[bytes], int, list[str]]:
    lines = sql.split(b"\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(b"COPY public.tasks "))
    columns = lines[start].split(b"(", 1)[1].split(b")", 1)[0].decode().split(", ")
    return lines, start, columns


def _status(config: Path) -> tuple[int, dict]:
    result = run_cli("--config", str(config), "status", "--json")
    return result.returncode, json.loads(result.stdout)


def _listed(config: Path) -> dict[str, dict]:
    result = run_cli("--config", str(config), "list", "--json")
    assert result.returncode == 0, result.stderr
    return {row["id"]: row for row in json.loads(result.stdout)}


def test_verify_passes_on_fresh_backup_and_list_shows_it(make_config, tmp_path):
    """A fresh backup verifies: one line per artifact, exit 0, recorded as a passed drill."""
    config = make_config()
    backup = _backup(config, tmp_path)
    assert _listed(config)[backup.name]["verified"] is None
    code, out, err = _verify(config, "latest")
    assert code == 0, err
    for name in ("schema.sql.zst", "data.sql.zst", "export.json.zst"):
        line = next(line for line in out.splitlines() if name in line)
        assert line.split()[0] == "ok"
    assert "12 tables" in out and "verification passed" in out
    assert _listed(config)[backup.name]["verified"] is True
    listing = run_cli("--config", str(config), "list").stdout
    assert "VERIFIED" in listing and listing.splitlines()[1].split()[-1] == "ok"
    code, status = _status(config)
    assert code == 0 and status["last_drill"]["outcome"] == "passed"
    assert status["last_drill"]["id"] == backup.name and status["last_drill"]["destination"] == "local"
    history = [json.loads(line) for line in (tmp_path / "state" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["event"] == "verify" and history[-1]["outcome"] == "passed"
    report = json.loads(run_cli("--config", str(config), "-q", "verify", backup.name, "--json").stdout)
    assert report["outcome"] == "passed" and len(report["artifacts"]) == 3 and report["restore"] is None


def test_flipped_byte_fails_naming_the_artifact_and_marks_failing(make_config, tmp_path):
    """One byte changed in the middle of data.sql: exit 1 naming it; list flags the backup;
    status turns failing."""
    config = make_config()
    backup = _backup(config, tmp_path)
    path = backup / "data.sql.zst"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, out, err = _verify(config, backup.name)
    assert code == 1
    assert "data.sql.zst" in err and "sha256 mismatch" in err
    assert "Traceback" not in err
    failed = [line for line in out.splitlines() if line.strip().startswith("FAILED")]
    assert len(failed) == 1 and "data.sql.zst" in failed[0]
    row = _listed(config)[backup.name]
    assert row["verified"] is False and "data.sql.zst" in row["verify_error"]
    assert "FAILED" in run_cli("--config", str(config), "list").stdout
    code, status = _status(config)
    assert code == 1 and status["health"] == "failing"
    assert status["last_drill"]["outcome"] == "failed" and "data.sql.zst" in status["last_drill"]["error"]
    metrics = (tmp_path / "state" / "backupd.prom").read_text()
    assert 'backupd_last_drill_outcome{outcome="failed"} 1' in metrics


def test_truncated_artifact_fails_naming_it(make_config, tmp_path):
    config = make_config()
    backup = _backup(config, tmp_path)
    path = backup / "export.json.zst"
    path.write_bytes(path.read_bytes()[:-100])
    code, _out, err = _verify(config, "latest")
    assert code == 1
    assert "export.json.zst" in err and "truncated" in err


def test_truncated_stream_with_matching_manifest_fails_decoding(make_config, tmp_path):
    """The stored bytes match the manifest (sha256 recomputed) but the zstd stream ends early:
    decoding to the end catches it."""
    config = make_config()
    backup = _backup(config, tmp_path)
    stored = (backup / "schema.sql.zst").read_bytes()[:-20]
    (backup / "schema.sql.zst").write_bytes(stored)
    manifest = json.loads((backup / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        if artifact["name"] == "schema.sql.zst":
            artifact["sha256"], artifact["bytes"] = hashlib.sha256(stored).hexdigest(), len(stored)
    (backup / "manifest.json").write_text(json.dumps(manifest))
    code, _out, err = _verify(config, "latest")
    assert code == 1 and "schema.sql.zst" in err and "zstd" in err


def test_missing_artifact_fails_naming_it(make_config, tmp_path):
    config = make_config()
    backup = _backup(config, tmp_path)
    (backup / "schema.sql.zst").unlink()
    code, out, err = _verify(config, "latest")
    assert code == 1
    assert "schema.sql.zst" in err and "missing" in err
    assert sum(1 for line in out.splitlines() if line.strip().startswith("ok")) == 2


def test_manifest_rows_that_disagree_fail_naming_the_table(make_config, tmp_path):
    """The manifest claims one more task than the backup holds: both data.sql and the export
    disagree, and the table is named."""
    config = make_config()
    backup = _backup(config, tmp_path)
    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["tables"]["tasks"]["rows"] += 1
    (backup / "manifest.json").write_text(json.dumps(manifest, indent=2))
    code, out, err = _verify(config, "latest")
    assert code == 1
    assert "table tasks" in err and "the manifest says" in err
    failed = [line for line in out.splitlines() if line.strip().startswith("FAILED")]
    assert {line.split()[1] for line in failed} == {"data.sql.zst", "export.json.zst"}


def test_unknown_backup_id_is_one_line(make_config, tmp_path):
    config = make_config()
    _backup(config, tmp_path)
    code, _out, err = _verify(config, "20200101T000000Z")
    assert code == 1 and "20200101T000000Z not found at local" in err and "Traceback" not in err


def test_restore_test_on_throwaway_server_passes(make_config, pg, source_dsn, tmp_path):
    """No scratch_dsn: backupd starts its own PostgreSQL, even when the source's role could
    CREATEDB (here a superuser: the source's server is never used), restores both halves as an
    unprivileged role, compares every table with the manifest, reports the restore time, and
    stops the server."""
    config = make_config(source={"exclude_columns": {"users": ["email"]}})
    backup = _backup(config, tmp_path)
    before = {r[0] for r in pg.execute(pg.dsn(), "SELECT datname FROM pg_database")}
    result = run_cli("--config", str(config), "--log-format", "json", "verify", "latest", "--restore-test")
    code, out, err = result.returncode, result.stdout, result.stderr
    assert code == 0, out + err
    assert "throwaway PostgreSQL" in out and "source server" not in out
    sql_line = next(line for line in out.splitlines() if "via psql" in line)
    json_line = next(line for line in out.splitlines() if "JSON export" in line)
    for line in (sql_line, json_line):
        assert line.split()[0] == "ok" and "12 tables" in line and "restored in" in line
    assert "restore time (RTO)" in out
    status = _status(config)[1]
    assert status["last_drill"]["restore_test"] is True and status["last_drill"]["rto_seconds"] > 0
    assert status["last_drill"]["id"] == backup.name
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    started = next(e for e in events if e["event"] == "scratch_server_starting")
    assert any(e["event"] == "scratch_server_stopped" for e in events)
    assert not Path(started["folder"]).exists()  # stopped and removed
    assert {r[0] for r in pg.execute(pg.dsn(), "SELECT datname FROM pg_database")} == before


def test_restore_test_on_scratch_dsn_drops_its_databases(make_config, pg, tmp_path):
    config = make_config(verify={"scratch_dsn": pg.dsn()})
    _backup(config, tmp_path)
    code, out, err = _verify(config, "latest", "--restore-test", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["restore"]["ok"] and set(report["restore"]["halves"]) == {"sql", "json"}
    assert all(h["tables"] == 12 and h["rows"] > 0 for h in report["restore"]["halves"].values())
    left = pg.execute(pg.dsn(), "SELECT datname FROM pg_database WHERE datname LIKE 'backupd_drill_%'")
    assert left == []


def test_restore_test_fails_on_data_tampered_before_upload(make_config, pg, tmp_path):
    """A task's title changed inside data.sql, sha256 and size recomputed in the manifest: the
    artifacts look whole (plain verify passes), the restore test finds the table that differs."""
    config = make_config(verify={"scratch_dsn": pg.dsn()})
    backup = _backup(config, tmp_path)
    lines, start, columns = _tasks_block(_plain(backup, "data.sql.zst"))
    fields = lines[start + 1].split(b"\t")
    fields[columns.index("title")] = b"tampered title"
    lines[start + 1] = b"\t".join(fields)
    _rewrite_artifact(backup, "data.sql.zst", b"\n".join(lines))
    assert _verify(config, "latest")[0] == 0
    code, out, err = _verify(config, "latest", "--restore-test")
    assert code == 1
    assert "restore test (sql)" in err and "table tasks" in err and "checksum" in err
    assert any(line.split()[:2] == ["ok", "json"] for line in out.splitlines() if line.strip())
    code, status = _status(config)
    assert code == 1 and status["health"] == "failing"
    assert pg.execute(pg.dsn(), "SELECT datname FROM pg_database WHERE datname LIKE 'backupd_drill_%'") == []


def test_row_removed_from_data_sql_fails_verify_and_restore_test(make_config, pg, tmp_path):
    config = make_config(verify={"scratch_dsn": pg.dsn()})
    backup = _backup(config, tmp_path)
    lines, start, _columns = _tasks_block(_plain(backup, "data.sql.zst"))
    del lines[start + 1]
    _rewrite_artifact(backup, "data.sql.zst", b"\n".join(lines))
    code, _out, err = _verify(config, "latest")
    assert code == 1 and "data.sql.zst" in err and "table tasks" in err
    report = json.loads(_verify(config, "latest", "--restore-test", "--json")[1])
    assert report["outcome"] == "failed"
    assert report["restore"]["error"].startswith("skipped")


def test_passing_drill_after_a_failed_one_restores_health(make_config, tmp_path):
    config = make_config()
    good = _backup(config, tmp_path)
    bad = _backup(config, tmp_path)
    (bad / "export.json.zst").unlink()
    assert _verify(config, bad.name)[0] == 1
    assert _status(config)[1]["health"] == "failing"
    (bad / "manifest.json").unlink()  # the broken backup is removed by its operator
    assert _verify(config, good.name)[0] == 0
    code, status = _status(config)
    assert code == 0 and status["health"] == "healthy"
    listed = _listed(config)
    assert listed[good.name]["verified"] is True


def test_scheduled_drill_records_and_alerts_on_failure(make_config, tmp_path):
    """`run_scheduled_drills` (what the daemon calls): due per `[verify] schedule`, drills the
    newest backup of each destination, and a failure marks health failing and sends a
    `verify_failed` event."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from backupd.config import load_config
    from backupd.verify import drill_due, run_scheduled_drills

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        """Stands in for a generic webhook receiver (an alerting service on the internet)."""

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        config_path = make_config(verify={"schedule": "daily"},
                                  notifiers=[{"type": "webhook", "url": url, "on": ["verify_failed"]}])
        backup = _backup(config_path, tmp_path)
        config = load_config(str(config_path))
        now = datetime.now(UTC)
        assert drill_due(config, now)
        (backup / "data.sql.zst").write_bytes(b"not zstd at all")
        reports = run_scheduled_drills(config, now)
        assert [r.outcome for r in reports] == ["failed"]
        assert not drill_due(config, now)  # daily: not again until tomorrow
        code, status = _status(config_path)
        assert code == 1 and status["health"] == "failing"
        assert status["last_drill"]["trigger"] == "schedule"
        assert [e["event"] for e in received] == ["verify_failed"]
        assert "data.sql.zst" in json.dumps(received[0])
    finally:
        server.shutdown()
        server.server_close()


def test_restore_test_needs_a_server_and_says_what_is_missing(make_config, tmp_path):
    """A backup from a PostgreSQL newer than any server here: the restore test says what to install."""
    config = make_config()
    backup = _backup(config, tmp_path)
    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["source"]["server_version_num"] = 990000
    manifest["source"]["server_version"] = "99.0"
    (backup / "manifest.json").write_text(json.dumps(manifest))
    code, _out, err = _verify(config, "latest", "--restore-test")
    assert code == 1
    assert ">= 99" in err and "scratch_dsn" in err
    assert "Traceback" not in err
