"""Hostile backups handed to `backupd restore`: a JSON row with a column the table does not have,
a 50 MB single line, a manifest whose artifact names leave the backup folder (`..`, a CSV path
traversal), a JSON file whose table name is an SQL injection. Each is refused with one line before
the target is touched (every table's checksum unchanged), with bounded memory."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard

from backupd.checksum import TableChecksum
from tests.conftest import REPO, backupd_peak_rss, table_checksums
from tests.reliability.conftest import error_lines

pytestmark = pytest.mark.slow

LONG_LINE_BYTES = 50 << 20  # the issue says 1 GB; 50 MB keeps the suite fast and still dwarfs any buffer


def _restore(*args: str, tmp_path: Path) -> tuple[int, str, int]:
    """`backupd -q restore ARGS`: (exit code, stderr, peak RSS in MiB)."""
    return backupd_peak_rss("-q", "restore", *args, tmp_path=tmp_path)


def _rewrite_export(backup: Path, table: str, edit: Any, fix_checksum: bool) -> None:
    """Apply `edit(rows) -> rows` to one table's row lines of export.json.zst; the artifact's size
    and sha256 in the manifest are updated (and the table checksum when `fix_checksum`), so that
    only the content itself is hostile."""
    raw = zstandard.ZstdDecompressor().decompressobj().decompress((backup / "export.json.zst").read_bytes())
    lines = raw.split(b"\n")
    start = lines.index(f'"{table}": ['.encode()) + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(b"]"))
    rows = [line.rstrip(b",") for line in lines[start:end]]
    rows = edit(rows)
    lines[start:end] = [row + b"," for row in rows[:-1]] + rows[-1:]
    data = zstandard.ZstdCompressor(level=1).compress(b"\n".join(lines))
    (backup / "export.json.zst").write_bytes(data)
    manifest = json.loads((backup / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        if artifact["name"] == "export.json.zst":
            artifact["bytes"] = len(data)
            artifact["sha256"] = hashlib.sha256(data).hexdigest()
    if fix_checksum:
        checksum = TableChecksum()
        checksum.add_lines(rows)
        manifest["tables"][table]["rows"] = checksum.rows
        manifest["tables"][table]["checksum"] = checksum.hexdigest
    (backup / "manifest.json").write_text(json.dumps(manifest))


def _rename_artifact(backup: Path, old: str, new: str) -> None:
    manifest = json.loads((backup / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        if artifact["name"] == old:
            artifact["name"] = new
    (backup / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def made_backup(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real backup (JSON + SQL + CSV) of the Jarvis fixture, copied afresh for each case."""
    from tests.conftest import run_cli, write_config

    root = tmp_path_factory.mktemp("hostile_src")
    config = write_config(root / "backupd.toml", {
        "source": {"dsn": pg.fresh_db("hostile")}, "state": {"dir": str(root / "state")},
        "export": {"formats": ["json", "csv"]},
        "destinations": [{"name": "local", "type": "local", "path": str(root / "backups")}],
    })
    result = run_cli("--config", str(config), "-q", "backup")
    assert result.returncode == 0, result.stderr
    return next(p for p in (root / "backups").iterdir() if p.is_dir())


CASES = ["unknown_column", "long_line", "artifact_outside_folder",
         "csv_path_traversal", "manifest_not_json"]


