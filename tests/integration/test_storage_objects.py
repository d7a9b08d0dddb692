"""Supabase Storage objects as a source: backed up content-addressed beside the database, restored
into a bucket, unchanged files never uploaded twice, unreferenced ones pruned with their backups."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import run_cli

KEY = "service-role-key-for-tests-7c1d"


class StorageApi:
    """Stands in for Supabase's hosted Storage REST API (`<url>/storage/v1`), which tests cannot
    reach: bucket list/create, object list (one folder level, limit/offset), download, multipart
    upload with x-upsert, bearer-key auth, JSON errors shaped like the real ones."""

    def __init__(self, key: str = KEY) -> None:
        self.key = key
        self.buckets: dict[str, dict[str, tuple[bytes, str]]] = {}
        self.requests: list[tuple[str, str]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, payload: Any = None, raw: bytes | None = None,
                       content_type: str = "application/json") -> None:
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str) -> None:
                self._reply(400 if status == 404 else status,
                            {"statusCode": str(status), "error": "Error", "message": message})

            def _start(self) -> tuple[str, bytes] | None:
                api.requests.append((self.command, self.path))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Authorization") != f"Bearer {api.key}":
                    self._error(403, "invalid signature")
                    return None
                return unquote(urlsplit(self.path).path), body

            def do_GET(self) -> None:  # noqa: N802
                started = self._start()
                if started is None:
                    return
                path, _ = started
                if path == "/storage/v1/bucket":
                    self._reply(200, [{"id": b, "name": b, "public": False} for b in sorted(api.buckets)])
                    return
                bucket, _, name = path[len("/storage/v1/object/"):].partition("/")
                found = api.buckets.get(bucket, {}).get(name)
                if found is None:
                    self._error(404, "Object not found")
                    return
                self._reply(200, raw=found[0], content_type=found[1])

            def do_POST(self) -> None:  # noqa: N802
                started = self._start()
                if started is None:
                    return
                path, body = started
                if path == "/storage/v1/bucket":
                    name = json.loads(body)["name"]
                    if name in api.buckets:
                        self._error(409, "The resource already exists")
                        return
                    api.buckets[name] = {}
                    self._reply(200, {"name": name})
                    return
                if path.startswith("/storage/v1/object/list/"):
                    bucket = path[len("/storage/v1/object/list/"):]
                    query = json.loads(body)
                    prefix = query.get("prefix", "")
                    prefix = prefix + "/" if prefix else ""
                    level: dict[str, Any] = {}
                    for name, (data, mime) in api.buckets.get(bucket, {}).items():
                        if not name.startswith(prefix):
                            continue
                        head, sep, _ = name[len(prefix):].partition("/")
                        level[head] = ({"name": head, "id": None, "metadata": None} if sep else
                                       {"name": head, "id": f"id-{name}",
                                        "metadata": {"size": len(data), "mimetype": mime}})
                    entries = [level[k] for k in sorted(level)]
                    offset, limit = int(query.get("offset", 0)), int(query.get("limit", 100))
                    self._reply(200, entries[offset:offset + limit])
                    return
                bucket, _, name = path[len("/storage/v1/object/"):].partition("/")
                if bucket not in api.buckets:
                    self._error(404, "Bucket not found")
                    return
                if name in api.buckets[bucket] and self.headers.get("x-upsert") != "true":
                    self._error(409, "The resource already exists")
                    return
                data, mime = _multipart_file(self.headers.get("Content-Type", ""), body)
                api.buckets[bucket][name] = (data, mime)
                self._reply(200, {"Key": f"{bucket}/{name}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


def _multipart_file(content_type: str, body: bytes) -> tuple[bytes, str]:
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    for part in body.split(b"--" + boundary):
        head, _, data = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            mime = "application/octet-stream"
            for line in head.decode().split("\r\n"):
                if line.lower().startswith("content-type:"):
                    mime = line.split(":", 1)[1].strip()
            return (data[:-2] if data.endswith(b"\r\n") else data), mime
    raise ValueError("no file field")


@pytest.fixture
def storage_api() -> Iterator[StorageApi]:
    api = StorageApi()
    api.thread.start()
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()


def _objects(root: Path) -> dict[str, bytes]:
    folder = root / "objects"
    return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def test_storage_objects_round_trip_and_unchanged_files_are_not_uploaded_again(
        storage_api, make_config, tmp_path):
    """Backup 1 stores each distinct file once (content-addressed, outside the backup folders) and an
    index; backup 2 with one file changed uploads only that file; `list` ignores the objects folder;
    restore-storage puts the files back byte for byte into a new bucket; the key never leaks."""
    files = {"attachments": {"u1/report.pdf": (b"%PDF-1.7 report " * 500, "application/pdf"),
                             "u1/photos/cat.png": (b"\x89PNG cat" * 300, "image/png"),
                             "u2/copy-of-report.pdf": (b"%PDF-1.7 report " * 500, "application/pdf")},
             "avatars": {"u1.jpg": (b"\xff\xd8 jpeg", "image/jpeg")}}
    storage_api.buckets = {b: dict(v) for b, v in files.items()}
    storage_api.buckets["ignored"] = {"x.txt": (b"not backed up", "text/plain")}
    backups = tmp_path / "backups"
    config = make_config(
        source={"storage": [{"url": storage_api.url, "service_role_key": KEY,
                             "buckets": ["attachments", "avatars"]}]},
        export={"enabled": False})

    first = run_cli("--config", str(config), "-v", "--log-format", "json", "backup")
    assert first.returncode == 0, first.stderr[-3000:]
    stored = _objects(backups)
    assert len([k for k in stored if not k.endswith(".json")]) == 3  # the two reports are one object
    listed = json.loads(run_cli("--config", str(config), "list", "--json").stdout)
    assert len(listed) == 1
    manifest = json.loads((backups / listed[0]["id"] / "manifest.json").read_text())
    assert {a["content"] for a in manifest["artifacts"]} >= {"storage-index", "storage-refs"}
    published = [json.loads(line) for line in first.stderr.splitlines()
                 if line.startswith("{") and '"storage_objects_published"' in line]
    assert published and published[0]["uploaded"] == 3 and published[0]["unchanged"] == 0

    mtimes = {p: p.stat().st_mtime_ns for p in (backups / "objects").rglob("*") if p.is_file()}
    storage_api.buckets["attachments"]["u1/photos/cat.png"] = (b"\x89PNG another cat", "image/png")
    second = run_cli("--config", str(config), "-v", "--log-format", "json", "backup")
    assert second.returncode == 0, second.stderr[-3000:]
    published = [json.loads(line) for line in second.stderr.splitlines()
                 if line.startswith("{") and '"storage_objects_published"' in line]
    assert published[0]["uploaded"] == 1 and published[0]["unchanged"] == 2  # report + avatar
    for path, mtime in mtimes.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was written again"
    assert len(json.loads(run_cli("--config", str(config), "list", "--json").stdout)) == 2

    restored = run_cli("--config", str(config), "restore-storage", listed[0]["id"], "--bucket", "attachments",
                       "--to-bucket", "attachments-restored")
    assert restored.returncode == 0, restored.stderr
    assert "attachments-restored: uploaded 3 objects" in restored.stdout
    assert storage_api.buckets["attachments-restored"] == files["attachments"]

    everything = first.stdout + first.stderr + second.stdout + second.stderr + restored.stdout + restored.stderr
    assert KEY not in everything
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix != ".toml":
            assert KEY.encode() not in path.read_bytes(), path


def test_retention_keeps_referenced_objects_and_prunes_the_rest(storage_api, make_config, tmp_path):
    """keep_last = 1: the expired backup's only-its-own object goes, the shared one stays, and the
    surviving backup still restores completely."""
    storage_api.buckets = {"attachments": {"a.txt": (b"shared file", "text/plain"),
                                           "b.txt": (b"first version", "text/plain")}}
    config = make_config(
        source={"storage": [{"url": storage_api.url, "service_role_key": KEY, "buckets": []}]},
        export={"enabled": False},
        destinations=[{"name": "local", "type": "local", "path": str(tmp_path / "backups"),
                       "retention": {"keep_last": 1}}])
    assert run_cli("--config", str(config), "backup").returncode == 0
    storage_api.buckets["attachments"]["b.txt"] = (b"second version", "text/plain")
    second = run_cli("--config", str(config), "backup")
    assert second.returncode == 0, second.stderr
    listed = json.loads(run_cli("--config", str(config), "list", "--json").stdout)
    assert len(listed) == 1
    blobs = {k for k in _objects(tmp_path / "backups") if not k.endswith(".json")}
    assert len(blobs) == 2  # shared + second version; the first version was pruned
    storage_api.buckets = {}
    restored = run_cli("--config", str(config), "restore-storage", "latest")
    assert restored.returncode == 0, restored.stderr
    assert storage_api.buckets["attachments"] == {"a.txt": (b"shared file", "text/plain"),
                                                  "b.txt": (b"second version", "text/plain")}


def test_bad_service_key_fails_the_backup_with_one_line(storage_api, make_config, tmp_path):
    storage_api.buckets = {"attachments": {}}
    config = make_config(source={"storage": [{"url": storage_api.url, "service_role_key": "wrong-key-123456",
                                              "buckets": ["attachments"]}]})
    result = run_cli("--config", str(config), "-q", "backup")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("backupd: error")]
    assert len(errors) == 1 and "403" in errors[0] and "service_role_key" in errors[0]
    assert "wrong-key-123456" not in result.stderr
