"""Signed manifests (issue #17 item 2, contract section 9), through the real CLI: `backupd keygen`,
a signed backup that restores and verifies, and the forgeries a writer of the backup store can
plant: a tampered export whose sha256 was re-made in the manifest, an unsigned manifest, a newer
unsigned copy and one dated 2099 (never `latest`, never counted or pruned by retention), a manifest
claiming `encryption: "none"` under a config that encrypts, and a git destination read with
another key. Each refusal exits 1 naming the signature, with the target database unchanged. The
key never appears in anything backupd writes or prints. Real PostgreSQL, real git, real age."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard

from backupd.manifest import backup_id, id_time
from tests.conftest import run_cli, table_checksums, write_config

FORGED_FUTURE = "20991231T235959Z"


@pytest.fixture(scope="module")
def signed(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One signed backup of the Jarvis fixture (local destination), made once for the module."""
    root = tmp_path_factory.mktemp("signed")
    key_file = root / "signing.key"
    result = run_cli("keygen", str(key_file))
    assert result.returncode == 0, result.stderr
    source = pg.fresh_db("signed_src")
    sections = {"source": {"dsn": source}, "state": {"dir": str(root / "state")},
                "security": {"signing_key_file": str(key_file)},
                "destinations": [{"name": "local", "type": "local", "path": str(root / "backups")}]}
    config = write_config(root / "backupd.toml", sections)
    result = run_cli("--config", str(config), "-v", "backup")
    assert result.returncode == 0, result.stderr
    backup = next(p for p in (root / "backups").iterdir() if p.is_dir())
    return {"root": root, "key": key_file.read_text().strip(), "key_file": key_file, "source": source,
            "backup": backup, "sections": sections, "outputs": result.stdout + result.stderr}


def _store(signed: dict[str, Any], tmp_path: Path, *, extra: dict[str, Any] | None = None,
           key: bool = True) -> tuple[Path, Path]:
    """A copy of the signed backup in a destination of its own, and a config reading it."""
    backups = tmp_path / "backups"
    backups.mkdir()
    shutil.copytree(signed["backup"], backups / signed["backup"].name)
    sections = {**signed["sections"], "state": {"dir": str(tmp_path / "state")},
                "destinations": [{"name": "local", "type": "local", "path": str(backups)}], **(extra or {})}
    if not key:
        sections.pop("security")
    return backups, write_config(tmp_path / "backupd.toml", sections)


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _victim(pg: Any) -> tuple[str, dict[str, tuple[int, str]]]:
    """A target database that differs from the backup (one title changed), and its checksums."""
    target = pg.fresh_db("victim")
    with psycopg.connect(target) as conn:
        conn.execute("UPDATE tasks SET title = 'only in the target' WHERE id = (SELECT min(id::text)::uuid FROM tasks)")
    return target, table_checksums(target)


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--config", str(config), *args)


def test_keygen_writes_a_0600_key_and_never_overwrites(tmp_path):
    key_file = tmp_path / "key"
    result = run_cli("keygen", str(key_file))
    assert result.returncode == 0, result.stderr
    key = key_file.read_text()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key.strip()) == 64 and int(key, 16) >= 0 and key.endswith("\n")
    assert key.strip() not in result.stdout + result.stderr
    again = run_cli("keygen", str(key_file))
    assert again.returncode == 1 and "never overwrites" in again.stderr
    assert key_file.read_text() == key
    assert run_cli("keygen", str(tmp_path / "other")).stdout != result.stdout  # a fresh key each time
    assert (tmp_path / "other").read_text() != key


