"""Progress of a long command on a terminal: `backup`, `verify`, `diff`, `export`, `restore`.

The code that does the work reports through `current()` (what it is doing, each table or artifact
done, bytes moved); by default that reporter does nothing. A command wraps its work in
`on_terminal(...)`, which installs a rich display only when stderr is a terminal and the log
format is `console` (so never under journald, in a pipe or with `--log-format json`). It stays
cheap: the display is touched once per table and at most once per MiB, never per row.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO, cast

import structlog

from backupd.log import resolve_format

MIB = 1 << 20


class Reporter:
    """Receives progress; this base ignores it (not a terminal, or nothing is watching)."""

    def stage(self, text: str) -> None:
        """What is being done now (`exporting tasks`, `checking data.sql.zst`)."""

    def done(self, name: str, rows: int = 0) -> None:
        """One table (or artifact) finished, with its rows."""

    def transferred(self, count: int) -> None:
        """`count` more bytes written or read."""

    def note(self, text: str) -> None:
        """A line to keep above the live display (on a terminal only)."""


_current = Reporter()


def current() -> Reporter:
    """The reporter of this process's command (a do-nothing one unless `on_terminal` is active)."""
    return _current


def wanted(log_format: str, stream: Any = None) -> bool:
    """True when a live display belongs on `stream` (stderr): a terminal, with console logs."""
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty()) and resolve_format(log_format, stream) == "console"
    except (AttributeError, ValueError):
        return False


class TerminalReporter(Reporter):
    """A rich progress line: the current stage, items done (of how many), rows, bytes,
    throughput, elapsed time; notes printed above it."""

    def __init__(self, what: str, unit: str = "tables", total: int | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            FileSizeColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TransferSpeedColumn,
        )

        self.console = Console(stderr=True)
        self.total = total
        self.unit = unit
        self.items = 0
        self.rows = 0
        self._pending = 0
        self._lock = threading.Lock()
        self.display = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), TextColumn("{task.fields[counts]}"),
            FileSizeColumn(), TransferSpeedColumn(), TimeElapsedColumn(),
            console=self.console, transient=True, refresh_per_second=8)
        self.task = self.display.add_task(what, total=None, counts=self._counts())

    def _counts(self) -> str:
        of = f"/{self.total}" if self.total else ""
        return f"{self.items}{of} {self.unit}, {self.rows:,} rows"

    def start(self) -> None:
        self.display.start()

    def stop(self) -> None:
        with self._lock:
            self.display.update(self.task, advance=self._pending)
            self._pending = 0
        self.display.stop()

    def stage(self, text: str) -> None:
        self.display.update(self.task, description=text)

    def done(self, name: str, rows: int = 0) -> None:
        with self._lock:
            self.items += 1
            self.rows += rows
            self.display.update(self.task, counts=self._counts(), advance=self._pending)
            self._pending = 0

    def transferred(self, count: int) -> None:
        with self._lock:
            self._pending += count
            if self._pending < MIB:
                return
            pending, self._pending = self._pending, 0
        self.display.update(self.task, advance=pending)

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)


@contextmanager
def on_terminal(log_format: str, what: str, unit: str = "tables", total: int | None = None) -> Iterator[Reporter]:
    """Install a TerminalReporter for the block when `wanted(log_format)`; else yield the
    do-nothing reporter. Log lines written meanwhile go above the live line."""
    global _current
    if not wanted(log_format):
        yield _current
        return
    reporter = TerminalReporter(what, unit, total)
    previous = _current
    reporter.start()
    # structlog writes to the stream it was configured with; send it through rich's console so a
    # log line lands above the live display instead of through it
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _ConsoleFile(reporter))))
    _current = reporter
    try:
        yield reporter
    finally:
        _current = previous
        reporter.stop()
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))


class _ConsoleFile:
    """A text stream whose lines go to the live display's console."""

    def __init__(self, reporter: TerminalReporter) -> None:
        self.reporter = reporter

    def write(self, text: str) -> int:
        from rich.text import Text

        if text.strip():
            self.reporter.console.print(Text.from_ansi(text.rstrip("\n")), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True
