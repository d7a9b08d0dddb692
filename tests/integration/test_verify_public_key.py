"""`verify` on a server that holds public keys only (the recommended set-up): encrypted artifacts
are checked as stored bytes (size and sha256), the verification passes with a note saying the
contents were not decrypted, and status/metrics record which kind of verification passed;
`--restore-test` without a key is refused up front. Real gpg and age."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path


from backupd.config import load_config
from backupd.crypto import kill_gpg_agent
from backupd.verify import NO_PRIVATE_KEY_NOTE, run_scheduled_drills
from tests.conftest import run_cli
from tests.integration.test_encryption import _gpg, age_identity, gpg_keys  # noqa: F401 - fixtures


def _status(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "state" / "status.json").read_text())


def _metric(tmp_path: Path, line_start: str) -> str:
    return next(line for line in (tmp_path / "state" / "backupd.prom").read_text().splitlines()
                if line.startswith(line_start))


def test_gpg_public_key_only_verifies_stored_bytes_and_refuses_restore_test(
        make_config, tmp_path, gpg_keys, monkeypatch):  # noqa: F811
    """With only the operator's public key in the homedir: `verify latest` passes (exit 0) with
    the note, `verify_level: stored` in status.json and the metrics; a flipped byte still fails;
    `--restore-test` is refused with exit 2 and the hint, recording nothing; with the private key
    the same verify is `decoded`; a scheduled drill without the key checks the stored bytes and
    passes, health stays healthy."""
    operator = gpg_keys["operator"]
    public_home = tmp_path / "public-only"
    public_home.mkdir(mode=0o700)
    _gpg(public_home, "--import", str(operator.public))
    kill_gpg_agent(public_home)  # the import starts one; any agent left after the test is backupd's
    config = make_config(pipeline={"encrypt_to": [str(operator.public)]}, verify={"schedule": "daily"})
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0

    verified = run_cli("--config", str(config), "verify", "latest", "--gpg-homedir", str(public_home))
    assert verified.returncode == 0, verified.stderr[-2000:]
    assert f"note: {NO_PRIVATE_KEY_NOTE}" in verified.stdout
    assert "verification passed (stored" in verified.stdout
    assert verified.stdout.count("size and sha256 of the stored bytes match (not decrypted: no private key)") == 3
    drill = _status(tmp_path)["last_drill"]
    assert drill["outcome"] == "passed" and drill["verify_level"] == "stored" and drill["note"] == NO_PRIVATE_KEY_NOTE
    assert _metric(tmp_path, 'backupd_last_drill_level{level="stored"}').endswith(" 1")
    assert _metric(tmp_path, 'backupd_last_drill_level{level="decoded"}').endswith(" 0")

    refused = run_cli("--config", str(config), "verify", "latest", "--restore-test",
                      "--gpg-homedir", str(public_home))
    assert refused.returncode == 2, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("backupd: error:")]
    assert len(errors) == 1 and "needs its private key" in errors[0] and "--gpg-homedir" in errors[0], errors
    assert operator.fingerprint in errors[0]
    assert _status(tmp_path)["last_drill"] == drill  # refused before anything was checked or recorded

    decoded = run_cli("--config", str(config), "verify", "latest", "--gpg-homedir", str(operator.home))
    assert decoded.returncode == 0 and "verification passed (decoded" in decoded.stdout, decoded.stderr[-2000:]
    assert NO_PRIVATE_KEY_NOTE not in decoded.stdout
    assert _status(tmp_path)["last_drill"]["verify_level"] == "decoded"

    # the daemon's scheduled drill, on a server whose default keyring holds the public key only
    monkeypatch.setenv("GNUPGHOME", str(public_home))
    reports = run_scheduled_drills(load_config(str(config)), datetime.now(UTC))
    assert [(r.outcome, r.level) for r in reports] == [("passed", "stored")]
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    assert status["health"] == "healthy" and status["last_drill"]["verify_level"] == "stored"
    assert status["last_drill"]["trigger"] == "schedule" and status["last_drill"]["restore_test"] is False

    backup = next(p for p in (tmp_path / "backups").iterdir() if p.is_dir())
    artifact = backup / "data.sql.zst.gpg"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    broken = run_cli("--config", str(config), "verify", "latest", "--gpg-homedir", str(public_home))
    assert broken.returncode == 1 and "sha256 mismatch" in broken.stderr, broken.stderr[-2000:]


def test_age_without_identity_verifies_stored_bytes(make_config, tmp_path, age_identity):  # noqa: F811
    """An age-encrypted backup and no --identity: stored bytes checked, passes with the note;
    with the identity the contents are decoded."""
    identity, recipient = age_identity
    config = make_config(pipeline={"age_recipients": [recipient]})
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    verified = run_cli("--config", str(config), "verify", "latest")
    assert verified.returncode == 0 and f"note: {NO_PRIVATE_KEY_NOTE}" in verified.stdout, verified.stderr[-2000:]
    assert _status(tmp_path)["last_drill"]["verify_level"] == "stored"
    decoded = run_cli("--config", str(config), "verify", "latest", "--identity", str(identity))
    assert decoded.returncode == 0 and "verification passed (decoded" in decoded.stdout, decoded.stderr[-2000:]


