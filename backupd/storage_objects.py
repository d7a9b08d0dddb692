"""Supabase Storage objects as a source: the files behind the buckets, content-addressed.

A backup downloads every object of the configured buckets, names it by the sha256 of its bytes
and stages it (compressed and encrypted like any artifact) under `objects/`. At an object-store
destination it is published once, outside the backup folders, at
`<prefix>/objects/<sha256[:2]>/<sha256>` with a plain sidecar `<sha256>.json` (written last: the
stored size, sha256 of the stored bytes, compression, encryption); an object whose sidecar is
already there is not uploaded again. Each backup carries two artifacts: `storage-index.json`
(bucket, path, sha256, size, content type per object: encrypted like the rest) and
`storage-refs.txt` (the sha256s it refers to, never encrypted, so that garbage collection works
without the private key). Retention only deletes backup folders; `prune_unreferenced` then
removes the objects no remaining backup refers to. `restore_objects` puts them back.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar
from urllib.parse import quote

import httpx
import structlog

from backupd.config import StorageSourceConfig
from backupd.destinations.base import Destination, ObjectStoreDestination
from backupd.errors import BackupdError, DestinationError, IntegrityError, NotFound, SourceError
from backupd.manifest import ArtifactEntry, Manifest
from backupd.pipeline import COPY_BUFFER, ArtifactWriter, Decryptor, open_decoded
from backupd.snapshot import Snapshot
from backupd.sources import ArtifactSink, SourceReport

log = structlog.get_logger("backupd.storage")

OBJECTS_FOLDER = "objects"
INDEX_NAME = "storage-index.json"
REFS_NAME = "storage-refs.txt"
LIST_PAGE = 1000


class StorageClient:
    """The few calls of Supabase's Storage REST API backupd needs (`<url>/storage/v1/...`)."""

    def __init__(self, url: str, key: str, timeout: float, what: type[BackupdError] = SourceError) -> None:
        self.base = url.rstrip("/") + "/storage/v1"
        self.what = what
        self.http = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {key}", "apikey": key})

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def _check(self, response: httpx.Response, action: str) -> None:
        if response.status_code < 300:
            return
        try:
            message = str(response.json().get("message") or response.json().get("error"))
        except (ValueError, AttributeError):
            message = response.text[:200]
        raise self.what(f"Supabase Storage: {action} failed ({response.status_code}): {message}",
                        "check source.storage url and service_role_key" if response.status_code in (401, 403)
                        else None)

    def _request(self, method: str, path: str, action: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, self.base + path, **kwargs)
        except httpx.HTTPError as exc:
            raise self.what(f"Supabase Storage: {action} failed: {type(exc).__name__}: {exc}") from None
        self._check(response, action)
        return response

    def buckets(self) -> list[str]:
        """Every bucket's id."""
        return [str(b["id"]) for b in self._request("GET", "/bucket", "listing buckets").json()]

    def create_bucket(self, bucket: str) -> None:
        """Create a private bucket unless it exists."""
        if bucket in self.buckets():
            return
        self._request("POST", "/bucket", f"creating bucket {bucket}", json={"id": bucket, "name": bucket,
                                                                            "public": False})

    def objects(self, bucket: str, prefix: str = "") -> Iterator[dict[str, Any]]:
        """Every object below `prefix` (folders walked), as the API lists them, with `path` added."""
        offset = 0
        while True:
            page = self._request("POST", f"/object/list/{quote(bucket, safe='')}", f"listing {bucket}/{prefix}",
                                 json={"prefix": prefix, "limit": LIST_PAGE, "offset": offset,
                                       "sortBy": {"column": "name", "order": "asc"}}).json()
            for entry in page:
                path = f"{prefix}/{entry['name']}" if prefix else str(entry["name"])
                if entry.get("id") is None:
                    yield from self.objects(bucket, path)
                else:
                    yield {**entry, "path": path}
            if len(page) < LIST_PAGE:
                return
            offset += LIST_PAGE

    def download(self, bucket: str, path: str, out: Any) -> str:
        """Stream one object into `out.write`; returns its content type."""
        url = f"{self.base}/object/{quote(bucket, safe='')}/{quote(path)}"
        try:
            with self.http.stream("GET", url) as response:
                if response.status_code >= 300:
                    response.read()
                    self._check(response, f"downloading {bucket}/{path}")
                for chunk in response.iter_bytes(COPY_BUFFER):
                    out.write(chunk)
                return str(response.headers.get("content-type") or "application/octet-stream")
        except httpx.HTTPError as exc:
            raise self.what(f"Supabase Storage: downloading {bucket}/{path} failed: {exc}") from None

    def upload(self, bucket: str, path: str, data: BinaryIO, content_type: str) -> None:
        """Upload (upserting) one object, as supabase-py does: multipart field `file`."""
        self._request("POST", f"/object/{quote(bucket, safe='')}/{quote(path)}", f"uploading {bucket}/{path}",
                      files={"file": (path.rsplit("/", 1)[-1], data, content_type)},
                      headers={"x-upsert": "true", "cache-control": "max-age=3600"})


