"""Helpers for the reliability suite: faults injected from outside (signals, full filesystems,
terminated sessions, misbehaving servers, hostile files), and the checks every fault must pass
afterwards (nothing incomplete listed, every earlier backup still verifies, status.json valid)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backupd.config import load_config
from backupd.destinations import build
from backupd.manifest import MANIFEST_NAME, Manifest
from tests.conftest import REPO, wait_for  # noqa: F401 - re-exported for the reliability tests




def spawn_cli(*args: str, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`backupd ARGS` as a subprocess whose stderr (the log, one event per line) goes to `log_path`."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
    full_env.update(env or {})
    with open(log_path, "wb") as log_file:
        return subprocess.Popen([sys.executable, "-m", "backupd", *args], stdout=subprocess.DEVNULL,
                                stderr=log_file, env=full_env, cwd=REPO)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def listed_ids(config: Path, *names: str) -> dict[str, list[str]]:
    """Per destination (all, or those named), the ids `backupd list` shows (the same
    Destination.backups() it calls)."""
    loaded = load_config(config)
    return {d.name: [m.id for m in build(d).backups()] for d in loaded.destinations if not names or d.name in names}


def check_local_backup(folder: Path) -> Manifest:
    """A complete backup folder at a local destination: its manifest parses and every artifact's
    size and sha256 match it. Returns the manifest; raises AssertionError naming what differs."""
    manifest = Manifest.parse((folder / MANIFEST_NAME).read_bytes(), str(folder))
    for entry in manifest.artifacts:
        path = folder / entry.name
        assert path.is_file(), f"{path} is listed in the manifest but missing"
        assert path.stat().st_size == entry.bytes, f"{path}: size differs from the manifest"
        assert sha256_file(path) == entry.sha256, f"{path}: sha256 differs from the manifest"
    return manifest


def incomplete_folders(root: Path) -> list[str]:
    """Backup folders at a local destination that have no manifest (must never be listed)."""
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not (p / MANIFEST_NAME).exists())


def status_is_valid_json(state: Path) -> bool:
    """status.json is absent (no run finished yet) or whole, valid JSON recording the last run."""
    path = state / "status.json"
    if not path.exists():
        return True
    data = json.loads(path.read_text())
    return isinstance(data, dict) and "last_run" in data


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("backupd: error:")]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Mount a small tmpfs (`size` like "3m") at tmp_path/NAME; unmounted afterwards, always.
    Skips the test when this user may not mount filesystems."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(point)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def fill(filesystem: Path, leave: int) -> None:
    """Fill a filesystem with a ballast file until only about `leave` bytes stay free."""
    stats = os.statvfs(filesystem)
    free = stats.f_bavail * stats.f_frsize
    with open(filesystem / ".ballast", "wb") as ballast:
        remaining = max(0, free - leave)
        block = b"\0" * (1 << 20)
        while remaining > 0:
            remaining -= ballast.write(block[: min(len(block), remaining)])
