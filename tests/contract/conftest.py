"""Fixtures for the destination contract suite: one real staged backup, and every destination kind
against a real backend on loopback (moto's S3, rclone, git with a bare remote, a Supabase Storage
stand-in)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from backupd.config import parse_config
from backupd.destinations import build
from backupd.destinations.base import Destination, StagedBackup
from backupd.manifest import Manifest
from tests.conftest import moto_server, run_cli, write_config
from tests.contract.servers import FakeSupabaseStorage

ACCESS_KEY = "AKIATESTBACKUPD"
SECRET_KEY = "test-secret-key-backupd"
SUPABASE_KEY = "service-role-key-for-tests"

# one line per destination kind (a kind may run against several backends)
DESTINATION_KINDS = ["local", "s3", "supabase", "rclone-local", "rclone-s3", "git"]


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (in-process thread), for the whole session."""
    with moto_server() as url:
        yield url


def make_bucket(moto_url: str, name: str | None = None) -> str:
    """A new bucket on moto; returns its name."""
    bucket = name or f"bkt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                 aws_secret_access_key=SECRET_KEY).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(scope="session")
def staged_backup(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> StagedBackup:
    """One real hybrid backup (schema, data, JSON export; zstd), as the runner stages it."""
    root = tmp_path_factory.mktemp("staged")
    config = write_config(root / "backupd.toml", {
        "source": {"dsn": pg.fresh_db("contract")},
        "state": {"dir": str(root / "state")},
        "destinations": [{"name": "local", "type": "local", "path": str(root / "out")}],
    })
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 0, result.stderr
    folder = next(p for p in (root / "out").iterdir() if p.is_dir())
    return StagedBackup(folder, Manifest.parse((folder / "manifest.json").read_bytes()))


def staged_as(staged: StagedBackup, backup_id: str) -> StagedBackup:
    """The same staged files published under another id (for retention and listing tests)."""
    return StagedBackup(staged.folder, staged.manifest.model_copy(update={"id": backup_id}))


def destination_config(kind: str, tmp_path: Path, moto_url: str, supabase_url: str) -> dict[str, Any]:
    """The [[destinations]] table of one kind, with a fresh bucket/folder/repository."""
    if kind == "local":
        return {"name": "dest", "type": "local", "path": str(tmp_path / "local")}
    if kind == "s3":
        return {"name": "dest", "type": "s3", "bucket": make_bucket(moto_url), "prefix": "team/backups",
                "endpoint_url": moto_url, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
                "part_size_mb": 5}
    if kind == "supabase":
        return {"name": "dest", "type": "supabase", "url": supabase_url, "service_role_key": SUPABASE_KEY,
                "bucket": "backups", "prefix": f"p{uuid.uuid4().hex[:8]}"}
    if kind == "rclone-local":
        return {"name": "dest", "type": "rclone", "remote": f"loc:{tmp_path / 'rclone'}"}
    if kind == "rclone-s3":
        return {"name": "dest", "type": "rclone", "remote": f"moto:{make_bucket(moto_url)}/backups",
                "extra_args": ["--s3-no-head"]}
    if kind == "git":
        return {"name": "dest", "type": "git", "path": str(tmp_path / "repo"), "remote": str(tmp_path / "remote.git"),
                "branch": "main"}
    raise AssertionError(kind)


@pytest.fixture(scope="session")
def supabase_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeSupabaseStorage]:
    """The Supabase Storage stand-in on 127.0.0.1."""
    with FakeSupabaseStorage(tmp_path_factory.mktemp("supabase"), SUPABASE_KEY) as server:
        yield server


@pytest.fixture
def rclone_env(monkeypatch: pytest.MonkeyPatch, moto_url: str) -> dict[str, str]:
    """rclone remotes from the environment: `loc:` (local disk) and `moto:` (moto's S3).

    Debian's rclone 1.60 fails every S3 call while AWS_CA_BUNDLE names the machine's bundle, so
    it is removed from the environment for these tests (moto speaks plain HTTP anyway)."""
    env = {
        "RCLONE_CONFIG_LOC_TYPE": "local",
        "RCLONE_CONFIG_MOTO_TYPE": "s3", "RCLONE_CONFIG_MOTO_PROVIDER": "Other",
        "RCLONE_CONFIG_MOTO_ENDPOINT": moto_url, "RCLONE_CONFIG_MOTO_ACCESS_KEY_ID": ACCESS_KEY,
        "RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY": SECRET_KEY, "RCLONE_CONFIG_MOTO_REGION": "us-east-1",
        "RCLONE_CONFIG": "/dev/null",
    }
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def make_destination(tmp_path: Path, moto_url: str, supabase_server: FakeSupabaseStorage,
                     rclone_env: dict[str, str]) -> Callable[[str], tuple[Destination, dict[str, Any]]]:
    """kind -> (a fresh Destination of that kind, its config table)."""

    def make(kind: str) -> tuple[Destination, dict[str, Any]]:
        table = destination_config(kind, tmp_path, moto_url, supabase_server.url)
        config = parse_config({"source": {"dsn": "postgresql://u@127.0.0.1:1/db"}, "destinations": [table]})
        return build(config.destinations[0]), table

    return make


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder (helper for tests that need a mutable staged backup)."""
    shutil.copytree(src, dst)


def manifest_json(staged: StagedBackup) -> dict[str, Any]:
    """The staged manifest as JSON."""
    return json.loads(staged.manifest.to_json())
