"""Logging: structlog, one event per line, to stderr.

Formats: `console` (a terminal), `logfmt` (files, pipes), `journal` (under systemd: logfmt with no
timestamp, journald adds its own, and the `<N>` syslog priority prefix so that
`journalctl -p err` works), `json` (one JSON object per line). Every event passes the redaction
step last-but-one, so no secret reaches any line.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections import deque
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from backupd.redact import redact, redact_obj

# sd-daemon(3) priority prefixes
_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _redact_event(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if isinstance(value, str):
            event[key] = redact(value)
        elif isinstance(value, (dict, list, tuple)):
            event[key] = redact_obj(value)
        elif isinstance(value, BaseException):
            event[key] = redact(str(value))
    return event


_TAIL: deque[tuple[str | None, str]] = deque(maxlen=400)


def _remember(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Keep the process's recent (already redacted) lines, for alerts that carry a log tail."""
    line = LogfmtRenderer(journal=False)(_logger, _name, dict(event))
    _TAIL.append((str(event["run_id"]) if event.get("run_id") else None, line))
    return event


def tail(run_id: str | None = None, lines: int = 60) -> list[str]:
    """The last `lines` log lines of this process (only those of `run_id` when given), redacted."""
    chosen = [line for rid, line in list(_TAIL) if run_id is None or rid == run_id]
    return chosen[-lines:]


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\\\n\t'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    return text


class LogfmtRenderer:
    """`level=info event=backup_finished run_id=... key=value`, optionally with journald's prefix."""

    def __init__(self, journal: bool) -> None:
        self.journal = journal

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
        level = str(event.pop("level", "info"))
        message = event.pop("event", "")
        timestamp = event.pop("timestamp", None)
        parts = []
        if timestamp and not self.journal:
            parts.append(f"ts={timestamp}")
        parts += [f"level={level}", f"event={_logfmt_value(message)}"]
        parts += [f"{k}={_logfmt_value(v)}" for k, v in event.items() if v is not None]
        line = " ".join(parts)
        if self.journal:
            line = f"<{_PRIORITY.get(level, 6)}>{line}"
        return line


def resolve_format(requested: str, stream: TextIO = sys.stderr) -> str:
    """`auto` becomes journal (JOURNAL_STREAM set), console (a terminal) or logfmt."""
    if requested != "auto":
        return requested
    if os.environ.get("JOURNAL_STREAM"):
        return "journal"
    if stream.isatty():
        return "console"
    return "logfmt"


_PREFIXED = re.compile(r"<[0-7]>")
_ERROR_LINE = re.compile(r"(backupd: (error|config error|internal error|usage)|usage: |Traceback )")


def plain_priority(line: str) -> int:
    """The syslog priority of a plain (non-log) stderr line: errors (`backupd: error: ...`, a
    usage message, a traceback) 3, warnings 4, hints and the rest 6."""
    if _ERROR_LINE.match(line):
        return 3
    if line.startswith("backupd: warning"):
        return 4
    return 6


class JournalLines:
    """A text stream that gives every line it passes the `<N>` priority prefix journald reads,
    unless the line already has one. `priority` is the default for the stream's lines; None
    picks it per line (`plain_priority`)."""

    def __init__(self, stream: TextIO, priority: int | None = None) -> None:
        self.stream = stream
        self.priority = priority
        self._pending = ""
        self._last = 6

    def _prefix(self, line: str) -> str:
        if not line or _PREFIXED.match(line):
            return line
        if self.priority is not None:
            return f"<{self.priority}>{line}"
        if not line[:1].isspace():  # an indented line continues the one before (a usage message)
            self._last = plain_priority(line)
        return f"<{self._last}>{line}"

    def write(self, text: str) -> int:
        """Write `text`; complete lines go out prefixed, a partial line waits for its end."""
        data = self._pending + text
        *lines, self._pending = data.split("\n")
        if lines:
            self.stream.write("".join(self._prefix(line) + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        """Flush the underlying stream (a partial line stays until its newline or close)."""
        self.stream.flush()

    def close_line(self) -> None:
        """Write out a last line that has no newline."""
        if self._pending:
            self.stream.write(self._prefix(self._pending) + "\n")
            self._pending = ""
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def journal_stream_of(stream: TextIO) -> bool:
    """True when `stream` is the journald stream systemd names in JOURNAL_STREAM (`dev:inode`)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return bool(expected) and expected == f"{info.st_dev}:{info.st_ino}"


def emit(stream: TextIO, line: str, priority: int) -> None:
    """Write one human line (a command's summary) with its journald priority when `stream` goes
    to the journal (prefixed by `prefix_plain_output`), as plain text otherwise."""
    if isinstance(stream, JournalLines):
        line = f"<{priority}>{line}"
    stream.write(line + "\n")


def prefix_plain_output() -> None:
    """Under journald (the `journal` log format), give every plain line on stderr its priority
    prefix, and on stdout too when stdout is itself the journal stream (JOURNAL_STREAM), so
    `journalctl -p` sees a command's error and summary lines at their level, not all at info."""
    if not isinstance(sys.stderr, JournalLines):
        sys.stderr = JournalLines(sys.stderr)
    if not isinstance(sys.stdout, JournalLines) and journal_stream_of(sys.stdout):
        sys.stdout = JournalLines(sys.stdout, priority=6)


def configure(fmt: str = "auto", verbosity: int = 0, stream: TextIO | None = None) -> str:
    """Set up structlog for the process; returns the format chosen."""
    stream = stream or sys.stderr
    chosen = resolve_format(fmt, stream)
    level = "debug" if verbosity > 0 else "warning" if verbosity < 0 else "info"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if chosen != "journal":
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    processors.append(structlog.processors.format_exc_info)
    processors.append(_redact_event)
    processors.append(_remember)
    if chosen == "json":
        processors.append(structlog.processors.JSONRenderer())
    elif chosen == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    else:
        processors.append(LogfmtRenderer(journal=chosen == "journal"))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    return chosen