def test_signed_backup_round_trip_and_the_key_is_never_written(signed, pg, tmp_path):
    """The manifest is signed; list says so; restore and verify accept it; the key is nowhere."""
    manifest = _manifest(signed["backup"])
    assert manifest["signature"].startswith("hmac-sha256:") and len(manifest["signature"]) == 12 + 64
    config = signed["root"] / "backupd.toml"
    listing = _cli(config, "list", "--json")
    assert json.loads(listing.stdout)[0]["signature"] == "valid"
    assert "valid" in _cli(config, "list").stdout.splitlines()[1]
    target = pg.fresh_db("signed_tgt")
    restored = _cli(config, "-v", "restore", "latest", "--target", target, "--strategy", "replace", "--yes")
    assert restored.returncode == 0, restored.stderr
    assert table_checksums(target) == table_checksums(signed["source"])
    verified = _cli(config, "-v", "verify", "latest")
    assert verified.returncode == 0, verified.stderr
    assert "signature" not in restored.stderr + verified.stderr  # no warning for a genuine backup
    status = _cli(config, "status", "--json")
    key = signed["key"]
    seen = signed["outputs"] + restored.stdout + restored.stderr + verified.stdout + verified.stderr \
        + listing.stdout + status.stdout + status.stderr
    for path in [*(signed["root"] / "state").rglob("*"), *(signed["root"] / "backups").rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".zst":
                data = zstandard.ZstdDecompressor().stream_reader(data).read()
            seen += data.decode("utf-8", "replace")
    assert key not in seen and key.upper() not in seen


def test_tampered_backup_with_a_remade_sha256_is_refused(signed, pg, tmp_path):
    """A row changed in export.json, the artifact's sha256 and size re-made in the manifest: the
    signature no longer matches; restore, verify and diff refuse before reading anything."""
    backups, config = _store(signed, tmp_path)
    folder = backups / signed["backup"].name
    export = folder / "export.json.zst"
    plain = zstandard.ZstdDecompressor().stream_reader(export.read_bytes()).read()
    forged = zstandard.ZstdCompressor().compress(plain.replace(b'"title":"', b'"title":"PWNED ', 1))
    export.write_bytes(forged)
    manifest = _manifest(folder)
    for artifact in manifest["artifacts"]:
        if artifact["name"] == "export.json.zst":
            artifact["sha256"], artifact["bytes"] = hashlib.sha256(forged).hexdigest(), len(forged)
    _write_manifest(folder, manifest)
    target, before = _victim(pg)
    restored = _cli(config, "restore", "latest", "--target", target)
    assert restored.returncode == 1 and "signature" in restored.stderr, restored.stderr
    restored = _cli(config, "restore", folder.name, "--target", target, "--strategy", "replace", "--yes")
    assert restored.returncode == 1 and "signature" in restored.stderr, restored.stderr
    assert "Traceback" not in restored.stderr
    assert table_checksums(target) == before
    verified = _cli(config, "verify", folder.name)
    assert verified.returncode == 1 and "signature" in verified.stderr
    compared = _cli(config, "diff", folder.name, folder.name)
    assert compared.returncode == 1 and "signature" in compared.stderr
    assert "INVALID" in _cli(config, "list").stdout


def test_unsigned_manifest_refused_with_a_key_accepted_with_trust_unsigned_or_without_key(signed, pg, tmp_path):
    backups, config = _store(signed, tmp_path)
    folder = backups / signed["backup"].name
    manifest = _manifest(folder)
    del manifest["signature"]
    _write_manifest(folder, manifest)
    target, before = _victim(pg)
    refused = _cli(config, "restore", folder.name, "--target", target, "--strategy", "replace", "--yes")
    assert refused.returncode == 1 and "has no signature" in refused.stderr, refused.stderr
    assert table_checksums(target) == before
    assert _cli(config, "list", "--json").stdout.count('"unsigned"') == 1
    trusted = _cli(config, "restore", folder.name, "--target", target, "--strategy", "replace", "--yes",
                   "--trust-unsigned")
    assert trusted.returncode == 0, trusted.stderr
    assert "signature_not_trusted" in trusted.stderr and "--trust-unsigned" in trusted.stderr
    assert table_checksums(target) == table_checksums(signed["source"])
    # no key configured (a set-up from before signing): read as before, with a warning
    no_key = write_config(tmp_path / "nokey.toml", {
        **signed["sections"], "state": {"dir": str(tmp_path / "state")},
        "destinations": [{"name": "local", "type": "local", "path": str(backups)}],
        "security": {}})
    verified = _cli(no_key, "verify", "latest")
    assert verified.returncode == 0, verified.stderr
    assert "signature_not_checked" in verified.stderr and "signing_key" in verified.stderr
    doctor = _cli(no_key, "doctor")
    assert "WARN  signing key" in doctor.stdout and "keygen" in doctor.stdout, doctor.stdout
    assert "ok    signing key" in _cli(config, "doctor").stdout


def test_forged_newer_and_future_copies_are_never_latest_nor_counted_by_retention(signed, pg, tmp_path):
    """Two unsigned copies planted beside the genuine backup: one a minute newer, one dated 2099.
    `latest` stays the genuine one and the warning names both; `prune` with keep_last = 1 neither
    removes the genuine backup nor the planted ones (they are not counted)."""
    backups, config = _store(signed, tmp_path, extra={"destinations": [
        {"name": "local", "type": "local", "path": str(tmp_path / "backups"), "retention": {"keep_last": 1}}]})
    genuine = signed["backup"].name
    newer = backup_id(id_time(genuine) + timedelta(minutes=1))
    for forged_id in (newer, FORGED_FUTURE):
        forged = backups / forged_id
        shutil.copytree(backups / genuine, forged)
        manifest = _manifest(forged)
        manifest["id"] = forged_id
        del manifest["signature"]
        _write_manifest(forged, manifest)
    verified = _cli(config, "verify", "latest")
    assert verified.returncode == 0, verified.stderr
    assert f"verifying backup {genuine}" in verified.stdout
    assert newer in verified.stderr and FORGED_FUTURE in verified.stderr
    states = {row["id"]: row["signature"] for row in json.loads(_cli(config, "list", "--json").stdout)}
    assert states == {genuine: "valid", newer: "unsigned", FORGED_FUTURE: "future"}
    target = pg.fresh_db("latest_tgt")
    restored = _cli(config, "restore", "latest", "--target", target, "--strategy", "replace", "--yes")
    assert restored.returncode == 0 and FORGED_FUTURE in restored.stderr, restored.stderr
    pruned = _cli(config, "-v", "prune")
    assert pruned.returncode == 0, pruned.stderr
    assert sorted(p.name for p in backups.iterdir()) == sorted([genuine, newer, FORGED_FUTURE])
    assert "retention_ignores_untrusted" in pruned.stderr and FORGED_FUTURE in pruned.stderr
    # --trust-unsigned still never makes an id in the future `latest`
    trusting = _cli(config, "verify", "latest", "--trust-unsigned")
    assert f"verifying backup {genuine}" in trusting.stdout, trusting.stdout + trusting.stderr


def test_unencrypted_manifest_refused_when_the_config_encrypts(signed, pg, tmp_path):
    """The genuine, signed backup is plain; read under a config that encrypts (age), its
    `encryption: "none"` artifacts are refused unless --trust-unsigned."""
    identity = tmp_path / "age.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True,
                               text=True).stdout.strip()
    backups, config = _store(signed, tmp_path, extra={"pipeline": {"age_recipients": [recipient]}})
    target, before = _victim(pg)
    refused = _cli(config, "restore", "latest", "--target", target, "--strategy", "replace", "--yes")
    assert refused.returncode == 1 and 'encryption "none"' in refused.stderr, refused.stderr
    assert table_checksums(target) == before
    assert _cli(config, "verify", "latest").returncode == 1
    trusted = _cli(config, "verify", "latest", "--trust-unsigned")
    assert trusted.returncode == 0 and "unencrypted_backup_trusted" in trusted.stderr, trusted.stderr