@pytest.mark.parametrize("case", CASES)
def test_hostile_backup_is_refused_before_the_target_is_touched(made_backup, pg, tmp_path, case):
    (tmp_path / "backups").mkdir()
    backup = tmp_path / "backups" / made_backup.name
    subprocess.run(["cp", "-a", str(made_backup), str(backup)], check=True)
    if case == "unknown_column":
        # the artifact's sha256 agrees (re-made by whoever tampered), the table checksum does not
        _rewrite_export(backup, "tasks", lambda rows: [rows[0][:-1] + b',"evil_column":1}', *rows[1:]],
                        fix_checksum=False)
    elif case == "long_line":
        identifier = json.loads(
            zstandard.ZstdDecompressor().decompressobj().decompress((backup / "export.json.zst").read_bytes())
            .split(b"\n")[3].rstrip(b","))["id"]
        huge = b'{"id":"' + identifier.encode() + b'","display_name":"' + b"x" * LONG_LINE_BYTES + b'"}'
        _rewrite_export(backup, "users", lambda rows: [huge, *rows[1:]], fix_checksum=False)
    elif case == "artifact_outside_folder":
        _rename_artifact(backup, "export.json.zst", "../export.json.zst")
        (backup.parent / "export.json.zst").write_bytes((backup / "export.json.zst").read_bytes())
    elif case == "csv_path_traversal":
        _rename_artifact(backup, "csv/tasks.csv.zst", "csv/../../../../tmp/evil.csv.zst")
    else:
        (backup / "manifest.json").write_bytes(b'{"id": "' + backup.name.encode() + b'", "artifacts": [')
    target = pg.fresh_db("victim")
    with psycopg.connect(target) as conn:
        conn.execute("UPDATE tasks SET title = 'only in the target' WHERE id = (SELECT min(id::text)::uuid FROM tasks)")
    before = table_checksums(target)
    config = tmp_path / "restore.toml"
    config.write_text(f'[source]\ndsn = "{target}"\n[state]\ndir = "{tmp_path / "state"}"\n'
                      f'[[destinations]]\nname = "local"\ntype = "local"\npath = "{backup.parent}"\n')
    config.chmod(0o600)
    code, stderr, peak_mib = _restore("--config", str(config), backup.name, "--target", target,
                                      "--strategy", "replace", "--yes", tmp_path=tmp_path)
    print(f"\n{case}: exit {code}, peak RSS {peak_mib} MiB, {error_lines(stderr)}")
    assert code == 1, stderr
    assert len(error_lines(stderr)) == 1 and "Traceback" not in stderr, stderr
    assert table_checksums(target) == before
    assert not Path("/tmp/evil.csv").exists()
    if case == "long_line":
        # measured 344 MiB for the 50 MB line (565 before the sliced decoder): see docs/reliability.md
        assert peak_mib < 1024, peak_mib


def test_unknown_column_consistent_with_its_manifest_is_ignored_with_a_note(made_backup, pg, tmp_path):
    """A row carrying a column the target lacks, in a backup whose checksums agree (schema drift,
    not tampering): the restore loads the known columns; it never crashes and never creates or
    writes the unknown column."""
    (tmp_path / "backups").mkdir()
    backup = tmp_path / "backups" / made_backup.name
    subprocess.run(["cp", "-a", str(made_backup), str(backup)], check=True)
    _rewrite_export(backup, "tasks", lambda rows: [rows[0][:-1] + b',"evil_column":1}', *rows[1:]],
                    fix_checksum=True)
    target = pg.fresh_db("drift")
    config = tmp_path / "restore.toml"
    config.write_text(f'[source]\ndsn = "{target}"\n[state]\ndir = "{tmp_path / "state"}"\n'
                      f'[[destinations]]\nname = "local"\ntype = "local"\npath = "{backup.parent}"\n')
    config.chmod(0o600)
    result = subprocess.run([sys.executable, "-m", "backupd", "--config", str(config), "restore", backup.name,
                             "--target", target, "--strategy", "replace", "--yes"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    columns = [r[0] for r in pg.execute(target, "SELECT column_name FROM information_schema.columns "
                                                "WHERE table_name = 'tasks'")]
    assert "evil_column" not in columns


def test_json_file_with_an_injected_table_name_is_refused(pg, tmp_path):
    """A JSON v2.0 file (as made elsewhere) naming a table `tasks"; DROP TABLE tasks; --`: refused
    with one line, and every table of the target, `tasks` included, is as it was."""
    target = pg.fresh_db("victim")
    before = table_checksums(target)
    evil = 'tasks"; DROP TABLE tasks; --'
    document = {"version": "2.0", "exportedAt": "2026-01-30T14:30:00Z", "format": "full", "incremental": False,
                "since": None, "tables": [evil, "../../etc/passwd"], "recordCount": {evil: 1, "../../etc/passwd": 0},
                "data": {evil: [{"id": "00000000-0000-0000-0000-000000000001"}], "../../etc/passwd": []},
                "deleted": {}}
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(document))
    code, stderr, _ = _restore(str(path), "--target", target, "--strategy", "replace", "--yes", tmp_path=tmp_path)
    assert code in (1, 2), stderr
    assert len(error_lines(stderr)) == 1 and "Traceback" not in stderr, stderr
    assert table_checksums(target) == before
