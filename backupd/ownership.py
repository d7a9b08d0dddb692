"""A command run as root keeps the owner of the state it writes.

An operator runs `sudo backupd backup` (or status, list, verify...) on a host where the daemon runs
as `backupd`. Every file root writes into a state dir that belongs to another user is handed to that
user: status.json and the other atomically replaced files at once (the daemon may read them any
moment), everything else (history, locks, keys, staging leftovers) when the command ends. Without
this the daemon, as `backupd`, could no longer write its own state.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

_swept: set[Path] = set()


def _foreign_owner(directory: Path) -> tuple[int, int] | None:
    """(uid, gid) of `directory` when we are root and it belongs to someone else, else None."""
    if os.geteuid() != 0:
        return None
    try:
        info = os.stat(directory)
    except OSError:
        return None
    return None if info.st_uid == 0 else (info.st_uid, info.st_gid)


def adopt(path: Path) -> None:
    """Give `path` the owner of the folder it is in, when we are root and that owner is not."""
    owner = _foreign_owner(path.parent)
    if owner is not None:
        os.lchown(path, *owner)


def keep_owner_on_exit(state_dir: Path) -> None:
    """When we are root and `state_dir` belongs to another user, hand back at exit everything in
    it that this process left owned by root."""
    if state_dir in _swept or _foreign_owner(state_dir) is None:
        return
    _swept.add(state_dir)
    atexit.register(restore_owner, state_dir)


def restore_owner(state_dir: Path) -> None:
    """Chown to the state dir's owner every entry under it owned by root (symlinks themselves)."""
    owner = _foreign_owner(state_dir)
    if owner is None:
        return
    for root, dirs, files in os.walk(state_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            try:
                if os.lstat(path).st_uid == 0:
                    os.lchown(path, *owner)
            except OSError:
                continue  # removed meanwhile (staging) or not ours to change