@dataclass
class _Counter:
    data: Any
    sha: Any
    size: int = 0

    def write(self, chunk: bytes) -> int:
        self.sha.update(chunk)
        self.size += len(chunk)
        return int(self.data.write(chunk))


class StorageObjectsSource:
    """The files of `[[source.storage]]` buckets (no snapshot: Storage is not in the database)."""

    name: ClassVar[str] = "storage"

    def __init__(self, configs: list[StorageSourceConfig]) -> None:
        self.configs = configs

    def produce(self, snapshot: Snapshot, sink: ArtifactSink) -> SourceReport:
        """Stage every object under `objects/` and write the index and refs artifacts."""
        staged = sink.folder / OBJECTS_FOLDER
        staged.mkdir(parents=True, exist_ok=True, mode=0o700)
        index: list[dict[str, Any]] = []
        for config in self.configs:
            client = StorageClient(config.url, config.service_role_key.get_secret_value(),
                                   config.timeout.total_seconds())
            try:
                for bucket in config.buckets or client.buckets():
                    for entry in client.objects(bucket):
                        index.append(self._stage(client, sink, staged, bucket, entry["path"]))
            finally:
                client.close()
        log.info("storage_objects_staged", objects=len(index), distinct=len({e["sha256"] for e in index}),
                 bytes=sum(e["size"] for e in index))
        report = SourceReport()
        writer = sink.open(INDEX_NAME, "storage-index")
        writer.write(json.dumps({"version": 1, "objects": index}, indent=1, sort_keys=True).encode())
        report.artifacts.append(writer.close())
        refs = ArtifactWriter(sink.folder, REFS_NAME, "storage-refs", sink.compression, sink.level, None)
        refs.write("".join(f"{sha}\n" for sha in sorted({e["sha256"] for e in index})).encode())
        report.artifacts.append(refs.close())
        return report

    def _stage(self, client: StorageClient, sink: ArtifactSink, staged: Path, bucket: str,
               path: str) -> dict[str, Any]:
        temp_name = f"{OBJECTS_FOLDER}/incoming-{os.getpid()}"
        writer = ArtifactWriter(sink.folder, temp_name, "storage-object", sink.compression, sink.level,
                                sink.encryptor)
        counter = _Counter(writer, hashlib.sha256())
        try:
            content_type = client.download(bucket, path, counter)
        except BaseException:
            writer.abort()
            raise
        entry = writer.close()
        sha = counter.sha.hexdigest()
        stored = staged / sha
        if stored.exists():
            (sink.folder / entry.name).unlink()
        else:
            os.replace(sink.folder / entry.name, stored)
            sidecar = entry.model_dump(mode="json") | {"name": sha, "plain_sha256": sha, "plain_bytes": counter.size}
            (staged / f"{sha}.json").write_text(json.dumps(sidecar, sort_keys=True))
        return {"bucket": bucket, "path": path, "sha256": sha, "size": counter.size, "content_type": content_type}


def object_key(destination: ObjectStoreDestination, sha: str, sidecar: bool = False) -> str:
    """Where a content-addressed object lives at a destination."""
    parts = [p for p in (destination.prefix, OBJECTS_FOLDER, sha[:2], sha + (".json" if sidecar else "")) if p]
    return "/".join(parts)


def publish_objects(destination: ObjectStoreDestination, folder: Path) -> None:
    """Upload the staged objects a destination does not have yet (sidecar last). Raises DestinationError."""
    staged = folder / OBJECTS_FOLDER
    if not staged.is_dir():
        return
    base = "/".join(p for p in (destination.prefix, OBJECTS_FOLDER) if p) + "/"
    present = {info.key for info in destination.objects.list(base)}
    uploaded = skipped = 0
    for sidecar in sorted(staged.glob("*.json")):
        sha = sidecar.stem
        if object_key(destination, sha, sidecar=True) in present:
            skipped += 1
            continue
        blob = staged / sha
        with open(blob, "rb") as data:
            destination.objects.put(object_key(destination, sha), data, blob.stat().st_size)
        meta = sidecar.read_bytes()
        destination.objects.put(object_key(destination, sha, sidecar=True), io.BytesIO(meta), len(meta))
        uploaded += 1
    log.info("storage_objects_published", destination=destination.name, uploaded=uploaded, unchanged=skipped)


def _refs(destination: Destination, manifest: Manifest) -> set[str] | None:
    entry = manifest.artifact_for("storage-refs")
    if entry is None:
        return set()
    try:
        with destination.open(manifest.id, entry.name) as raw:
            text = open_decoded(raw, entry, f"{destination.name}:{manifest.id}/{entry.name}").read()
    except (NotFound, IntegrityError) as exc:
        log.warning("storage_refs_unreadable", backup_id=manifest.id, error=str(exc))
        return None
    return set(text.decode().split())


