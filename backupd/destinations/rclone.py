"""Anything rclone reaches (`name:path`), through the rclone binary (Debian's 1.60 works).

`rcat` uploads from a pipe (nothing is held in memory), `cat` streams an object back,
`lsjson -R --files-only` lists, `delete --files-from-raw -` removes a batch of keys in one call.
rclone's own stderr is relayed line by line into our log (`rclone_said`), redacted like every
line. The remote's configuration comes from rclone's usual places (`RCLONE_CONFIG`, the config
file, `RCLONE_CONFIG_<NAME>_<KEY>` variables); `extra_args` are added to every call (for example
`--s3-no-head` against S3 stores that answer HEAD oddly).

After each upload the object's size is read back with `lsjson` and compared with what was sent
(rclone itself compares hashes where the backend offers them).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import BinaryIO

import structlog

from backupd import proc
from backupd.config import RcloneDestinationConfig
from backupd.destinations.base import ObjectInfo, ObjectStoreDestination
from backupd.errors import CommandError, DestinationError, NotFound

log = structlog.get_logger("backupd.rclone")

_COPY_BUFFER = 1 << 20
# rclone's exit codes: 3 directory not found, 4 file not found, 5 temporary error (retry),
# 6 less serious errors, 7 fatal error (do not retry), 8 transfer exceeded
_NOT_FOUND = {3, 4}
_TRANSIENT = {5, 8}
_STAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ")
_FATAL_WORDS = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket",
                "didn't find section in config file", "permission denied", "403",
                # a local or mounted path's OS errors: retrying changes nothing
                "not a directory", "read-only file system")


def _relay(line: str) -> None:
    level = "warning" if (" ERROR " in line or "Failed" in line) else "debug" if " NOTICE: Config file" in line \
        else "info"
    getattr(log, level)("rclone_said", line=line)


def _why(stderr_tail: str) -> str | None:
    """The line in which rclone says why: its closing `Failed to <verb>: ...` with the `caused by:`
    lines under it (where a connection refused or a TLS problem is named), else its last ERROR line."""
    lines = [_STAMP.sub("", line.strip()) for line in stderr_tail.splitlines() if line.strip()]
    for marker in ("Failed to ", "ERROR : "):
        starts = [index for index, line in enumerate(lines) if line.startswith(marker)]
        if starts:
            parts = [lines[starts[-1]]]
            for line in lines[starts[-1] + 1:]:
                if not line.startswith("caused by:"):
                    break
                parts.append(line)
            return " ".join(parts)
    return None


def _error(exc: CommandError, action: str, where: str) -> DestinationError:
    tail = exc.stderr_tail
    if exc.returncode in _NOT_FOUND or "object not found" in tail or "directory not found" in tail:
        return NotFound(f"{where}: not found")
    why = _why(tail)
    detail = f"rclone exited with code {exc.returncode}: {why}" if why else exc.message
    if exc.returncode == 127:
        return DestinationError(f"rclone {action} {where}: {detail}", "install rclone or set rclone = PATH")
    fatal = exc.returncode == 7 or any(word in tail for word in _FATAL_WORDS)
    transient = not fatal and (exc.returncode in _TRANSIENT or exc.returncode in (1, -1))
    return DestinationError(f"rclone {action} {where} failed: {detail}",
                            "check the remote's rclone config" if fatal else None, transient=transient)


class _ProcessReader(io.RawIOBase):
    """stdout of a running rclone; close() waits for it and raises its error, if any."""

    def __init__(self, stack: ExitStack, process: proc.Process, where: str, timeout: float) -> None:
        super().__init__()
        self._stack = stack
        self._process = process
        self._where = where
        self._timeout = timeout
        self._finished = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._process.stdout.read(len(buffer))
        if not data:
            self._finish()
            return 0
        n = len(data)
        buffer[:n] = data
        return n

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self._process.finish(timeout=self._timeout)
        except CommandError as exc:
            raise _error(exc, "cat", self._where) from None

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self._finished:
                self._finished = True
                self._process.kill()
        finally:
            self._stack.close()
            super().close()


class RcloneStore:
    """ObjectStore over `remote:path`; keys are relative to it."""

    def __init__(self, config: RcloneDestinationConfig) -> None:
        self.config = config
        self.root = config.remote.rstrip("/") if not config.remote.endswith(":") else config.remote
        self.binary = config.rclone
        self.timeout = config.timeout.total_seconds()

    def _path(self, key: str) -> str:
        if not key:
            return self.root
        return f"{self.root}{'' if self.root.endswith(':') else '/'}{key}"

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, *args, "--contimeout", "30s", "--timeout", "5m", "--low-level-retries", "3",
                "--retries", "1", *self.config.extra_args]

    def put(self, key: str, data: BinaryIO, size: int) -> None:
        where = self._path(key)
        if shutil.which(self.binary) is None:
            raise DestinationError(f"rclone binary {self.binary!r} not found", "install rclone or set rclone = PATH")
        with proc.spawn(self._argv("rcat", "--size", str(size), where), stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL, relay=_relay) as process:
            sent = 0
            writer_error: list[BaseException] = []

            def feed() -> None:
                nonlocal sent
                try:
                    while chunk := data.read(_COPY_BUFFER):
                        process.stdin.write(chunk)
                        sent += len(chunk)
                    process.stdin.close()
                except (BrokenPipeError, OSError) as exc:  # rclone died; its exit code tells why
                    writer_error.append(exc)

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            feeder.join(self.timeout)
            try:
                process.finish(timeout=self.timeout)
            except CommandError as exc:
                raise _error(exc, "rcat", where) from None
            if feeder.is_alive():
                raise DestinationError(f"rclone rcat {where}: upload timed out", transient=True)
        if writer_error or sent != size:
            raise DestinationError(f"rclone rcat {where}: sent {sent} of {size} bytes", transient=True)
        stored = {info.key: info.size for info in self._lsjson(key, recursive=False)}
        name = key.rsplit("/", 1)[-1]
        if stored.get(name) != size:
            raise DestinationError(f"rclone rcat {where}: stored size {stored.get(name)} differs from {size}",
                                   transient=True)

    def get(self, key: str) -> BinaryIO:
        where = self._path(key)
        # `rclone cat` of a missing object on a bucket-based remote prints nothing and exits 0
        name = key.rsplit("/", 1)[-1]
        if not any(info.key == name for info in self._lsjson(key, recursive=False)):
            raise NotFound(f"{where}: not found")
        stack = ExitStack()
        try:
            process = stack.enter_context(proc.spawn(self._argv("cat", where), relay=_relay))
        except CommandError as exc:
            stack.close()
            raise _error(exc, "cat", where) from None
        reader = io.BufferedReader(_ProcessReader(stack, process, where, self.timeout), _COPY_BUFFER)
        return reader

    def _lsjson(self, key: str, recursive: bool) -> list[ObjectInfo]:
        """Files at `key` (a folder, or the folder of a file), keys relative to that folder."""
        folder = key.rsplit("/", 1)[0] if not recursive and "/" in key else ("" if not recursive else key)
        args = ["lsjson", "--files-only", "--no-mimetype", "--no-modtime"]
        if recursive:
            args.append("-R")
        try:
            out = proc.run(self._argv(*args, self._path(folder)), timeout=self.timeout)
        except CommandError as exc:
            error = _error(exc, "lsjson", self._path(folder))
            if isinstance(error, NotFound):
                return []
            raise error from None
        try:
            items = json.loads(out or b"[]")
        except json.JSONDecodeError:
            raise DestinationError(f"rclone lsjson {self._path(folder)}: unreadable output") from None
        return [ObjectInfo(str(item["Path"]), int(item.get("Size", -1))) for item in items]

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        folder = prefix.rstrip("/") if prefix.endswith("/") else prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = folder + "/" if folder else ""
        for info in self._lsjson(folder, recursive=True):
            key = base + info.key
            if key.startswith(prefix):
                yield ObjectInfo(key, info.size)

    def delete(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        listing = ("\n".join(keys) + "\n").encode()
        try:
            proc.run(self._argv("delete", "--files-from-raw", "-", self.root), input=listing, timeout=self.timeout)
        except CommandError as exc:
            error = _error(exc, "delete", self.root)
            if not isinstance(error, NotFound):
                raise error from None


class RcloneDestination(ObjectStoreDestination):
    """Backups under `remote:path/<id>/`."""

    def __init__(self, config: RcloneDestinationConfig) -> None:
        super().__init__(config.name, RcloneStore(config))
        self.config = config
