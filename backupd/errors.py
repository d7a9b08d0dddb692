"""The error kinds backupd raises; each maps to one exit code and prints as one line."""

from __future__ import annotations

import re


class BackupdError(Exception):
    """An error an operator can act on: a one-line message plus an optional hint.

    `exit_code` is what the CLI exits with when this error ends a command.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        from backupd.redact import redact

        text = self.message if not self.hint else f"{self.message} (hint: {self.hint})"
        return redact(text)


class ConfigError(BackupdError):
    """The configuration is invalid; `problems` holds one line per problem, each naming its key path."""

    exit_code = 2

    def __init__(self, problems: list[str], hint: str | None = None) -> None:
        super().__init__("; ".join(problems), hint)
        self.problems = problems


class UsageError(BackupdError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = 2


# closing lines that say nothing of the cause (git's after ssh's reason; its hints)
_GENERIC_LINE = re.compile(
    r"^(fatal: Could not read from remote repository\.?$|Please make sure you have the correct access rights"
    r"|and the repository exists\.?$|fatal: the remote end hung up unexpectedly|error: failed to push some refs"
    r"|hint: )",
    re.IGNORECASE,
)


class CommandError(BackupdError):
    """A subprocess (pg_dump, psql, gpg, git, rclone, ...) failed; the message carries its stderr tail."""

    def __init__(self, argv0: str, returncode: int, stderr_tail: str, hint: str | None = None) -> None:
        lines = [line.strip() for line in stderr_tail.strip().splitlines() if line.strip()]
        # the last line saying what went wrong, not the detail/hint/"Query was:" lines after it, nor
        # a generic closing line when one before it says why (ssh's reason before git's "fatal:")
        specific = [line for line in lines if not _GENERIC_LINE.match(line)]
        errors = [line for line in specific if re.search(r"\b(error|fatal|panic)\b", line, re.IGNORECASE)]
        if not errors and len(specific) < len(lines):
            errors = specific
        detail = (errors or lines or ["no error output"])[-1]
        super().__init__(f"{argv0} exited with code {returncode}: {detail}", hint)
        self.argv0 = argv0
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.detail = detail


class SourceError(BackupdError):
    """The database could not be read (unreachable, auth, version, connection lost)."""


class DestinationError(BackupdError):
    """A destination refused or failed an operation. `transient` errors are worth retrying."""

    def __init__(self, message: str, hint: str | None = None, *, transient: bool = False) -> None:
        super().__init__(message, hint)
        self.transient = transient


class NotFound(DestinationError):
    """An object or backup does not exist at the destination."""


class IntegrityError(BackupdError):
    """A backup is incomplete, corrupt, truncated, tampered with, or of an unknown format."""


class StorageFull(BackupdError):
    """A write failed because a filesystem is full or not writable."""


class LockHeld(BackupdError):
    """Another backupd run holds the lock on the state directory."""

    exit_code = 4


class Abandoned(BackupdError):
    """The run was stopped by a signal (SIGTERM/SIGINT) before it finished."""
