"""`backupd diff`: rows added, removed and changed per table between two backups, in bounded memory.

Each side is resolved to the state of the database at that backup: a full's export, or an
incremental's chain (its full, then each incremental in order: `deleted` keys removed, rows
upserted). Every table of every export read is externally sorted by primary key into temporary
files (runs of at most RUN_BYTES in memory, then a heap merge), the chain is folded by a merge on
(key, position in the chain), and the two sides are compared by one more merge. Memory holds one
run at a time, whatever the size of the backups; disk holds about one copy of each side.

A key is the JSON list of a row's primary-key values; it is reported as `{column: value}`.
Tables without a primary key are compared as whole rows (a changed row shows as removed + added).
"""

from __future__ import annotations

import heapq
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from backupd.destinations.base import Destination
from backupd.errors import IntegrityError, NotFound, UsageError
from backupd.jsonreader import ExportReader
from backupd.manifest import Manifest
from backupd import progress
from backupd.pipeline import open_decoded
from backupd.signing import TrustedDestination, resolve

log = structlog.get_logger("backupd.diff")
RUN_BYTES = 24 << 20
SEP = b"\x01"  # never raw inside JSON text


@dataclass
class TableDiff:
    """One table's differences; key lists live in files until written out."""

    added: int = 0
    removed: int = 0
    changed: int = 0
    primary_key: list[str] = field(default_factory=list)
    added_path: Path | None = None
    removed_path: Path | None = None
    changed_path: Path | None = None

    def keys(self, which: str) -> Iterator[Any]:
        """The keys ({column: value}) of `added`/`removed`, or {"key", "columns"} of `changed`."""
        path = getattr(self, f"{which}_path")
        if path is None:
            return
        with open(path, "rb") as lines:
            for line in lines:
                yield json.loads(line)


# -- external sort ------------------------------------------------------------------------------


class ExternalSorter:
    """Sorts `key SEP payload` records by key with at most RUN_BYTES of them in memory."""

    def __init__(self, scratch: Path, name: str) -> None:
        self.scratch = scratch
        self.name = name
        self.runs: list[Path] = []
        self._records: list[bytes] = []
        self._bytes = 0

    def add(self, record: bytes) -> None:
        """One record (without newline)."""
        self._records.append(record)
        self._bytes += len(record) + 64
        if self._bytes >= RUN_BYTES:
            self._spill()

    def _spill(self) -> None:
        if not self._records:
            return
        self._records.sort(key=_record_key)
        path = self.scratch / f"{self.name}.run{len(self.runs)}"
        with open(path, "wb") as out:
            out.writelines(record + b"\n" for record in self._records)
        self.runs.append(path)
        self._records = []
        self._bytes = 0

    def finish(self) -> Path:
        """One file with every record, sorted by key."""
        if not self.runs:
            self._records.sort(key=_record_key)
            path = self.scratch / f"{self.name}.sorted"
            with open(path, "wb") as out:
                out.writelines(record + b"\n" for record in self._records)
            self._records = []
            return path
        self._spill()
        path = self.scratch / f"{self.name}.sorted"
        files = [open(run, "rb") for run in self.runs]  # noqa: SIM115 - closed below
        try:
            with open(path, "wb") as out:
                out.writelines(heapq.merge(*files, key=_record_key))
        finally:
            for handle in files:
                handle.close()
            for run in self.runs:
                run.unlink(missing_ok=True)
        return path


def _record_key(record: Any) -> bytes:
    key: bytes = record.split(SEP, 1)[0]
    return key


