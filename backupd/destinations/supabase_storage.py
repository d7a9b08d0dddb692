"""A Supabase Storage bucket through its REST API (supabase-py's storage3 client, plus httpx).

storage3 uploads (`POST /object/{bucket}/{path}`, multipart, `x-upsert`), lists
(`POST /object/list/{bucket}`, one folder level per call: walked recursively and paginated here)
and removes (`DELETE /object/{bucket}` with `prefixes`). Its `download` returns the whole body as
bytes, so downloads go through the same httpx client with a streamed `GET /object/{bucket}/{path}`
instead: an artifact of any size is read in 1 MiB chunks. Uploads stream the staged file from
disk (httpx reads the file object in chunks). Supabase's hosted API caps a single upload at the
project's upload limit (50 MB on the free plan, configurable up to 500 GB on paid plans, see
docs/destinations.md); for artifacts beyond it use the `s3` destination against Supabase's
S3-compatible endpoint, which uploads in parts.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx

from backupd.config import SupabaseDestinationConfig
from backupd.destinations.base import ObjectInfo, ObjectStoreDestination, classify_http_status
from backupd.errors import DestinationError, NotFound

_PAGE = 1000
_CHUNK = 1 << 20
_HINTS = {401: "check service_role_key", 403: "check service_role_key and the bucket's policies",
          413: "the artifact exceeds the project's upload size limit: use the s3 destination "
               "against Supabase's S3 endpoint for large backups"}


def _status_error(status: int, code: str, message: str, action: str, where: str) -> DestinationError:
    if status == 404 or "not found" in message.lower() and "bucket" not in message.lower():
        return NotFound(f"{where}: not found")
    if "bucket" in message.lower() and "not found" in message.lower():
        return DestinationError(f"supabase {action} {where} failed: {message}", "create the bucket or fix bucket")
    return DestinationError(f"supabase {action} {where} failed: HTTP {status} {code} {message}".strip(),
                            _HINTS.get(status), transient=classify_http_status(status))


def supabase_error(exc: Exception, action: str, where: str) -> DestinationError:
    """A DestinationError for a storage3/httpx failure (transient for 5xx, 429, timeouts, resets)."""
    from storage3.exceptions import StorageApiError

    if isinstance(exc, StorageApiError):
        try:
            status = int(exc.status)
        except (TypeError, ValueError):
            status = 0
        return _status_error(status, str(exc.code), str(exc.message), action, where)
    if isinstance(exc, httpx.HTTPStatusError):
        return _status_error(exc.response.status_code, "", exc.response.reason_phrase, action, where)
    if isinstance(exc, httpx.TransportError):
        return DestinationError(f"supabase {action} {where} failed: {type(exc).__name__}: {exc}",
                                "is the project URL reachable?", transient=True)
    return DestinationError(f"supabase {action} {where} failed: {type(exc).__name__}: {exc}")


class _ResponseReader(io.RawIOBase):
    """A streamed HTTP response body as a readable stream."""

    def __init__(self, response: httpx.Response, where: str) -> None:
        super().__init__()
        self._response = response
        self._chunks = response.iter_raw(_CHUNK)
        self._pending = b""
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
            except httpx.HTTPError as exc:
                raise supabase_error(exc, "download", self._where) from None
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        try:
            self._response.close()
        finally:
            super().close()


class SupabaseStore:
    """ObjectStore over one Supabase Storage bucket."""

    def __init__(self, config: SupabaseDestinationConfig) -> None:
        from storage3 import SyncStorageClient

        self.config = config
        key = config.service_role_key.get_secret_value()
        self.base = config.url.rstrip("/") + "/storage/v1"
        self.headers = {"apikey": key, "Authorization": f"Bearer {key}"}
        seconds = config.timeout.total_seconds()
        self.http = httpx.Client(headers=self.headers, follow_redirects=True,
                                 timeout=httpx.Timeout(min(120.0, seconds), connect=min(30.0, seconds)))
        with warnings.catch_warnings():  # the client's construction warns about its own deprecations
            warnings.simplefilter("ignore", DeprecationWarning)
            self.client = SyncStorageClient(self.base, self.headers, http_client=self.http)
        self.bucket = self.client.from_(config.bucket)

    def _where(self, key: str) -> str:
        return f"supabase:{self.config.bucket}/{key}"

    def put(self, key: str, data: BinaryIO, size: int) -> None:
        body: Any = data if isinstance(data, (io.BufferedReader, io.FileIO)) else data.read()
        try:
            self.bucket.upload(key, body, {"content-type": "application/octet-stream", "upsert": "true",
                                           "cache-control": "no-cache"})
        except Exception as exc:  # noqa: BLE001 - storage3 and httpx errors become one kind
            raise supabase_error(exc, "upload", self._where(key)) from None
        stored = {info.key: info.size for info in self._list_folder(key.rsplit("/", 1)[0] if "/" in key else "")}
        if stored.get(key) not in (size, -1):
            raise DestinationError(f"{self._where(key)}: stored {stored.get(key)} bytes, sent {size}", transient=True)

    def get(self, key: str) -> BinaryIO:
        url = f"{self.base}/object/{quote(self.config.bucket)}/{quote(key)}"
        try:
            response = self.http.send(self.http.build_request("GET", url), stream=True)
        except httpx.HTTPError as exc:
            raise supabase_error(exc, "download", self._where(key)) from None
        if response.status_code != 200:
            try:
                body = response.read()
                import json

                detail = json.loads(body)
                message, code = str(detail.get("message", "")), str(detail.get("error", ""))
                status = int(detail.get("statusCode") or response.status_code)
            except Exception:  # noqa: BLE001 - a non-JSON error page still has a status
                message, code, status = response.reason_phrase, "", response.status_code
            finally:
                response.close()
            raise _status_error(status, code, message, "download", self._where(key))
        return io.BufferedReader(_ResponseReader(response, self._where(key)), _CHUNK)

    def _list_folder(self, folder: str) -> Iterator[ObjectInfo]:
        """Every object under `folder`, recursively (storage lists one level per call)."""
        offset = 0
        while True:
            try:
                page = self.bucket.list(folder, {"limit": _PAGE, "offset": offset,
                                                 "sortBy": {"column": "name", "order": "asc"}})
            except Exception as exc:  # noqa: BLE001
                raise supabase_error(exc, "list", self._where(folder)) from None
            for entry in page:
                name = str(entry.get("name", ""))
                if not name or name == ".emptyFolderPlaceholder":
                    continue
                key = f"{folder}/{name}" if folder else name
                if entry.get("id") is None:
                    yield from self._list_folder(key)
                else:
                    metadata = entry.get("metadata") or {}
                    yield ObjectInfo(key, int(metadata.get("size", -1)))
            if len(page) < _PAGE:
                return
            offset += len(page)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        folder = prefix.rstrip("/") if prefix.endswith("/") else prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        for info in self._list_folder(folder):
            if info.key.startswith(prefix):
                yield info

    def delete(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), _PAGE):
            try:
                self.bucket.remove(keys[start:start + _PAGE])
            except Exception as exc:  # noqa: BLE001
                error = supabase_error(exc, "delete", self._where(keys[start]))
                if not isinstance(error, NotFound):
                    raise error from None


class SupabaseDestination(ObjectStoreDestination):
    """Backups under `<bucket>/<prefix>/<id>/` in Supabase Storage."""

    def __init__(self, config: SupabaseDestinationConfig) -> None:
        super().__init__(config.name, SupabaseStore(config), config.prefix)
        self.config = config
