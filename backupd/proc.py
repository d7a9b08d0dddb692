"""The one way backupd runs pg_dump, psql, git, gpg, rclone and the Supabase CLI.

argv only (never a shell), secrets through the environment (PGPASSWORD, never argv), stderr
captured in a bounded buffer whose tail becomes the CommandError, every line redacted before it
is logged. Children still running when a run is abandoned are terminated by `terminate_all`.
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import structlog

from backupd.errors import CommandError
from backupd.redact import redact

log = structlog.get_logger("backupd.proc")

STDERR_TAIL_LINES = 40
_children: set[subprocess.Popen[bytes]] = set()
_children_lock = threading.Lock()


_MINIMAL_KEEP = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR")


def minimal_env() -> dict[str, str]:
    """What a psql fed with backup contents needs of our environment: PATH, HOME (for ~/.pgpass),
    the locale, TZ, TMPDIR and the operator's PG* settings; nothing else (no cloud keys, no
    BACKUPD_* secrets, no credentials directory)."""
    return {k: v for k, v in os.environ.items()
            if k in _MINIMAL_KEEP or k.startswith(("LC_", "PG"))}


def child_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: `base` (default: ours) plus `extra` (where secrets such as
    PGPASSWORD go)."""
    env = dict(os.environ if base is None else base)
    if extra:
        env.update(extra)
    return env


class _StderrCollector(threading.Thread):
    """Drains a child's stderr (so it never blocks), keeps the tail, optionally relays each line."""

    def __init__(self, stream: IO[bytes], relay: Callable[[str], None] | None) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.relay = relay
        self.lines: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = redact(raw.decode("utf-8", "replace").rstrip())
            if line:
                self.lines.append(line)
                if self.relay:
                    self.relay(line)
        self.stream.close()

    @property
    def tail(self) -> str:
        return "\n".join(self.lines)


class Process:
    """A running child whose stdout (and optionally stdin) the caller streams.

    Use through `spawn`; `finish()` waits and raises CommandError on a non-zero exit.
    """

    def __init__(self, popen: subprocess.Popen[bytes], collector: _StderrCollector, name: str) -> None:
        self.popen = popen
        self.collector = collector
        self.name = name

    @property
    def stdout(self) -> IO[bytes]:
        assert self.popen.stdout is not None
        return self.popen.stdout

    @property
    def stdin(self) -> IO[bytes]:
        assert self.popen.stdin is not None
        return self.popen.stdin

    def finish(self, timeout: float | None = None, hint: str | None = None) -> None:
        """Wait for the child; raise CommandError with the stderr tail when it failed."""
        if self.popen.stdin and not self.popen.stdin.closed:
            try:
                self.popen.stdin.close()
            except BrokenPipeError:
                pass
        try:
            returncode = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise CommandError(self.name, -1, f"timed out after {timeout:.0f}s", hint) from None
        self.collector.join(timeout=5)
        if returncode != 0:
            raise CommandError(self.name, returncode, self.collector.tail, hint)

    def kill(self) -> None:
        """Stop the child at once (SIGTERM, then SIGKILL after 3 s) and reap it."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@contextmanager
def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    cwd: str | Path | None = None,
    relay: Callable[[str], None] | None = None,
    base_env: Mapping[str, str] | None = None,
) -> Iterator[Process]:
    """Start `argv` and yield it; on any exception inside the block the child is killed. The
    child's environment is `base_env` (default: ours) plus `env`."""
    args = [os.fspath(a) for a in argv]
    name = Path(args[0]).name
    log.debug("command_started", argv=redact(" ".join(args)))
    try:
        popen = subprocess.Popen(
            args, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=child_env(env, base_env), cwd=cwd
        )
    except FileNotFoundError:
        raise CommandError(name, 127, f"{args[0]}: command not found") from None
    except PermissionError:
        raise CommandError(name, 126, f"{args[0]}: permission denied") from None
    assert popen.stderr is not None
    collector = _StderrCollector(popen.stderr, relay)
    collector.start()
    process = Process(popen, collector, name)
    with _children_lock:
        _children.add(popen)
    try:
        yield process
    except BaseException:
        process.kill()
        raise
    finally:
        with _children_lock:
            _children.discard(popen)
        for stream in (popen.stdout, popen.stdin):
            if stream and not stream.closed:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = 600,
    hint: str | None = None,
    base_env: Mapping[str, str] | None = None,
) -> bytes:
    """Run to completion and return stdout; raise CommandError (with the stderr tail) on failure."""
    with spawn(
        argv, env=env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL, cwd=cwd,
        base_env=base_env,
    ) as process:
        out_chunks: list[bytes] = []

        def read_stdout() -> None:
            out_chunks.append(process.stdout.read())

        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()
        if input is not None:
            try:
                process.stdin.write(input)
            except BrokenPipeError:
                pass
            process.stdin.close()
        reader.join(timeout)
        process.finish(timeout=timeout, hint=hint)
        return b"".join(out_chunks)


def terminate_all() -> None:
    """Terminate every child still running (used when a run is abandoned on SIGTERM)."""
    with _children_lock:
        children = list(_children)
    for popen in children:
        if popen.poll() is None:
            try:
                popen.terminate()
            except ProcessLookupError:
                pass
