"""Encrypted backups with real gpg and age: round trips into an empty database, refusals with the
wrong key, a public-key-only keyring for the daemon, and no gpg-agent left behind."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from backupd.crypto import build_decryptor
from backupd.errors import IntegrityError
from backupd.manifest import Manifest
from backupd.pipeline import Decryptor, open_decoded
from tests.conftest import run_cli, table_checksums


@dataclass
class GpgKey:
    """A throwaway key pair: `home` holds its private key; `public` is the armored public key."""

    home: Path
    fingerprint: str
    public: Path


def _gpg(home: Path, *args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", *args], input=input,
                          capture_output=True, check=True).stdout


def _make_key(folder: Path, name: str) -> GpgKey:
    home = folder / name
    home.mkdir(mode=0o700)
    _gpg(home, "--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.com>", "future-default",
         "default", "never")
    listing = _gpg(home, "--with-colons", "--list-keys").decode()
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    public = folder / f"{name}.asc"
    public.write_bytes(_gpg(home, "--armor", "--export", fingerprint))
    # key generation started an agent; stop it so the tests see what backupd itself leaves behind
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=True)
    return GpgKey(home, fingerprint, public)


def _agents_for(home: Path) -> list[str]:
    """Command lines of live gpg-agent processes serving `home` (found through /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "gpg-agent" in cmdline and str(home) in cmdline:
            found.append(cmdline)
    return found


@pytest.fixture
def gpg_keys(tmp_path: Path) -> Iterator[dict[str, GpgKey]]:
    """An operator key and an offline escrow key, plus an unrelated key, each in its own homedir."""
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    keys = {name: _make_key(folder, name) for name in ("operator", "escrow", "stranger")}
    try:
        yield keys
    finally:
        for key in keys.values():
            subprocess.run(["gpgconf", "--homedir", str(key.home), "--kill", "all"], capture_output=True)


def _only_backup(folder: Path) -> Path:
    backups = [p for p in folder.iterdir() if p.is_dir()]
    assert len(backups) == 1, backups
    return backups[0]


def _decrypted(backup: Path, manifest: Manifest, name: str, decryptor: Decryptor) -> bytes:
    entry = manifest.artifact(name)
    with open(backup / name, "rb") as raw:
        with open_decoded(raw, entry, name, decryptor, manifest.encryption_recipients) as plain:  # type: ignore[arg-type]
            return plain.read()


def _restore_sql(pg, backup: Path, manifest: Manifest, decryptor: Decryptor) -> str:  # type: ignore[no-untyped-def]
    names = [a.name for a in manifest.artifacts if a.content == "sql" or a.name.startswith(("schema.", "data."))]
    schema = next(n for n in names if n.startswith("schema."))
    data = next(n for n in names if n.startswith("data."))
    sql = _decrypted(backup, manifest, schema, decryptor) + _decrypted(backup, manifest, data, decryptor)
    target = pg.fresh_db("dec", template=None)
    restore = subprocess.run([str(pg.server.bin_dir / "psql"), "-X", "-q", "--single-transaction", "-v",
                              "ON_ERROR_STOP=1", "-d", target], input=sql, capture_output=True)
    assert restore.returncode == 0, restore.stderr.decode()[-2000:]
    return target


def _checksums_match(target: str, source_dsn: str, manifest: Manifest) -> None:
    tables = {k: v.model_dump() for k, v in manifest.tables.items()}
    restored = table_checksums(target, tables)
    assert restored == table_checksums(source_dsn, tables)
    for table, (rows, checksum) in restored.items():
        assert (rows, checksum) == (manifest.tables[table].rows, manifest.tables[table].checksum)


def test_gpg_backup_round_trip_with_two_recipients(make_config, source_dsn, pg, tmp_path, gpg_keys):
    """encrypt_to = an armored key file (operator) and a fingerprint looked up in the daemon's own
    public-only keyring (escrow): artifacts are .gpg, the manifest stays plain and names both
    fingerprints, either private key alone decrypts, and the SQL half restores to equal checksums."""
    operator, escrow = gpg_keys["operator"], gpg_keys["escrow"]
    state_home = tmp_path / "state" / "gnupg"
    state_home.mkdir(parents=True, mode=0o700)
    _gpg(state_home, "--import", str(escrow.public))
    config = make_config(pipeline={"encrypt_to": [str(operator.public), escrow.fingerprint]})
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 0, result.stderr
    assert _agents_for(state_home) == [], "no gpg-agent may outlive the run"
    backup = _only_backup(tmp_path / "backups")
    manifest_bytes = (backup / "manifest.json").read_bytes()
    manifest = Manifest.parse(manifest_bytes)
    assert json.loads(manifest_bytes)["encryption_recipients"] == [operator.fingerprint, escrow.fingerprint]
    assert {a.name for a in manifest.artifacts} >= {"schema.sql.zst.gpg", "data.sql.zst.gpg", "export.json.zst.gpg"}
    for artifact in manifest.artifacts:
        assert artifact.encryption == "gpg" and artifact.name.endswith(".gpg")
        head = (backup / artifact.name).read_bytes()[:64]
        assert not head.startswith(b"\x28\xb5\x2f\xfd"), "stored bytes must not be plain zstd"
        packets = subprocess.run(["gpg", "--homedir", str(state_home), "--batch", "--list-packets"],
                                 input=(backup / artifact.name).read_bytes(), capture_output=True).stdout
        assert b"compressed packet" not in packets, "gpg's own compression must be off after zstd"
    # the daemon's keyring holds public keys only, and no agent is left running for it
    assert not list(state_home.glob("private-keys-v1.d/*"))
    assert _gpg(state_home, "--list-secret-keys") == b""
    subprocess.run(["gpgconf", "--homedir", str(state_home), "--kill", "all"], capture_output=True)
    assert (state_home.stat().st_mode & 0o777) == 0o700

    target = _restore_sql(pg, backup, manifest, build_decryptor(operator.home, []))
    _checksums_match(target, source_dsn, manifest)
    export = _decrypted(backup, manifest, "export.json.zst.gpg", build_decryptor(escrow.home, []))
    document = json.loads(export)
    assert document["version"] == "2.0"
    assert document["recordCount"]["tasks"] == manifest.tables["tasks"].rows
    # decryption started an agent for each private homedir; it stopped it again
    assert _agents_for(operator.home) == [] and _agents_for(escrow.home) == []


def test_gpg_wrong_or_missing_key_is_refused_naming_recipients(make_config, tmp_path, gpg_keys):
    """A private key that is not a recipient, or the daemon's public-only keyring, is refused at
    open time with IntegrityError naming the backup's recipients; nothing is handed over."""
    operator = gpg_keys["operator"]
    config = make_config(pipeline={"encrypt_to": [str(operator.public)]})
    assert run_cli("--config", str(config), "backup").returncode == 0
    backup = _only_backup(tmp_path / "backups")
    manifest = Manifest.parse((backup / "manifest.json").read_bytes())
    for home in (gpg_keys["stranger"].home, tmp_path / "state" / "gnupg"):
        with pytest.raises(IntegrityError) as refused:
            _decrypted(backup, manifest, "data.sql.zst.gpg", build_decryptor(home, []))
        assert operator.fingerprint in str(refused.value)
        assert "no private key" in str(refused.value)
    assert _agents_for(gpg_keys["stranger"].home) == []


def test_gpg_missing_public_key_fails_before_anything_is_written(make_config, tmp_path):
    """A fingerprint that is in no keyring fails the run at once, naming the config entry; no
    backup folder appears and the run is recorded as failed."""
    config = make_config(pipeline={"encrypt_to": ["0123456789ABCDEF0123456789ABCDEF01234567"]})
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 1
    assert "pipeline.encrypt_to[0]: no public key" in result.stderr
    backups = tmp_path / "backups"
    assert not backups.exists() or not [p for p in backups.iterdir() if p.is_dir()]
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["last_run"]["outcome"] == "failed"


def test_gpg_corrupted_ciphertext_is_refused(make_config, tmp_path, gpg_keys):
    """A flipped byte inside an encrypted artifact is an IntegrityError, never silent bad plaintext."""
    operator = gpg_keys["operator"]
    config = make_config(pipeline={"encrypt_to": [str(operator.public)]})
    assert run_cli("--config", str(config), "backup").returncode == 0
    backup = _only_backup(tmp_path / "backups")
    manifest = Manifest.parse((backup / "manifest.json").read_bytes())
    path = backup / "export.json.zst.gpg"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        _decrypted(backup, manifest, "export.json.zst.gpg", build_decryptor(operator.home, []))


@pytest.fixture
def age_identity(tmp_path: Path) -> tuple[Path, str]:
    """An age identity made by the real age-keygen; returns (identity file, recipient)."""
    identity = tmp_path / "age-identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True,
                               text=True).stdout.strip()
    return identity, recipient


