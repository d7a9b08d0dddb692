"""One run at a time: an flock on `<state.dir>/lock` (released by the kernel if the process dies)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from backupd.errors import LockHeld, StorageFull


class RunLock:
    """Exclusive lock on the state directory. `wait=False` raises LockHeld (exit 4) when taken."""

    def __init__(self, state_dir: Path, name: str = "lock") -> None:
        self.path = state_dir / name
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> None:
        """Take the lock; raises LockHeld (wait=False) or StorageFull (state dir unwritable)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageFull(f"cannot create the lock {self.path}: {exc.strerror or exc}",
                              "check [state] dir exists and is writable by this user") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = ""
            try:
                holder = os.pread(fd, 64, 0).decode().strip()
            except OSError:
                pass
            os.close(fd)
            raise LockHeld(f"another backupd run holds {self.path}" + (f" (pid {holder})" if holder else ""),
                           "wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock back."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