def read_records(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """(key, payload) of a sorted record file."""
    with open(path, "rb") as lines:
        for line in lines:
            key, _, payload = line.rstrip(b"\n").partition(SEP)
            yield key, payload


def key_of(row: dict[str, Any], primary_key: list[str]) -> bytes:
    """The sort key of a row (or of a `deleted` key object)."""
    return json.dumps([row.get(c) for c in primary_key], ensure_ascii=False, separators=(",", ":")).encode()


# -- one backup's tables --------------------------------------------------------------------------


class _TableSorter:
    """A RowSink for ExportReader: every row of one table into an ExternalSorter by key."""

    def __init__(self, scratch: Path, name: str, primary_key: list[str]) -> None:
        self.sorter = ExternalSorter(scratch, name)
        self.primary_key = primary_key
        self.path: Path | None = None

    def write_rows(self, rows: list[bytes]) -> None:
        for text in rows:
            key = key_of(json.loads(text), self.primary_key) if self.primary_key else text
            self.sorter.add(key + SEP + text)

    def finish(self, keys: list[str]) -> None:
        self.path = self.sorter.finish()


def _open_export(destination: Destination, manifest: Manifest) -> BinaryIO:
    entry = manifest.artifact_for("export")
    if entry is None:
        raise IntegrityError(f"backup {manifest.id} has no JSON export to compare")
    raw = destination.open(manifest.id, entry.name)
    return open_decoded(raw, entry, f"{destination.name}:{manifest.id}/{entry.name}",
                        recipients=manifest.encryption_recipients)


def sorted_tables(destination: Destination, manifest: Manifest, scratch: Path
                  ) -> tuple[dict[str, Path], dict[str, list[bytes]]]:
    """Per table, a file of its rows sorted by key; and per table, the sorted deleted keys."""
    sorters: dict[str, _TableSorter] = {}

    def handler(table: str) -> _TableSorter:
        progress.current().stage(f"reading {manifest.id}: {table}")
        entry = manifest.tables.get(table)
        sorter = _TableSorter(scratch, f"{manifest.id}.{len(sorters)}", entry.primary_key if entry else [])
        sorters[table] = sorter
        return sorter

    with _open_export(destination, manifest) as stream:
        document = ExportReader(stream, f"{destination.name}:{manifest.id}").read(handler)
    files = {table: s.path for table, s in sorters.items() if s.path is not None}
    deleted: dict[str, list[bytes]] = {}
    for table, keys in document.deleted.items():
        entry = manifest.tables.get(table)
        pk = entry.primary_key if entry else []
        deleted[table] = sorted(key_of(k, pk) for k in keys if isinstance(k, dict))
    return files, deleted


# -- resolving an id to a state ------------------------------------------------------------------


def chain_of(manifests: list[Manifest], target: Manifest) -> list[Manifest]:
    """The full `target` builds on and every incremental of its chain up to `target`, in order."""
    if target.kind == "full":
        return [target]
    by_id = {m.id: m for m in manifests}
    if not target.base or target.base not in by_id:
        raise IntegrityError(f"backup {target.id} builds on {target.base}, which is not at this destination")
    members = [m for m in manifests if m.kind == "incremental" and m.base == target.base and m.id <= target.id]
    return [by_id[target.base], *members]


def state_files(destination: Destination, chain: list[Manifest], scratch: Path) -> dict[str, Path]:
    """Per table, a file of the rows at the chain's last backup, sorted by key."""
    if len(chain) == 1:
        return sorted_tables(destination, chain[0], scratch)[0]
    layers = [sorted_tables(destination, manifest, scratch) for manifest in chain]
    tables: list[str] = []
    for files, deleted in layers:
        tables += [t for t in [*files, *deleted] if t not in tables]
    result: dict[str, Path] = {}
    for table in tables:
        streams: list[Iterable[tuple[bytes, int, bytes | None]]] = []
        for position, (files, deleted) in enumerate(layers):
            # within one backup, its deletions apply before its rows
            if table in deleted:
                streams.append(_layer(((key, None) for key in deleted[table]), 2 * position))
            if table in files:
                streams.append(_layer(read_records(files[table]), 2 * position + 1))
        path = scratch / f"state.{chain[-1].id}.{len(result)}"
        with open(path, "wb") as out:
            current: bytes | None = None
            payload: bytes | None = None
            for key, _, value in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
                if key != current:
                    if current is not None and payload is not None:
                        out.write(current + SEP + payload + b"\n")
                    current = key
                payload = value
            if current is not None and payload is not None:
                out.write(current + SEP + payload + b"\n")
        result[table] = path
    for files, _ in layers:
        for path in files.values():
            path.unlink(missing_ok=True)
    return result


def _layer(records: Iterable[tuple[bytes, bytes | None]], order: int) -> Iterator[tuple[bytes, int, bytes | None]]:
    for key, payload in records:
        yield key, order, payload


# -- comparing -------------------------------------------------------------------------------------


def changed_columns(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Columns whose values differ (or that exist on one side only), in the new row's order."""
    names = list(new) + [c for c in old if c not in new]
    return [c for c in names if c not in old or c not in new or old[c] != new[c]]


def compare_table(before: Path | None, after: Path | None, primary_key: list[str], scratch: Path,
                  name: str) -> TableDiff:
    """Merge two sorted state files of one table."""
    result = TableDiff(primary_key=primary_key)
    outputs = {which: scratch / f"diff.{name}.{which}" for which in ("added", "removed", "changed")}
    handles = {which: open(path, "wb") for which, path in outputs.items()}  # noqa: SIM115 - closed below

    def key_object(key: bytes, payload: bytes) -> dict[str, Any]:
        if not primary_key:
            row: dict[str, Any] = json.loads(payload)
            return row
        return dict(zip(primary_key, json.loads(key), strict=False))

    def emit(which: str, data: Any) -> None:
        handles[which].write(json.dumps(data, ensure_ascii=False).encode() + b"\n")

    try:
        old_records = read_records(before) if before else iter(())
        new_records = read_records(after) if after else iter(())
        old = next(old_records, None)
        new = next(new_records, None)
        while old is not None or new is not None:
            if new is None or (old is not None and old[0] < new[0]):
                assert old is not None
                result.removed += 1
                emit("removed", key_object(*old))
                old = next(old_records, None)
            elif old is None or new[0] < old[0]:
                result.added += 1
                emit("added", key_object(*new))
                new = next(new_records, None)
            else:
                if old[1] != new[1]:
                    columns = changed_columns(json.loads(old[1]), json.loads(new[1]))
                    if columns:
                        result.changed += 1
                        emit("changed", {"key": key_object(*new), "columns": columns})
                old = next(old_records, None)
                new = next(new_records, None)
    finally:
        for handle in handles.values():
            handle.close()
    result.added_path, result.removed_path, result.changed_path = (
        outputs["added"], outputs["removed"], outputs["changed"])
    return result


@dataclass
class BackupDiff:
    """The differences between two backups; `close()` removes the scratch files."""

    before: str
    after: str
    tables: dict[str, TableDiff]
    scratch: tempfile.TemporaryDirectory[str]

    def close(self) -> None:
        """Remove temporary files."""
        self.scratch.cleanup()


def diff_backups(destination: TrustedDestination, id_a: str, id_b: str, only_table: str | None = None,
                 scratch_dir: Path | None = None) -> BackupDiff:
    """Compare backup `id_a` (before) with `id_b` (after) at `destination`, every backup of both
    chains checked first (signature). Raises NotFound (no such backup), IntegrityError (unreadable,
    signature), UsageError (unknown table)."""
    before = resolve(destination, id_a)
    after = resolve(destination, id_b)
    manifests = destination.backups()
    for member in [*chain_of(manifests, before), *chain_of(manifests, after)]:
        destination.check(member)
    if only_table and only_table not in before.tables and only_table not in after.tables:
        raise UsageError(f"--table {only_table}: neither backup has that table")
    scratch = tempfile.TemporaryDirectory(prefix="backupd-diff-", dir=scratch_dir)
    try:
        root = Path(scratch.name)
        old_dir, new_dir = root / "a", root / "b"
        old_dir.mkdir()
        new_dir.mkdir()
        old_state = state_files(destination, chain_of(manifests, before), old_dir)
        new_state = state_files(destination, chain_of(manifests, after), new_dir)
        names = [t for t in after.table_order or list(after.tables)]
        names += [t for t in [*before.tables, *old_state, *new_state] if t not in names]
        if only_table:
            names = [only_table]
        tables: dict[str, TableDiff] = {}
        for index, table in enumerate(names):
            entry = after.tables.get(table) or before.tables.get(table)
            progress.current().stage(f"comparing {table}")
            tables[table] = compare_table(old_state.get(table), new_state.get(table),
                                          entry.primary_key if entry else [], root, str(index))
            progress.current().done(table, entry.rows if entry else 0)
            for state in (old_state, new_state):
                if table in state:
                    os.unlink(state[table])
        log.info("backups_compared", before=before.id, after=after.id,
                 changed_tables=sum(1 for d in tables.values() if d.added or d.removed or d.changed))
        return BackupDiff(before.id, after.id, tables, scratch)
    except BaseException:
        scratch.cleanup()
        raise
