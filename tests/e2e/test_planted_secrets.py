"""The planted-secrets test: a distinctive value in every secret field of the config, backups that
succeed and fail, status, list, verify, prune, check-config with bad values; then every byte
backupd wrote (state dir, local backups decompressed, the git repository's objects inflated, the
audit rows in the database), printed (stdout, stderr, with -v and in JSON) and sent (the bodies of
alerts, pings and uploads) is searched for each secret. None may appear.

The services are real where they can be (PostgreSQL with a password-checked role made from the SQL
in docs/security.md, moto's S3 on loopback, real git) and otherwise a small recording HTTP server
on 127.0.0.1 standing in for Telegram's Bot API, Discord webhooks, a generic webhook receiver,
healthchecks.io, Supabase Storage and a git smart-HTTP host that refuses the credentials."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import psycopg
import pytest
import zstandard
from pydantic import BaseModel, SecretStr

from backupd import config as config_module
from backupd.config import Section, load_config
from tests.conftest import moto_server, run_cli, write_config

SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"

# Distinctive values, one per secret field; none is a substring of another.
SECRETS = {
    "dsn_password": "PlantedDsnPw-q7Zr4K",
    "bad_dsn_password": "PlantedBadDsn%zzW3",
    "scratch_password": "PlantedScratchPw-1qAe",
    "git_token": "PlantedGitTok-x9LmPd",
    "s3_access_key": "PLANTEDAKIA7Q2WXYZ",
    "s3_secret_key": "PlantedS3Secret-k8JdN0",
    "supabase_key": "PlantedSupaKey-eyJ9fA",
    "storage_key": "PlantedStorageKey-4rTg",
    "bot_token": "987654321:PlantedTgToken_Zq8Xw3",
    "discord_token": "PlantedDiscordTok-3xRbb",
    "hook_path": "PlantedHookPath-5tYuu",
    "hook_secret": "PlantedHmacKey-8uIoo",
    "ping_uuid": "PlantedPingUuid-2wEss",
    "check_config_bad": "PlantedCheckCfg-6yHnn",
    "ssh_key": "PlantedSshKeyBody-7hGff",
    "signing_key": "5e1f51a9" * 8,  # [security] signing_key: 64 hex digits
}


@dataclass
class Request:
    """One request the recorder received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Recorder:
    """Records every request on 127.0.0.1 and answers as the service behind the path would:
    Telegram (`/bot<token>/<method>`: {"ok": true, "result": Message}), Discord (204), Supabase
    Storage (`/storage/v1/...`: 403 JSON error), git smart HTTP (401, the credentials are refused),
    anything else (a webhook receiver, healthchecks): 200 OK."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.requests.append(Request(self.command, self.path,
                                                 {k.lower(): v for k, v in self.headers.items()}, body))
                status, headers, data = recorder.reply(self.command, self.path, body)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle  # noqa: N815 - http.server naming

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server naming
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def reply(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/bot"):
            message = {"message_id": len(self.requests), "date": int(time.time()),
                       "chat": {"id": 424242, "type": "private"}, "text": "ok"}
            return 200, {"Content-Type": "application/json"}, json.dumps({"ok": True, "result": message}).encode()
        if path.startswith("/api/webhooks/"):
            return 204, {}, b""
        if path.startswith("/storage/v1/"):
            error = {"statusCode": "403", "error": "Unauthorized", "message": "invalid signature"}
            return 403, {"Content-Type": "application/json"}, json.dumps(error).encode()
        if ".git/" in path:
            return 401, {"WWW-Authenticate": 'Basic realm="git"'}, b"Unauthorized"
        return 200, {"Content-Type": "text/plain"}, b"OK"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """The recording stand-in server, stopped at the end."""
    server = Recorder()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto_s3() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 for this test."""
    with moto_server() as url:
        yield url


