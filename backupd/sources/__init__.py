"""The producers of a backup's artifacts, all reading one snapshot.

Each Source writes its artifacts through an ArtifactSink and reports what it wrote; the runner
runs the dump and the export side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from backupd.manifest import ArtifactEntry, TableEntry
from backupd.pipeline import ArtifactWriter, Compression, Encryptor
from backupd.snapshot import Snapshot


@dataclass
class SourceReport:
    """What a source produced: artifact entries and (for the export) per-table rows/checksums."""

    artifacts: list[ArtifactEntry] = field(default_factory=list)
    tables: dict[str, TableEntry] = field(default_factory=dict)


class ArtifactSink:
    """Opens artifacts in the staging folder with the configured compression and encryption."""

    def __init__(self, folder: Path, compression: Compression, level: int, encryptor: Encryptor | None) -> None:
        self.folder = folder
        self.compression = compression
        self.level = level
        self.encryptor = encryptor

    def open(self, base_name: str, content: str) -> ArtifactWriter:
        """A writer for artifact `base_name` (suffixes are added by the pipeline)."""
        return ArtifactWriter(self.folder, base_name, content, self.compression, self.level, self.encryptor)


class Source(Protocol):
    """A producer of artifacts from one snapshot."""

    name: ClassVar[str]

    def produce(self, snapshot: Snapshot, sink: ArtifactSink) -> SourceReport:
        """Write this source's artifacts; returns their entries. Raises SourceError/CommandError."""
        ...
