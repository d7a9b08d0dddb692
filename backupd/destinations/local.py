"""A folder on a local or mounted filesystem: temp file, fsync, rename, fsync the directory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from backupd.config import LocalDestinationConfig
from backupd.destinations.base import ObjectInfo, ObjectStoreDestination, destination_os_error
from backupd.errors import DestinationError, NotFound

_BUFFER = 1 << 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _error(action: str, path: Path, exc: OSError) -> DestinationError:
    return destination_os_error(exc, action, path)


def _discard(path: Path) -> None:
    """Remove a temp file if it is there; a path that cannot hold one (ENOTDIR, EROFS) holds none."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


class LocalStore:
    """ObjectStore over a folder; keys are relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not str(path).startswith(str(self.root.resolve()) + os.sep):
            raise DestinationError(f"key {key!r} escapes {self.root}")
        return path

    def put(self, key: str, data: BinaryIO, size: int) -> None:
        path = self._path(key)
        temp = path.with_name(f".{path.name}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(temp, "wb") as out:
                shutil.copyfileobj(data, out, _BUFFER)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            _discard(temp)
            raise _error("write", path, exc) from None
        except BaseException:
            _discard(temp)  # abandoned by a signal: no temp file stays behind
            raise

    def get(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise NotFound(f"{path} does not exist") from None
        except OSError as exc:
            raise _error("read", path, exc) from None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        if not self.root.exists():
            return
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith("."):
                    continue  # temp files of an unfinished put
                full = Path(folder) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        yield ObjectInfo(key, full.stat().st_size)
                    except FileNotFoundError:
                        continue

    def delete(self, keys: Sequence[str]) -> None:
        parents = set()
        for key in keys:
            path = self._path(key)
            try:
                path.unlink(missing_ok=True)
            except NotADirectoryError:
                continue  # a parent is a regular file: nothing was ever written there
            except OSError as exc:
                raise _error("delete", path, exc) from None
            parents.add(path.parent)
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            # remove emptied backup folders (and their stray temp files)
            while parent != self.root.resolve() and parent.is_relative_to(self.root.resolve()):
                leftovers = list(parent.iterdir()) if parent.exists() else []
                if any(not p.name.startswith(".") for p in leftovers):
                    break
                shutil.rmtree(parent, ignore_errors=True)
                parent = parent.parent


class LocalDestination(ObjectStoreDestination):
    """Backups in `path/<id>/`."""

    def __init__(self, config: LocalDestinationConfig) -> None:
        super().__init__(config.name, LocalStore(config.path))
        self.config = config

    def sweep(self, keep: str | None = None) -> list[str]:
        removed = super().sweep(keep)
        # folders holding only temp files of a killed run (never listed as objects)
        root = self.config.path
        if root.exists():
            for child in root.iterdir():
                if child.is_dir() and child.name != keep and not (child / "manifest.json").exists():
                    if all(p.name.startswith(".") for p in child.rglob("*") if p.is_file()):
                        shutil.rmtree(child, ignore_errors=True)
                        if child.name not in removed:
                            removed.append(child.name)
        return removed
