"""The destination contract: every destination kind, against its real backend, keeps the same
promises (store, list, open with verified bytes, remove, sweep, retention, probe)."""

from __future__ import annotations

import io
import json
import typing
from datetime import UTC, datetime
from typing import Any, BinaryIO

import pytest

from backupd.config import Config, Retention
from backupd.destinations import DESTINATION_TYPES
from backupd.destinations.base import ObjectStoreDestination
from backupd.errors import DestinationError, NotFound
from backupd.manifest import MANIFEST_NAME
from backupd.pipeline import open_decoded
from backupd.retention import apply_retention
from tests.contract.conftest import DESTINATION_KINDS, staged_as

pytestmark = pytest.mark.parametrize("kind", DESTINATION_KINDS)

IDS = ["20260101T020000Z", "20260102T020000Z", "20260103T020000Z"]


def _decoded(destination: Any, backup_id: str, name: str) -> bytes:
    manifest = destination.manifest(backup_id)
    entry = manifest.artifact(name)
    with destination.open(backup_id, name) as raw, open_decoded(raw, entry, f"{backup_id}/{name}") as plain:
        return typing.cast(bytes, plain.read())


def test_store_list_open_verifies(kind, make_destination, staged_backup):
    """A stored backup is listed with its manifest; every artifact it lists streams back with the
    size and sha256 the manifest states; the JSON export parses and holds the manifest's rows."""
    destination, _ = make_destination(kind)
    assert destination.backups() == []
    backup = staged_as(staged_backup, IDS[0])
    destination.store(backup)
    listed = destination.backups()
    assert [m.id for m in listed] == [IDS[0]]
    manifest = listed[0]
    assert manifest.tables == backup.manifest.tables
    names = {a.name for a in manifest.artifacts}
    if kind == "git":
        assert names == {"schema.sql", "export.json"}  # git keeps no data.sql: the table files are the data
    else:
        assert names == {a.name for a in backup.manifest.artifacts}
    for entry in manifest.artifacts:
        data = _decoded(destination, IDS[0], entry.name)
        if entry.content == "export":
            document = json.loads(data)
            assert document["version"] == "2.0"
            assert document["recordCount"] == {t: e.rows for t, e in manifest.tables.items()}
            assert {t: len(rows) for t, rows in document["data"].items()} == document["recordCount"]
        if entry.content == "schema":
            assert b"CREATE TABLE" in data


def test_open_detects_a_wrong_artifact_and_missing_backup(kind, make_destination, staged_backup):
    """Opening an unknown backup raises NotFound; bytes that do not match the manifest fail to verify."""
    from backupd.errors import IntegrityError

    destination, _ = make_destination(kind)
    destination.store(staged_as(staged_backup, IDS[0]))
    with pytest.raises(NotFound):
        destination.open(IDS[1], "manifest.json").read()
    manifest = destination.manifest(IDS[0])
    entry = manifest.artifacts[0]
    wrong = entry.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(IntegrityError):
        with destination.open(IDS[0], entry.name) as raw, open_decoded(raw, wrong, "x") as plain:
            plain.read()


def test_remove_and_retention_keep_newest(kind, make_destination, staged_backup):
    """Three backups, keep_last 2: the oldest goes, the two newest stay and still verify."""
    destination, _ = make_destination(kind)
    for backup_id in IDS:
        destination.store(staged_as(staged_backup, backup_id))
    assert [m.id for m in destination.backups()] == IDS
    _keep, removed = apply_retention(destination, Retention(keep_last=2), datetime(2026, 1, 4, tzinfo=UTC))
    assert removed == [IDS[0]]
    assert [m.id for m in destination.backups()] == IDS[1:]
    with pytest.raises(NotFound):
        destination.manifest(IDS[0])
    for entry in destination.manifest(IDS[2]).artifacts:
        _decoded(destination, IDS[2], entry.name)
    destination.remove(IDS[1])
    assert [m.id for m in destination.backups()] == [IDS[2]]


class _FailHalfway:
    """An ObjectStore wrapper whose put of an artifact fails after reading half of it."""

    def __init__(self, inner: Any, fail_on: str) -> None:
        self.inner = inner
        self.fail_on = fail_on

    def put(self, key: str, data: BinaryIO, size: int) -> None:
        if key.endswith(self.fail_on):
            half = data.read(size // 2)
            self.inner.put(key, io.BytesIO(half), len(half))  # a partial object really reaches the store
            raise DestinationError("connection reset half-way", transient=True)
        self.inner.put(key, data, size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_upload_failing_half_way_leaves_nothing_listed(kind, make_destination, staged_backup):
    """A store that fails during an artifact leaves no listed backup and no object behind; an
    incomplete folder (artifacts, no manifest) is never listed and the next sweep removes it."""
    destination, _ = make_destination(kind)
    if not isinstance(destination, ObjectStoreDestination):
        # git publishes by one atomic update-ref: a killed store leaves only its temp folder
        (destination.path / ".git").mkdir(parents=True, exist_ok=True)  # type: ignore[attr-defined]
        leftover = destination.path / ".git" / "backupd-killed"  # type: ignore[attr-defined]
        leftover.mkdir()
        assert destination.backups() == []
        assert destination.sweep() == []
        assert not leftover.exists()
        return
    real = destination.objects
    export = next(a.name for a in staged_backup.manifest.artifacts if a.content == "export")
    destination.objects = _FailHalfway(real, export)
    with pytest.raises(DestinationError):
        destination.store(staged_as(staged_backup, IDS[0]))
    destination.objects = real
    assert destination.backups() == []
    assert [o.key for o in real.list(destination.prefix)] == []
    # an incomplete folder left by a killed process (no manifest)
    first = staged_backup.manifest.artifacts[0]
    key = destination._key(IDS[1], first.name)
    with open(staged_backup.folder / first.name, "rb") as data:
        real.put(key, data, first.bytes)
    assert destination.backups() == []
    destination.store(staged_as(staged_backup, IDS[2]))
    assert destination.sweep(keep=None) == [IDS[1]]
    assert [m.id for m in destination.backups()] == [IDS[2]]
    assert not any(o.key.startswith(destination._key(IDS[1])) for o in real.list(destination.prefix))


def test_probe_writes_reads_and_deletes(kind, make_destination, staged_backup):
    """doctor's probe succeeds and leaves nothing listed behind."""
    destination, _ = make_destination(kind)
    detail = destination.probe()
    assert detail
    assert destination.backups() == []
    if isinstance(destination, ObjectStoreDestination):
        assert list(destination.objects.list(destination.prefix)) == []


def test_drift_config_registry_and_suite_agree(kind):
    """The config's destination types, the registry and this suite's kinds name the same types."""
    union = typing.get_args(typing.get_args(Config.model_fields["destinations"].annotation)[0])[0]
    config_types = {typing.get_args(m.model_fields["type"].annotation)[0] for m in typing.get_args(union)}
    suite_types = {k.split("-")[0] for k in DESTINATION_KINDS}
    assert config_types == set(DESTINATION_TYPES) == suite_types
    assert MANIFEST_NAME == "manifest.json"
