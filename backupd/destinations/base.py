"""The Destination Protocol, the ObjectStore Protocol, and the one adapter between them.

Every judgement about publishing lives here, once: artifacts first, `manifest.json` last (a
folder is a backup only when its manifest is there), incomplete folders swept by the next run,
listing of complete backups only. An object store only moves bytes.
"""

from __future__ import annotations

import errno
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import structlog

from backupd.errors import DestinationError, IntegrityError, NotFound
from backupd.manifest import MANIFEST_NAME, Manifest, is_backup_id
from backupd.signing import sign

log = structlog.get_logger("backupd.destination")


@dataclass(frozen=True)
class StagedBackup:
    """A finished backup in the staging folder: its files, its manifest, and the key its stored
    manifest is signed with ([security] signing_key; None: unsigned)."""

    folder: Path
    manifest: Manifest
    signing_key: bytes | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        """The backup id."""
        return self.manifest.id

    def manifest_bytes(self, manifest: Manifest | None = None) -> bytes:
        """`manifest` (default: the staged one) as stored: signed when a key is set."""
        return sign(manifest or self.manifest, self.signing_key).to_json()


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object."""

    key: str
    size: int


class ObjectStore(Protocol):
    """Bytes under keys (local folder, S3, Supabase Storage, rclone). Keys use '/'."""

    def put(self, key: str, data: BinaryIO, size: int) -> None:
        """Store `size` bytes from `data` under `key`, atomically (all or nothing). Raises DestinationError."""
        ...

    def get(self, key: str) -> BinaryIO:
        """A readable stream of the object; raises NotFound."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`."""
        ...

    def delete(self, keys: Sequence[str]) -> None:
        """Remove objects; missing ones are not an error."""
        ...


class Destination(Protocol):
    """Where complete backups are kept."""

    name: str

    def store(self, backup: StagedBackup) -> None:
        """Publish a staged backup: artifacts first, manifest last. Raises DestinationError."""
        ...

    def backups(self) -> list[Manifest]:
        """Complete backups, oldest first (a folder without a readable manifest is skipped)."""
        ...

    def open(self, backup_id: str, artifact: str) -> BinaryIO:
        """The stored bytes of one artifact. Raises NotFound."""
        ...

    def remove(self, backup_id: str) -> None:
        """Delete a backup (manifest first, so it stops being listed at once)."""
        ...

    def sweep(self, keep: str | None = None) -> list[str]:
        """Remove incomplete backups (no manifest) other than `keep`; returns their ids."""
        ...

    def manifest(self, backup_id: str) -> Manifest:
        """The manifest of one backup; raises NotFound or IntegrityError."""
        ...

    def probe(self) -> str:
        """Write, read back and delete a probe (for `backupd doctor`); returns a detail line.
        Raises DestinationError."""
        ...


