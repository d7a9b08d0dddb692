"""Logging: structlog, one event per line, to stderr.

Formats: `console` (a terminal), `logfmt` (files, pipes), `journal` (under systemd: logfmt with no
timestamp, journald adds its own, and the `<N>` syslog priority prefix so that
`journalctl -p err` works), `json` (one JSON object per line). Every event passes the redaction
step last-but-one, so no secret reaches any line.
"""

from __future__ import annotations

import logging
import os
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