def test_age_backup_round_trip(make_config, source_dsn, pg, tmp_path, age_identity):
    """age_recipients (one inline, one from a recipients file): .age artifacts that the age CLI
    decrypts too, and whose SQL half restores to equal checksums with --identity."""
    identity, recipient = age_identity
    other = tmp_path / "escrow-age.txt"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    other_recipient = subprocess.run(["age-keygen", "-y", str(other)], check=True, capture_output=True,
                                     text=True).stdout.strip()
    recipients_file = tmp_path / "recipients.txt"
    recipients_file.write_text(f"# escrow\n{other_recipient}\n")
    config = make_config(pipeline={"age_recipients": [recipient, str(recipients_file)]})
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 0, result.stderr
    backup = _only_backup(tmp_path / "backups")
    manifest = Manifest.parse((backup / "manifest.json").read_bytes())
    assert manifest.encryption_recipients == [recipient, other_recipient]
    assert all(a.encryption == "age" and a.name.endswith(".zst.age") for a in manifest.artifacts)
    target = _restore_sql(pg, backup, manifest, build_decryptor(None, [identity]))
    _checksums_match(target, source_dsn, manifest)
    # interoperates with the age CLI, and the escrow identity decrypts as well
    cli = subprocess.run(["age", "-d", "-i", str(other), str(backup / "export.json.zst.age")],
                         capture_output=True, check=True).stdout
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(cli)).read()
    assert plain == _decrypted(backup, manifest, "export.json.zst.age", build_decryptor(None, [identity]))
    assert json.loads(plain)["version"] == "2.0"