def _readonly_role(pg: Any, dsn: str) -> str:
    """A login role made with the read-only SQL of docs/security.md, whose password is planted."""
    text = SECURITY_DOC.read_text()
    sql = re.search(r"<!-- sql:readonly-role -->\s*```sql\n(.*?)```", text, re.S)
    assert sql, "docs/security.md lost its sql:readonly-role block"
    role = f"backupd_{uuid.uuid4().hex[:8]}"
    statements = re.sub(r"\bbackupd\b", role, sql.group(1)).replace("change-me", SECRETS["dsn_password"])
    pg.execute(dsn, statements)
    return role


def _planted_secret_fields(config_path: Path) -> set[tuple[str, str]]:
    """(model class, field) of every secret in a loaded config whose value is one of SECRETS."""
    found: set[tuple[str, str]] = set()
    planted = set(SECRETS.values())

    def walk(model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr):
                if any(s in value.get_secret_value() for s in planted):
                    found.add((type(model).__name__, name))
            elif isinstance(value, BaseModel):
                walk(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, BaseModel):
                        walk(item)

    walk(load_config(config_path))
    return found


def _every_secret_field() -> set[tuple[str, str]]:
    """(model class, field) of every secret key any config section declares."""
    fields: set[tuple[str, str]] = set()
    for value in vars(config_module).values():
        if isinstance(value, type) and issubclass(value, Section) and value.secret_keys:
            fields.update((value.__name__, key) for key in value.secret_keys)
    return fields


def _variants(secret: str) -> set[bytes]:
    """The secret as it could appear: raw, percent-encoded, JSON-escaped."""
    return {secret.encode(), quote(secret, safe="").encode(), json.dumps(secret)[1:-1].encode()}


def _expand(path: Path, data: bytes) -> list[bytes]:
    """A file's bytes plus their decompressed forms (zstd, gzip, git's zlib objects)."""
    out = [data]
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        out.append(zstandard.ZstdDecompressor().stream_reader(__import__("io").BytesIO(data)).read())
    elif data.startswith(b"\x1f\x8b"):
        out.append(gzip.decompress(data))
    elif "/.git/objects/" in str(path) or "/objects/" in str(path):
        try:
            out.append(zlib.decompress(data))
        except zlib.error:
            pass
    return out


def _leaks(blobs: dict[str, bytes]) -> list[str]:
    problems = []
    for where, blob in blobs.items():
        for name, secret in SECRETS.items():
            for variant in _variants(secret):
                if variant in blob:
                    position = blob.index(variant)
                    context = blob[max(0, position - 80):position + len(variant) + 40]
                    problems.append(f"{name} in {where}: ...{context!r}...")
                    break
    return problems