class ObjectStoreDestination:
    """A Destination over any ObjectStore: `<prefix>/<id>/<artifact>`."""

    def __init__(self, name: str, store: ObjectStore, prefix: str = "") -> None:
        self.name = name
        self.objects = store
        self.prefix = prefix.strip("/")

    def _key(self, backup_id: str, name: str = "") -> str:
        parts = [p for p in (self.prefix, backup_id, name) if p]
        return "/".join(parts)

    def store(self, backup: StagedBackup) -> None:
        written: list[str] = []
        try:
            from backupd.storage_objects import publish_objects

            publish_objects(self, backup.folder)  # content-addressed, outside the backup folder
            for entry in backup.manifest.artifacts:
                path = backup.folder / entry.name
                with open(path, "rb") as data:
                    key = self._key(backup.id, entry.name)
                    # listed before the put: an upload cut short (a signal) is cleaned up too
                    written.append(key)
                    self.objects.put(key, data, entry.bytes)
            manifest = backup.manifest_bytes()
            manifest_key = self._key(backup.id, MANIFEST_NAME)
            written.insert(0, manifest_key)  # deleted first if anything below is interrupted
            self.objects.put(manifest_key, io.BytesIO(manifest), len(manifest))
        except BaseException:
            # Nothing half-published may stay: the folder has no manifest, remove what we wrote.
            try:
                self.objects.delete(written)
            except Exception as cleanup_error:  # noqa: BLE001 - the original error matters more
                log.warning("cleanup_failed", destination=self.name, error=str(cleanup_error))
            raise

    def _folders(self) -> dict[str, set[str]]:
        base = self.prefix + "/" if self.prefix else ""
        folders: dict[str, set[str]] = {}
        for info in self.objects.list(base):
            rest = info.key[len(base):]
            backup_id, _, name = rest.partition("/")
            if is_backup_id(backup_id) and name:
                folders.setdefault(backup_id, set()).add(name)
        return folders

    def backups(self) -> list[Manifest]:
        found = []
        for backup_id, names in sorted(self._folders().items()):
            if MANIFEST_NAME not in names:
                continue
            try:
                found.append(self.manifest(backup_id))
            except (IntegrityError, NotFound) as exc:
                log.warning("manifest_unreadable", destination=self.name, backup_id=backup_id, error=str(exc))
        return found

    def manifest(self, backup_id: str) -> Manifest:
        with self.objects.get(self._key(backup_id, MANIFEST_NAME)) as stream:
            data = stream.read(16 << 20)
        return Manifest.parse(data, f"{self.name}:{backup_id}/{MANIFEST_NAME}")

    def open(self, backup_id: str, artifact: str) -> BinaryIO:
        return self.objects.get(self._key(backup_id, artifact))

    def remove(self, backup_id: str) -> None:
        keys = [self._key(backup_id, name) for name in self._folders().get(backup_id, set())]
        manifest_key = self._key(backup_id, MANIFEST_NAME)
        if manifest_key in keys:
            self.objects.delete([manifest_key])
        self.objects.delete([k for k in keys if k != manifest_key])

    def probe(self) -> str:
        """Write, read back and delete a small probe object; returns a detail line.

        Its key is not a backup id, so `backups()` and `sweep()` never see it.
        """
        import os
        import secrets

        key = self._key(f".backupd-probe-{os.getpid()}-{secrets.token_hex(4)}")
        payload = b"backupd probe\n"
        self.objects.put(key, io.BytesIO(payload), len(payload))
        try:
            with self.objects.get(key) as stream:
                back = stream.read(1024)
            if back != payload:
                raise DestinationError(f"{self.name}: the probe object read back differs from what was written")
        finally:
            self.objects.delete([key])
        return f"wrote, read back and deleted {key}"

    def sweep(self, keep: str | None = None) -> list[str]:
        removed = []
        for backup_id, names in sorted(self._folders().items()):
            if MANIFEST_NAME in names or backup_id == keep:
                continue
            self.objects.delete([self._key(backup_id, n) for n in names])
            removed.append(backup_id)
            log.info("incomplete_backup_removed", destination=self.name, backup_id=backup_id)
        return removed


def destination_os_error(exc: OSError, action: str = "write", path: object = None) -> DestinationError:
    """An OSError met at a destination (ENOTDIR, EACCES, EROFS, ENOSPC, EIO, ...) as the expected
    failure it is: one line naming the path and the reason, no traceback. ENOSPC and EDQUOT read
    `no space left on device writing <path>`."""
    where = path if path is not None else exc.filename
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DestinationError(f"no space left on device writing {where}", "free space at the destination")
    reason = exc.strerror or str(exc) or type(exc).__name__
    return DestinationError(f"cannot {action} {where}: {reason}" if where is not None else f"cannot {action}: {reason}")


def classify_http_status(status: int) -> bool:
    """True when an HTTP status is worth retrying (5xx, 429, 408)."""
    return status >= 500 or status in (408, 429)


__all__ = [
    "Destination", "DestinationError", "NotFound", "ObjectInfo", "ObjectStore",
    "ObjectStoreDestination", "StagedBackup", "classify_http_status", "destination_os_error",
]