def test_age_wrong_or_missing_identity_is_refused(make_config, tmp_path, age_identity):
    """A foreign identity, or none at all, is refused with the recipients named."""
    identity, recipient = age_identity
    config = make_config(pipeline={"age_recipients": [recipient]})
    assert run_cli("--config", str(config), "backup").returncode == 0
    backup = _only_backup(tmp_path / "backups")
    manifest = Manifest.parse((backup / "manifest.json").read_bytes())
    stranger = tmp_path / "stranger.txt"
    subprocess.run(["age-keygen", "-o", str(stranger)], check=True, capture_output=True)
    for decryptor in (build_decryptor(None, [stranger]), build_decryptor(None, [])):
        with pytest.raises(IntegrityError) as refused:
            _decrypted(backup, manifest, "data.sql.zst.age", decryptor)
        assert recipient in str(refused.value)


def test_bad_age_recipient_fails_the_run_naming_the_entry(make_config, tmp_path):
    """A malformed age recipient fails the run with the entry's key path."""
    config = make_config(pipeline={"age_recipients": ["age1notavalidrecipient"]})
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 1
    assert "pipeline.age_recipients[0]" in result.stderr


def _restore_command_exists() -> bool:
    from backupd.commands import COMMANDS

    return any(getattr(m, "__name__", "").endswith(".restore") for m in COMMANDS)