def test_no_planted_secret_is_written_printed_or_sent(pg, tmp_path, recorder, moto_s3, monkeypatch):
    """Every secret field planted; success, partial and failed runs; nothing leaks anywhere."""
    source_dsn = pg.fresh_db("planted")
    role = _readonly_role(pg, source_dsn)
    port = pg.server.port
    dbname = source_dsn.rsplit("/", 1)[1]
    dsn = f"postgresql://{role}:{SECRETS['dsn_password']}@127.0.0.1:{port}/{dbname}"
    boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="y").create_bucket(Bucket="planted-backups")

    configs = tmp_path / "configs"  # written by the test, not by backupd: not searched
    configs.mkdir()
    secret_files = tmp_path / "secret-files"
    secret_files.mkdir()
    (secret_files / "bot_token").write_text(SECRETS["bot_token"] + "\n")
    (secret_files / "ssh_key").write_text(  # unused over the HTTP remote; ssh's own use: tests/integration/test_git_ssh.py
        f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRETS['ssh_key']}\n-----END OPENSSH PRIVATE KEY-----\n")
    state, backups, repo = tmp_path / "state", tmp_path / "backups", tmp_path / "repo"
    root = recorder.root
    on_all = ["success", "failure", "partial", "stale", "recovered", "restore", "verify_failed"]
    sections: dict[str, Any] = {
        "source": {"dsn": dsn},
        "state": {"dir": str(state)},
        "verify": {"scratch_dsn": f"postgresql://scratch:{SECRETS['scratch_password']}@127.0.0.1:1/scratch"},
        "audit": {"table": "logs"},
        "security": {"signing_key": SECRETS["signing_key"]},
        "destinations": [
            {"name": "local", "type": "local", "path": str(backups)},
            {"name": "s3", "type": "s3", "bucket": "planted-backups", "prefix": "p", "endpoint_url": moto_s3,
             "access_key_id": SECRETS["s3_access_key"], "secret_access_key": SECRETS["s3_secret_key"],
             "part_size_mb": 5},
            {"name": "supa", "type": "supabase", "url": root, "service_role_key": SECRETS["supabase_key"],
             "bucket": "backups"},
            {"name": "git", "type": "git", "path": str(repo), "ssh_key_file": str(secret_files / "ssh_key"),
             "remote": f"{root.replace('http://', 'http://oauth2:' + SECRETS['git_token'] + '@')}/org/repo.git"},
        ],
        "notifiers": [
            {"type": "telegram", "bot_token_file": str(secret_files / "bot_token"), "chat_id": "424242",
             "api_url": root, "on": on_all},
            {"type": "discord", "webhook_url": f"{root}/api/webhooks/1/{SECRETS['discord_token']}", "on": on_all},
            {"type": "webhook", "url": f"{root}/hook/{SECRETS['hook_path']}", "secret": SECRETS["hook_secret"],
             "on": on_all},
            {"type": "healthchecks", "ping_url": f"{root}/ping/{SECRETS['ping_uuid']}"},
        ],
    }
    good = write_config(configs / "good.toml", sections)
    # the same, but the source also reads Supabase Storage objects from a stand-in that refuses
    failing_storage = write_config(configs / "storage.toml", {
        **sections, "source": {"dsn": dsn, "storage": [{"url": root, "service_role_key": SECRETS["storage_key"]}]}})
    # a DSN libpq refuses to parse, echoing the offending token (the password) in its error
    bad_dsn = write_config(configs / "bad-dsn.toml", {
        **sections, "source": {"dsn": f"postgresql://{role}:{SECRETS['bad_dsn_password']}@127.0.0.1:{port}/{dbname}"}})

    # every secret field any section declares is planted in one of these configs
    planted = _planted_secret_fields(good) | _planted_secret_fields(failing_storage) \
        | _planted_secret_fields(bad_dsn)
    missing = _every_secret_field() - planted
    assert not missing, f"secret fields not covered by this test (plant them): {sorted(missing)}"

    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false"}
    outputs: dict[str, bytes] = {}

    def cli(label: str, *args: str, config: Path = good) -> int:
        result = run_cli("--config", str(config), *args, env=env, timeout=300)
        outputs[f"{label} stdout"] = result.stdout.encode()
        outputs[f"{label} stderr"] = result.stderr.encode()
        return result.returncode

    assert cli("check-config", "check-config") == 0
    assert cli("backup", "-v", "backup") == 3, outputs["backup stderr"].decode()[-3000:]  # supa + git refuse
    assert cli("backup-json", "--log-format", "json", "-v", "backup") == 3
    cli("status", "status")
    cli("status-json", "status", "--json")
    assert cli("list", "list", "--json") == 0
    assert cli("list-s3", "list", "--from", "s3") == 0
    cli("verify", "-v", "verify", "latest", "--restore-test")  # scratch_dsn points at a dead port
    cli("prune", "-v", "prune")
    assert cli("storage-fails", "-v", "backup", config=failing_storage) != 0
    assert cli("bad-dsn", "--log-format", "json", "-v", "backup", config=bad_dsn) == 1
    assert cli("bad-dsn-check", "-v", "check-config", config=bad_dsn) in (0, 2)

    # check-config with bad values: secrets in wrongly typed, unknown and invalid fields
    broken = configs / "broken.toml"
    broken.write_text(
        f'bogus = "{SECRETS["check_config_bad"]}"\n'
        f'[source]\ndsn = "mysql://u:{SECRETS["check_config_bad"]}@h/db"\n'
        f'[state]\ndir = "{state}"\n'
        f'[[destinations]]\ntype = "s3"\nbucket = "b"\naccess_key_id = "{SECRETS["check_config_bad"]}"\n'
        f'retention = {{ keep_last = "{SECRETS["check_config_bad"]}" }}\n'
        f'[[notifiers]]\ntype = "telegram"\nbot_token = "{SECRETS["check_config_bad"]}"\n'
    )
    broken.chmod(0o600)
    result = run_cli("--config", str(broken), "check-config", env=env)
    assert result.returncode == 2
    assert "source.dsn" in result.stderr and "unknown key" in result.stderr
    outputs["broken stdout"], outputs["broken stderr"] = result.stdout.encode(), result.stderr.encode()
    monkeypatch.setenv("BACKUPD_SOURCE__DSN", f"postgresql://u:{SECRETS['check_config_bad']}@127.0.0.1:6543/x")
    result = run_cli("--config", str(good), "check-config", env=env)
    assert result.returncode == 2
    outputs["env stdout"], outputs["env stderr"] = result.stdout.encode(), result.stderr.encode()

    # what backupd wrote
    blobs: dict[str, bytes] = dict(outputs)
    for folder in (state, backups, repo):
        for path in folder.rglob("*"):
            if path.is_file():
                for index, data in enumerate(_expand(path, path.read_bytes())):
                    blobs[f"{path}#{index}"] = data
    assert any("status.json" in k for k in blobs) and any("history.jsonl" in k for k in blobs)
    assert any("manifest.json" in k for k in blobs)
    # the manifests were signed with the planted key (so it really was used, and still is nowhere)
    assert any(b'"signature": "hmac-sha256:' in v for k, v in blobs.items() if k.endswith("manifest.json#0"))
    # what it sent: every request body (headers that carry credentials by design are left out)
    for number, request in enumerate(recorder.requests):
        blobs[f"request {number} {request.method} body"] = request.body
        headers = {k: v for k, v in request.headers.items() if k not in ("authorization", "apikey")}
        blobs[f"request {number} headers"] = json.dumps(headers).encode()
    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="x",
                      aws_secret_access_key="y")
    for item in s3.list_objects_v2(Bucket="planted-backups").get("Contents", []):
        if item["Key"].endswith("manifest.json"):
            blobs[f"s3 {item['Key']}"] = s3.get_object(Bucket="planted-backups", Key=item["Key"])["Body"].read()
    # the audit rows backupd wrote into the database
    with psycopg.connect(source_dsn) as conn:
        rows = conn.execute("SELECT message, context::text FROM logs WHERE event LIKE 'backupd.%'").fetchall()
    assert rows, "the audit rows are part of what is searched"
    blobs["audit rows"] = json.dumps(rows).encode()

    # the stand-ins were really talked to, so their bodies were really searched
    paths = [r.path for r in recorder.requests]
    assert any(p.startswith("/bot") and p.endswith("/sendMessage") for p in paths)
    assert any(p.startswith("/api/webhooks/") for p in paths)
    assert any(p.startswith("/hook/") for p in paths)
    assert any(p.startswith("/ping/") for p in paths)
    assert any(p.startswith("/storage/v1/") for p in paths)

    # the failures really carried the secrets to the redaction step: libpq echoed the password,
    # git named the URL it was given
    assert 'invalid percent-encoded token: \\"***\\"' in outputs["bad-dsn stderr"].decode()
    assert "Authentication failed" in outputs["status stdout"].decode()
    # and the search finds a secret where one is (the configs the test wrote)
    assert _leaks({"canary": good.read_bytes() + bad_dsn.read_bytes()})

    leaks = _leaks(blobs)
    assert not leaks, "\n".join(leaks[:20])
