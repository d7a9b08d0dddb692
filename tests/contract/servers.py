"""Loopback servers the destination tests talk to: moto's real S3 endpoint, a fault-injecting HTTP
proxy in front of it, and a stand-in for Supabase's hosted Storage REST API."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

# -- a fault-injecting proxy -------------------------------------------------------------------

Rule = Callable[[str, str], "tuple[int, bytes] | None"]


class FaultProxy:
    """Forwards HTTP requests to `upstream`; `rule(method, path)` may answer instead (status, body).

    Every request is counted in `seen` as (method, path, answered_status).
    """

    def __init__(self, upstream: str, rule: Rule) -> None:
        self.upstream = urlsplit(upstream)
        self.rule = rule
        self.seen: list[tuple[str, str, int]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = _read_chunked(self.rfile)
                answer = proxy.rule(self.command, self.path)
                if answer is not None:
                    status, payload = answer
                    proxy.seen.append((self.command, self.path, status))
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                proxy.seen.append((self.command, self.path, response.status))
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "content-length", "connection", "server", "date"):
                        self.send_header(key, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _read_chunked(stream: Any) -> bytes:
    out = bytearray()
    while True:
        size = int(stream.readline().strip().split(b";")[0], 16)
        if size == 0:
            stream.readline()
            return bytes(out)
        out += stream.read(size)
        stream.readline()


def s3_error_body(code: str, message: str) -> bytes:
    """An S3 XML error document."""
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>test</RequestId></Error>").encode()


# -- Supabase Storage stand-in -----------------------------------------------------------------

class FakeSupabaseStorage:
    """Stands in for Supabase's hosted Storage REST API (`<url>/storage/v1/...`), which the tests
    cannot reach: the endpoints supabase-py's storage3 calls (upload, list one folder level with
    limit/offset, download, remove by prefixes), bearer-key auth, and JSON errors shaped like the
    real ones ({"statusCode", "error", "message"}). Objects live in a folder on disk.

    Faults: `fail_uploads` is a list of HTTP statuses answered to the next uploads (one each);
    `cut_upload_after` drops the connection once an upload body passed that many bytes.
    """

    def __init__(self, root: Path, key: str, buckets: tuple[str, ...] = ("backups",)) -> None:
        self.root = root
        self.key = key
        self.fail_uploads: list[int] = []
        self.cut_upload_after: int | None = None
        self.requests: list[tuple[str, str]] = []
        for bucket in buckets:
            (root / bucket).mkdir(parents=True, exist_ok=True)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, payload: Any, raw: bytes | None = None) -> None:
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, error: str, message: str) -> None:
                self._reply(status if status != 404 else 400,
                            {"statusCode": str(status), "error": error, "message": message})

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {fake.key}":
                    self._error(403, "Unauthorized", "invalid signature")
                    return False
                return True

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    return _read_chunked(self.rfile)
                length = int(self.headers.get("Content-Length") or 0)
                if fake.cut_upload_after is not None and length > fake.cut_upload_after:
                    self.rfile.read(fake.cut_upload_after)
                    fake.cut_upload_after = None
                    self.close_connection = True
                    self.connection.shutdown(2)
                    raise ConnectionAbortedError("cut")
                return self.rfile.read(length)

            def _object_path(self, rest: str) -> tuple[str, Path] | None:
                bucket, _, key = rest.partition("/")
                folder = fake.root / bucket
                if not folder.is_dir():
                    self._error(404, "Bucket not found", "Bucket not found")
                    return None
                path = (folder / unquote(key)).resolve()
                if not str(path).startswith(str(folder.resolve())):
                    self._error(400, "InvalidKey", "Invalid key")
                    return None
                return bucket, path

            def do_POST(self) -> None:
                fake.requests.append(("POST", self.path))
                if not self._authorised():
                    return
                path = urlsplit(self.path).path
                if path.startswith("/storage/v1/object/list/"):
                    body = json.loads(self._body() or b"{}")
                    bucket = path[len("/storage/v1/object/list/"):]
                    folder = fake.root / bucket / body.get("prefix", "")
                    entries: list[dict[str, Any]] = []
                    if folder.is_dir():
                        for child in sorted(folder.iterdir(), key=lambda p: p.name):
                            if child.is_dir():
                                entries.append({"name": child.name, "id": None, "metadata": None})
                            else:
                                entries.append({"name": child.name, "id": f"id-{child.name}",
                                                "metadata": {"size": child.stat().st_size}})
                    offset, limit = int(body.get("offset", 0)), int(body.get("limit", 100))
                    self._reply(200, entries[offset:offset + limit])
                    return
                if not path.startswith("/storage/v1/object/"):
                    self._error(404, "not_found", "route not found")
                    return
                located = self._object_path(path[len("/storage/v1/object/"):])
                if located is None:
                    return
                bucket, target = located
                body = self._body()
                if fake.fail_uploads:
                    status = fake.fail_uploads.pop(0)
                    self._error(status, "InternalError" if status >= 500 else "Forbidden", f"injected {status}")
                    return
                if target.exists() and self.headers.get("x-upsert") != "true":
                    self._error(409, "Duplicate", "The resource already exists")
                    return
                content = _multipart_file(self.headers.get("Content-Type", ""), body)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                self._reply(200, {"Key": f"{bucket}/{target.relative_to(fake.root / bucket)}"})

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path))
                if not self._authorised():
                    return
                path = urlsplit(self.path).path
                located = self._object_path(path[len("/storage/v1/object/"):])
                if located is None:
                    return
                _, target = located
                if not target.is_file():
                    self._error(404, "not_found", "Object not found")
                    return
                self._reply(200, None, raw=target.read_bytes())

            def do_DELETE(self) -> None:
                fake.requests.append(("DELETE", self.path))
                if not self._authorised():
                    return
                bucket = urlsplit(self.path).path[len("/storage/v1/object/"):]
                body = json.loads(self._body() or b"{}")
                removed = []
                for name in body.get("prefixes", []):
                    target = fake.root / bucket / name
                    if target.is_file():
                        target.unlink()
                        removed.append({"name": name})
                        parent = target.parent
                        while parent != fake.root / bucket and not any(parent.iterdir()):
                            parent.rmdir()
                            parent = parent.parent
                self._reply(200, removed)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeSupabaseStorage:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _multipart_file(content_type: str, body: bytes) -> bytes:
    """The `file` field of a multipart/form-data body."""
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    for part in body.split(b"--" + boundary):
        head, _, data = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return data[:-2] if data.endswith(b"\r\n") else data
    raise ValueError("no file field")