def prune_unreferenced(destination: Destination, dry_run: bool = False) -> list[str]:
    """Delete the objects no complete backup refers to; returns their sha256s.

    Does nothing when any backup's refs cannot be read (better keep garbage than lose a file).
    """
    if not isinstance(destination, ObjectStoreDestination):
        return []
    referenced: set[str] = set()
    for manifest in destination.backups():
        refs = _refs(destination, manifest)
        if refs is None:
            return []
        referenced |= refs
    base = "/".join(p for p in (destination.prefix, OBJECTS_FOLDER) if p) + "/"
    unreferenced: dict[str, list[str]] = {}
    for info in destination.objects.list(base):
        name = info.key.rsplit("/", 1)[-1]
        sha = name.removesuffix(".json")
        if len(sha) == 64 and sha not in referenced:
            unreferenced.setdefault(sha, []).append(info.key)
    if unreferenced and not dry_run:
        for sha, keys in unreferenced.items():
            # sidecar first: an object without its sidecar is re-uploaded by the next backup
            destination.objects.delete(sorted(keys, key=lambda k: not k.endswith(".json")))
        log.info("storage_objects_pruned", destination=destination.name, objects=len(unreferenced))
    return sorted(unreferenced)


def read_index(destination: Destination, manifest: Manifest, decryptor: Decryptor | None) -> list[dict[str, Any]]:
    """The bucket/path -> sha256 index of one backup; raises IntegrityError when it has none."""
    entry = manifest.artifact_for("storage-index")
    if entry is None:
        raise IntegrityError(f"backup {manifest.id} holds no Storage objects (no [[source.storage]] then)")
    with destination.open(manifest.id, entry.name) as raw:
        data = open_decoded(raw, entry, f"{destination.name}:{manifest.id}/{entry.name}", decryptor,
                            manifest.encryption_recipients).read()
    return list(json.loads(data)["objects"])


def restore_objects(destination: Destination, manifest: Manifest, config: StorageSourceConfig, *,
                    buckets: list[str], to_bucket: str | None, decryptor: Decryptor | None,
                    work_dir: Path, dry_run: bool = False) -> dict[str, int]:
    """Upload a backup's objects into Storage (the same paths; `to_bucket` renames the bucket).

    Every object is decoded and its sha256 checked before it is uploaded. Returns counts per bucket.
    Raises IntegrityError (missing or corrupt object), DestinationError (Storage refused).
    """
    if not isinstance(destination, ObjectStoreDestination):
        raise DestinationError(f"{destination.name} keeps no Storage objects (only object-store destinations do)")
    wanted = [e for e in read_index(destination, manifest, decryptor) if not buckets or e["bucket"] in buckets]
    counts: dict[str, int] = {}
    client = StorageClient(config.url, config.service_role_key.get_secret_value(), config.timeout.total_seconds(),
                           what=DestinationError)
    try:
        created: set[str] = set()
        for item in wanted:
            bucket = to_bucket or item["bucket"]
            counts[bucket] = counts.get(bucket, 0) + 1
            if dry_run:
                continue
            if bucket not in created:
                client.create_bucket(bucket)
                created.add(bucket)
            with _decoded_object(destination, item["sha256"], decryptor, manifest, work_dir) as plain:
                client.upload(bucket, item["path"], plain, item.get("content_type") or "application/octet-stream")
    finally:
        client.close()
    return counts


class _decoded_object:  # noqa: N801 - a context manager used like a function
    """A temp file holding one object's verified plain bytes."""

    def __init__(self, destination: ObjectStoreDestination, sha: str, decryptor: Decryptor | None,
                 manifest: Manifest, work_dir: Path) -> None:
        self.args = (destination, sha, decryptor, manifest, work_dir)
        self.file: Any = None

    def __enter__(self) -> BinaryIO:
        destination, sha, decryptor, manifest, work_dir = self.args
        where = f"{destination.name}:{object_key(destination, sha)}"
        try:
            with destination.objects.get(object_key(destination, sha, sidecar=True)) as meta_stream:
                meta = json.loads(meta_stream.read())
        except NotFound:
            raise IntegrityError(f"{where} is missing (its sidecar is not there)") from None
        entry = ArtifactEntry.model_validate({**meta, "name": "object"})
        work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.file = tempfile.TemporaryFile(dir=work_dir)  # noqa: SIM115 - closed in __exit__
        digest = hashlib.sha256()
        with destination.objects.get(object_key(destination, sha)) as raw:
            plain = open_decoded(raw, entry, where, decryptor, manifest.encryption_recipients)
            while chunk := plain.read(COPY_BUFFER):
                digest.update(chunk)
                self.file.write(chunk)
        if digest.hexdigest() != sha:
            raise IntegrityError(f"{where}: content does not match its sha256")
        self.file.seek(0)
        return self.file  # type: ignore[no-any-return]

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()