@pytest.mark.skipif(not _restore_command_exists(), reason="`backupd restore` is not registered yet")
def test_restore_command_decrypts_with_gpg_homedir_and_refuses_wrong_key(make_config, source_dsn, pg,
                                                                          tmp_path, gpg_keys):
    """`backupd restore --sql` with --gpg-homedir restores an encrypted backup; with a wrong key it
    exits non-zero naming the recipients, and the target stays empty."""
    operator = gpg_keys["operator"]
    config = make_config(pipeline={"encrypt_to": [str(operator.public)]})
    assert run_cli("--config", str(config), "backup").returncode == 0
    manifest = Manifest.parse((_only_backup(tmp_path / "backups") / "manifest.json").read_bytes())
    target = pg.fresh_db("wrong", template=None)
    refused = run_cli("--config", str(config), "restore", "latest", "--target", target, "--sql",
                      "--gpg-homedir", str(gpg_keys["stranger"].home))
    assert refused.returncode != 0
    assert operator.fingerprint in refused.stderr
    assert pg.execute(target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")[0][0] == 0
    target = pg.fresh_db("right", template=None)
    restored = run_cli("--config", str(config), "restore", "latest", "--target", target, "--sql",
                       "--gpg-homedir", str(operator.home))
    assert restored.returncode == 0, restored.stderr
    _checksums_match(target, source_dsn, manifest)


@pytest.mark.skipif(not _restore_command_exists(), reason="`backupd restore` is not registered yet")
def test_restore_command_decrypts_age_with_identity(make_config, source_dsn, pg, tmp_path, age_identity):
    """`backupd restore --sql --identity FILE` restores an age-encrypted backup; without an identity
    it is refused naming the recipient, before the target is touched."""
    identity, recipient = age_identity
    config = make_config(pipeline={"age_recipients": [recipient]})
    assert run_cli("--config", str(config), "backup").returncode == 0
    manifest = Manifest.parse((_only_backup(tmp_path / "backups") / "manifest.json").read_bytes())
    target = pg.fresh_db("noid", template=None)
    refused = run_cli("--config", str(config), "restore", "latest", "--target", target, "--sql")
    assert refused.returncode != 0 and recipient in refused.stderr
    assert pg.execute(target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")[0][0] == 0
    restored = run_cli("--config", str(config), "restore", "latest", "--target", target, "--sql",
                       "--identity", str(identity))
    assert restored.returncode == 0, restored.stderr
    _checksums_match(target, source_dsn, manifest)


def _processes_with(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


def test_fingerprint_from_operator_keyring_is_copied_in_public_only(make_config, tmp_path, gpg_keys):
    """A fingerprint found only in $GNUPGHOME: its public key is copied into <state>/gnupg (never
    its private key), the backup is encrypted to it, and no agent is left for either homedir."""
    escrow = gpg_keys["escrow"]
    config = make_config(pipeline={"encrypt_to": [escrow.fingerprint]})
    result = run_cli("--config", str(config), "backup", env={"GNUPGHOME": str(escrow.home)})
    assert result.returncode == 0, result.stderr
    manifest = Manifest.parse((_only_backup(tmp_path / "backups") / "manifest.json").read_bytes())
    assert manifest.encryption_recipients == [escrow.fingerprint]
    state_home = tmp_path / "state" / "gnupg"
    assert escrow.fingerprint in _gpg(state_home, "--with-colons", "--list-keys").decode()
    assert not list(state_home.glob("private-keys-v1.d/*"))
    assert _agents_for(state_home) == [] and _agents_for(escrow.home) == []


def test_aborted_artifact_leaves_no_gpg_child(tmp_path, gpg_keys):
    """A producer failing mid-artifact: abort() stops the gpg child and removes the partial file."""
    from backupd.config import PipelineConfig
    from backupd.crypto import build_encryptor
    from backupd.pipeline import ArtifactWriter

    encryptor = build_encryptor(PipelineConfig(encrypt_to=[str(gpg_keys["operator"].public)]), tmp_path / "st")
    staging = tmp_path / "staging"
    staging.mkdir()
    writer = ArtifactWriter(staging, "data.sql", "sql", "zstd", 3, encryptor)
    writer.write(os.urandom(1 << 20))
    home = str(tmp_path / "st" / "gnupg")
    assert [c for c in _processes_with(home) if "--encrypt" in c], "gpg runs while the artifact is open"
    writer.abort()
    assert not (staging / "data.sql.zst.gpg").exists()
    assert [c for c in _processes_with(home) if "--encrypt" in c] == []