def test_git_destination_reader_checks_the_signature(signed, pg, tmp_path):
    """git re-writes the manifest it commits (its own artifacts): that one is signed too, and a
    reader with another key refuses it before reading the commit's files."""
    repo = tmp_path / "repo"
    sections = {**signed["sections"], "state": {"dir": str(tmp_path / "state")},
                "destinations": [{"name": "git", "type": "git", "path": str(repo)}]}
    config = write_config(tmp_path / "git.toml", sections)
    made = _cli(config, "backup")
    assert made.returncode == 0, made.stderr
    verified = _cli(config, "verify", "latest")
    assert verified.returncode == 0, verified.stderr
    other_key = tmp_path / "other.key"
    assert run_cli("keygen", str(other_key)).returncode == 0
    other = write_config(tmp_path / "other.toml", {**sections, "security": {"signing_key_file": str(other_key)}})
    target, before = _victim(pg)
    refused = _cli(other, "restore", "latest", "--target", target)
    assert refused.returncode == 1 and "signature" in refused.stderr, refused.stderr
    assert table_checksums(target) == before


def test_drill_refuses_an_untrusted_latest_before_reading_anything(signed, tmp_path):
    """A drill (`verify latest --restore-test` from the daemon) at a destination holding only an
    unsigned backup fails on the signature; its scratch server (a dead port here) is never reached,
    so nothing of the backup was read. Run in-process: drills have no command of their own."""
    from backupd.config import load_config
    from backupd.verify import run_drill

    backups, config = _store(signed, tmp_path, extra={"verify": {"scratch_dsn": "postgresql://d:pw@127.0.0.1:1/x"}})
    folder = backups / signed["backup"].name
    manifest = _manifest(folder)
    del manifest["signature"]
    _write_manifest(folder, manifest)
    loaded = load_config(config)
    report = run_drill(loaded, loaded.destinations[0], trigger="test")
    assert report is not None and not report.ok
    failure = report.failure() or ""
    assert "signature" in failure and "scratch" not in failure, failure
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert "signature" in json.dumps(status.get("last_drill"))
