"""The manifest (written last, plain JSON, never a secret) and backup ids.

A folder is a backup only when its manifest.json exists and parses: `Manifest.parse` refuses an
unknown format version, a malformed document, and artifact names that would escape the folder.

Signatures (backupd.signing) cover the manifest's *canonical bytes*: the stored JSON object without
its `signature` key, serialised with sorted keys, compact separators (`,` and `:`), non-ASCII kept
as UTF-8. A parsed manifest keeps the canonical bytes of what was stored (unknown keys included),
so a field a later release adds is covered too and a check never depends on this release's model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from backupd.errors import IntegrityError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT: Literal["backupd-manifest"] = "backupd-manifest"
MANIFEST_VERSION = 1
SUPPORTED_MANIFEST_VERSIONS = {1}
ID_FORMAT = "%Y%m%dT%H%M%SZ"
ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def backup_id(started_at: datetime) -> str:
    """The id of a run: its UTC start, `YYYYMMDDTHHMMSSZ`."""
    return started_at.astimezone(UTC).strftime(ID_FORMAT)


def id_time(identifier: str) -> datetime:
    """The UTC start time an id stands for; raises ValueError for something that is not an id."""
    return datetime.strptime(identifier, ID_FORMAT).replace(tzinfo=UTC)


def is_backup_id(text: str) -> bool:
    """True when `text` has the shape of a backup id."""
    return bool(ID_PATTERN.match(text))


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ArtifactEntry(_Frozen):
    """One stored file of a backup: its name in the folder and what its stored bytes must be."""

    name: str
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    compression: Literal["zstd", "gzip", "none"]
    encryption: Literal["none", "gpg", "age"] = "none"
    content: str = Field(default="", description="what the artifact holds: schema, data, export, csv, sqlite")

    @field_validator("name")
    @classmethod
    def _inside_folder(cls, value: str) -> str:
        if not _SAFE_NAME.match(value) or ".." in value.split("/"):
            raise ValueError(f"artifact name {value[:80]!r} is not a plain file name inside the backup")
        return value


class TableEntry(_Frozen):
    """Per table: rows exported, the order-independent content checksum, and its shape."""

    rows: int = Field(ge=0)
    checksum: str
    columns: list[str] = []
    primary_key: list[str] = []
    has_updated_at: bool = False


class SourceInfo(_Frozen):
    """The database a backup was read from (no host, no user, no secret)."""

    server_version: str
    server_version_num: int
    database: str


class Manifest(_Frozen):
    """What a backup is: written last, read first."""

    format: Literal["backupd-manifest"] = MANIFEST_FORMAT
    format_version: int = MANIFEST_VERSION
    id: str = Field(pattern=ID_PATTERN.pattern)
    kind: Literal["full", "incremental"] = "full"
    base: str | None = None
    since: str | None = None
    # every change this backup does not hold was made by a transaction that began at or after
    # `horizon` (the next incremental's `since` is derived from it)
    horizon: str | None = None
    started_at: str
    finished_at: str
    backupd: str
    source: SourceInfo
    snapshot: str
    export_version: str | None = "2.0"
    schemas: list[str] = []
    excluded_columns: dict[str, list[str]] = {}
    tables: dict[str, TableEntry] = {}
    table_order: list[str] = []
    artifacts: list[ArtifactEntry] = []
    encryption_recipients: list[str] = []
    signature: str | None = Field(default=None, description="hmac-sha256:<hex> over the canonical bytes")
    # canonical bytes of the document as stored (set by `parse`; None for one built in memory)
    _stored_canonical: bytes | None = PrivateAttr(default=None)

    def canonical_bytes(self) -> bytes:
        """The bytes a signature covers: the stored document when parsed, else this model's."""
        if self._stored_canonical is not None:
            return self._stored_canonical
        return canonical_json(self.model_dump(mode="json"))

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Manifest:
        """A copy; an updated copy is no longer what was stored, so it loses the stored bytes."""
        copy = super().model_copy(update=update, deep=deep)
        if update:
            copy._stored_canonical = None
        return copy

    def artifact(self, name: str) -> ArtifactEntry:
        """The entry for artifact `name`; raises IntegrityError when the manifest has none."""
        for entry in self.artifacts:
            if entry.name == name:
                return entry
        raise IntegrityError(f"backup {self.id} has no artifact {name!r}")

    def artifact_for(self, content: str) -> ArtifactEntry | None:
        """The artifact holding `content` (schema, data, export, sqlite), if the backup has one."""
        for entry in self.artifacts:
            if entry.content == content:
                return entry
        return None

    @property
    def total_bytes(self) -> int:
        """Stored bytes of every artifact."""
        return sum(a.bytes for a in self.artifacts)

    @property
    def total_rows(self) -> int:
        """Rows over every table."""
        return sum(t.rows for t in self.tables.values())

    def to_json(self) -> bytes:
        """The manifest as stored: indented, key order stable, newline-terminated."""
        return (json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, where: str = "manifest.json") -> Manifest:
        """Parse a stored manifest; raises IntegrityError (unknown version, malformed, unsafe names)."""
        try:
            raw = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"{where} is not valid JSON ({exc})") from None
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
            raise IntegrityError(f"{where} is not a backupd manifest")
        version = raw.get("format_version")
        if version not in SUPPORTED_MANIFEST_VERSIONS:
            raise IntegrityError(
                f"{where} has manifest format version {version!r}, this backupd reads "
                f"{sorted(SUPPORTED_MANIFEST_VERSIONS)}",
                "upgrade backupd to restore this backup",
            )
        try:
            manifest = cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            location = ".".join(str(p) for p in first["loc"])
            raise IntegrityError(f"{where} is malformed: {location}: {first['msg']}") from None
        manifest._stored_canonical = canonical_json(raw)
        return manifest


def canonical_json(document: dict[str, Any]) -> bytes:
    """The canonical bytes of a manifest document (its `signature` key left out): sorted keys,
    compact separators, UTF-8."""
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def now_utc() -> datetime:
    """The current time, UTC, whole seconds."""
    return datetime.now(UTC).replace(microsecond=0)


def iso(moment: datetime) -> str:
    """ISO 8601 with Z, the format of every timestamp backupd writes."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
