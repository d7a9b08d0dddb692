"""dump.tool = "supabase": the SQL `supabase db dump` makes, without Docker.

`supabase db dump` runs pg_dump inside a Docker container. With `--dry-run` the Supabase CLI
prints instead the bash pipeline it would run: which pg_dump (or pg_dumpall) flags, which
internal schemas and tables it leaves out, and the sed filters that make the dump restorable on
Supabase. backupd asks the CLI for that pipeline (given a placeholder password: the real one
never reaches the CLI), parses it into an argv and a list of filters, and runs it itself: the
pg_dump backupd picked, on the backup's snapshot (`--snapshot`), the password in PGPASSWORD,
the sed filters applied in Python as the output streams into the artifact. No bash, no script on
disk. Three dumps: `schema.sql` (the CLI's default), `data.sql` (`--data-only --use-copy`) and
`roles.sql` (`--role-only`, through pg_dumpall).
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

import structlog
from psycopg.conninfo import conninfo_to_dict

from backupd import proc
from backupd.catalog import Table
from backupd.config import DumpConfig, SourceConfig
from backupd.db import split_dsn
from backupd.errors import CommandError, SourceError
from backupd.manifest import ArtifactEntry
from backupd.pgtools import PgTool, pick
from backupd.pipeline import ArtifactWriter
from backupd.snapshot import Snapshot
from backupd.sources import ArtifactSink, SourceReport
from backupd.sources.pg_dump import PgDumpSource, _hint_for, _pattern

log = structlog.get_logger("backupd.dump")

CLI_VERSION = "2.117.0"
PLACEHOLDER_PASSWORD = "backupd-placeholder-password"
CLI_ENV = {
    # the CLI reports usage to PostHog unless told not to; a backup daemon never phones home
    "SUPABASE_TELEMETRY_DISABLED": "1",
    "DO_NOT_TRACK": "1",
    "SUPABASE_NO_UPDATE_NOTIFIER": "1",
}
DUMP_KINDS: dict[str, list[str]] = {
    "schema": [],
    "data": ["--data-only", "--use-copy"],
    "roles": ["--role-only"],
}


def install_hint(state_dir: Path) -> str:
    """How to install the pinned Supabase CLI where backupd looks for it."""
    return (f"install it with `npm i -E --prefix {state_dir / 'supabase-cli'} supabase@{CLI_VERSION}` "
            "or set dump.supabase_cli to its path")


def find_cli(dump: DumpConfig, state_dir: Path) -> str:
    """The Supabase CLI to ask: dump.supabase_cli, else `<state.dir>/supabase-cli`, else PATH.

    Raises SourceError, with the command that installs it, when there is none.
    """
    if dump.supabase_cli:
        configured = Path(dump.supabase_cli)
        if configured.is_dir():
            configured = configured / "node_modules" / ".bin" / "supabase"
        if not configured.exists():
            raise SourceError(f"dump.supabase_cli: {configured} does not exist", install_hint(state_dir))
        return str(configured)
    installed = state_dir / "supabase-cli" / "node_modules" / ".bin" / "supabase"
    if installed.exists():
        return str(installed)
    on_path = shutil.which("supabase")
    if on_path:
        return on_path
    raise SourceError("dump.tool = \"supabase\" needs the Supabase CLI, which is not installed",
                      install_hint(state_dir))


# ---------------------------------------------------------------------------------------------
# sed, the part of it the dry-run scripts use


_POSIX_CLASSES = {
    "[:alpha:]": "a-zA-Z", "[:digit:]": "0-9", "[:alnum:]": "a-zA-Z0-9", "[:space:]": r"\s",
    "[:upper:]": "A-Z", "[:lower:]": "a-z", "[:blank:]": r" \t", "[:punct:]": r"!-/:-@\[-`{-~",
}


def _ere_to_python(ere: str) -> str:
    """A POSIX extended regular expression as Python `re` syntax (the subset sed -E scripts use)."""
    for posix, python in _POSIX_CLASSES.items():
        ere = ere.replace(posix, python)
    return ere


def _split_unescaped(text: str, delimiter: str) -> list[str]:
    parts, current, index = [], "", 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            following = text[index + 1]
            current += following if following == delimiter else char + following
            index += 2
            continue
        if char == delimiter:
            parts.append(current)
            current = ""
        else:
            current += char
        index += 1
    parts.append(current)
    return parts


def _literal_prefix(regex: str) -> bytes:
    """The literal bytes every match of an anchored regex starts with (a cheap pre-check)."""
    if not regex.startswith("^") or _has_top_level_alternation(regex):
        return b""
    prefix = ""
    index = 1
    while index < len(regex):
        char = regex[index]
        if char == "\\" and index + 1 < len(regex) and not regex[index + 1].isalnum():
            literal, step = regex[index + 1], 2
        elif char in ".^$|?*+()[]{}\\":
            break
        else:
            literal, step = char, 1
        if index + step < len(regex) and regex[index + step] in "?*{|":
            break
        prefix += literal
        index += step
    return prefix.encode()


def _has_top_level_alternation(regex: str) -> bool:
    depth, index = 0, 0
    while index < len(regex):
        char = regex[index]
        if char == "\\":
            index += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            return True
        index += 1
    return False


@dataclass(frozen=True)
class SedCommand:
    """One `sed -E` expression: `s/RE/REPLACEMENT/[g]`, `/RE/d`, or nothing (`sed -E ""`)."""

    expression: str
    pattern: re.Pattern[bytes] | None
    action: str  # "s", "d" or "" (no-op)
    replacement: tuple[bytes | int, ...] = ()
    every: bool = False
    prefix: bytes = b""

    @classmethod
    def parse(cls, expression: str) -> SedCommand:
        """Compile one sed expression; raises SourceError for what this subset does not cover."""
        text = expression.strip()
        if not text:
            return cls(expression, None, "")
        try:
            if text.startswith("s") and len(text) > 1:
                delimiter = text[1]
                parts = _split_unescaped(text[2:], delimiter)
                if len(parts) != 3 or parts[2] not in ("", "g"):
                    raise ValueError("expected s/RE/REPLACEMENT/ with no flag or g")
                regex, replacement, flags = parts
                return cls(expression, re.compile(_ere_to_python(regex).encode()), "s",
                           _replacement(replacement), flags == "g", _literal_prefix(regex))
            if text.startswith("/") and text.endswith("/d"):
                regex = _split_unescaped(text[1:-1], "/")[0]
                return cls(expression, re.compile(_ere_to_python(regex).encode()), "d",
                           prefix=_literal_prefix(regex))
            raise ValueError("only s/// and /RE/d are understood")
        except (ValueError, re.error) as exc:
            raise SourceError(f"cannot use the sed expression {expression[:120]!r} of the Supabase CLI: {exc}",
                              f"backupd understands the scripts of supabase {CLI_VERSION}") from None

    def apply(self, line: bytes) -> bytes | None:
        """The line after this command (no newline in or out); None when the line is deleted."""
        if self.pattern is None or (self.prefix and not line.startswith(self.prefix)):
            return line
        if self.action == "d":
            return None if self.pattern.search(line) else line
        return self.pattern.sub(self._substitute, line, count=0 if self.every else 1)

    def _substitute(self, match: re.Match[bytes]) -> bytes:
        return b"".join(match.group(part) or b"" if isinstance(part, int) else part
                        for part in self.replacement)


def _replacement(text: str) -> tuple[bytes | int, ...]:
    """sed's replacement: `&` is the match, `\\1`..`\\9` groups, `\\&` and `\\\\` literals."""
    parts: list[bytes | int] = []
    literal = ""
    index = 0
    while index < len(text):
        char = text[index]
        if char == "&":
            parts += [literal.encode(), 0]
            literal = ""
        elif char == "\\" and index + 1 < len(text):
            following = text[index + 1]
            index += 1
            if following.isdigit():
                parts += [literal.encode(), int(following)]
                literal = ""
            else:
                literal += "\n" if following == "n" else following
        else:
            literal += char
        index += 1
    parts.append(literal.encode())
    return tuple(p for p in parts if p != b"")


@dataclass(frozen=True)
class LineFilter:
    """The pipeline after pg_dump: sed commands in order, and `uniq` (drop a repeated line)."""

    stages: tuple[SedCommand | str, ...] = ()

    def run(self, lines: Iterable[bytes]) -> Iterator[bytes]:
        """Filtered lines (each with its newline) from raw lines."""
        if not self.stages:
            yield from lines
            return
        uniq_seen: dict[int, bytes | None] = {}
        for raw in lines:
            newline = raw.endswith(b"\n")
            line: bytes | None = raw[:-1] if newline else raw
            for position, stage in enumerate(self.stages):
                assert line is not None
                if isinstance(stage, SedCommand):
                    line = stage.apply(line)
                else:  # uniq
                    if uniq_seen.get(position) == line:
                        line = None
                    else:
                        uniq_seen[position] = line
                if line is None:
                    break
            if line is not None:
                yield line + b"\n" if newline else line


# ---------------------------------------------------------------------------------------------
# the dry-run script


@dataclass
class DumpPlan:
    """What one `supabase db dump --dry-run` script does, as data."""

    program: str  # "pg_dump" or "pg_dumpall"
    args: list[str]
    filter: LineFilter
    prologue: bytes = b""
    epilogue: bytes = b""
    password_seen: list[str] = field(default_factory=list)


_EXPORT = re.compile(r"^export (PG[A-Z]+)=(.*)$")


def parse_dry_run(script: str) -> DumpPlan:
    """Parse the bash script `supabase db dump --dry-run` prints; raises SourceError if it is not
    the shape backupd knows (another CLI version may print something else)."""
    lines = script.splitlines()
    program = ""
    args: list[str] = []
    stages: list[SedCommand | str] = []
    prologue: list[bytes] = []
    epilogue: list[bytes] = []
    passwords: list[str] = []
    index = 0

    def unexpected(line: str) -> SourceError:
        return SourceError(f"unexpected line in the Supabase CLI's dry-run script: {line.strip()[:100]!r}",
                           f"backupd understands the scripts of supabase {CLI_VERSION}; install that version")

    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        index += 1
        if not stripped or stripped.startswith("#") or stripped == "set -euo pipefail":
            continue
        export = _EXPORT.match(stripped)
        if export:
            if export.group(1) == "PGPASSWORD":
                passwords.append(shlex.split(export.group(2))[0] if export.group(2) else "")
            continue  # backupd connects with its own DSN
        if stripped.startswith("echo "):
            text = stripped
            while True:
                try:
                    words = shlex.split(text)
                    break
                except ValueError:
                    if index >= len(lines):
                        raise unexpected(stripped) from None
                    text += "\n" + lines[index]
                    index += 1
            output = (" ".join(words[1:]) + "\n").encode()
            (epilogue if program else prologue).append(output)
            continue
        first = stripped.split()[0]
        if first in ("pg_dump", "pg_dumpall") and not program:
            program = first
            block = [stripped]
            while block[-1].endswith("\\") and index < len(lines):
                block.append(lines[index].strip())
                index += 1
            command_words: list[str] = []
            for part in block:
                body = part[:-1] if part.endswith("\\") else part
                if body.lstrip().startswith("|"):
                    stage = shlex.split(body.lstrip()[1:])
                    if stage == ["uniq"]:
                        stages.append("uniq")
                    elif len(stage) == 3 and stage[:2] == ["sed", "-E"]:
                        stages.append(SedCommand.parse(stage[2]))
                    else:
                        raise unexpected(part)
                elif stages:
                    raise unexpected(part)
                else:
                    # pg_dump patterns may hold an unquoted '|' (`--schema=a|b`): to pg_dump it is
                    # an alternation, so it stays inside the word here
                    command_words += shlex.split(body)
            args = command_words[1:]
            continue
        raise unexpected(line)
    if not program:
        raise SourceError("the Supabase CLI's dry-run printed no pg_dump command",
                          f"backupd understands the scripts of supabase {CLI_VERSION}")
    return DumpPlan(program, args, LineFilter(tuple(stages)), b"".join(prologue), b"".join(epilogue), passwords)


def dry_run_url(dsn: str) -> str:
    """The DSN as the percent-encoded URL the CLI wants, with a placeholder for the password."""
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "localhost").split(",")[0]
    if host.startswith("/"):
        host = "localhost"  # a unix socket folder: the CLI only prints it, backupd connects itself
    port = str(params.get("port") or "5432").split(",")[0]
    user = quote(str(params.get("user") or "postgres"), safe="")
    database = quote(str(params.get("dbname") or "postgres"), safe="")
    return f"postgresql://{user}:{PLACEHOLDER_PASSWORD}@{host}:{port}/{database}"


# ---------------------------------------------------------------------------------------------
# the source


class SupabaseCliSource(PgDumpSource):
    """schema.sql, data.sql and roles.sql as `supabase db dump` makes them, from the shared snapshot."""

    name: ClassVar[str] = "supabase"

    def __init__(self, source: SourceConfig, dump: DumpConfig, tables: list[Table], state_dir: Path) -> None:
        super().__init__(source, dump, tables)
        self.state_dir = state_dir
        self.cli = ""
        self.dumpall: PgTool | None = None

    def pick_tool(self, snapshot: Snapshot) -> PgTool:
        """pg_dump (and pg_dumpall, for roles) fitting the server, and the CLI: checked before dumping."""
        tool = super().pick_tool(snapshot)
        if self.dumpall is None:
            configured = ""
            if self.dump.pg_dump:
                sibling = Path(self.dump.pg_dump).with_name("pg_dumpall")
                configured = str(sibling) if sibling.exists() else ""
            self.dumpall = pick("pg_dumpall", snapshot.info.server_version_num // 10000,
                                snapshot.info.server_version, configured)
        if not self.cli:
            self.cli = find_cli(self.dump, self.state_dir)
        return tool

    def plan(self, kind: str) -> DumpPlan:
        """Ask the CLI for the pipeline of one dump kind (schema, data, roles)."""
        argv = [self.cli, "db", "dump", "--dry-run", "--db-url", dry_run_url(self.source.dsn.get_secret_value()),
                *DUMP_KINDS[kind]]
        if self.dump.schemas and kind != "roles":
            argv += ["--schema", ",".join(self.dump.schemas)]
        work = self.state_dir / "supabase-cli" / "work"
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {**CLI_ENV, "SUPABASE_HOME": str(self.state_dir / "supabase-cli" / "home")}
        try:
            script = proc.run(argv, env=env, cwd=work, timeout=120).decode("utf-8", "replace")
        except CommandError as exc:
            if exc.returncode in (126, 127):
                raise SourceError(f"cannot run the Supabase CLI at {self.cli}: {exc}",
                                  install_hint(self.state_dir)) from None
            raise
        plan = parse_dry_run(script)
        if plan.password_seen and plan.password_seen != [PLACEHOLDER_PASSWORD]:
            raise SourceError("the Supabase CLI's dry-run script carries an unexpected password")
        return plan

    def _argv(self, plan: DumpPlan, snapshot: Snapshot, kind: str) -> tuple[list[str], dict[str, str]]:
        conninfo, env = split_dsn(self.source.dsn.get_secret_value())
        if plan.program == "pg_dumpall":
            assert self.dumpall is not None
            database = str(conninfo_to_dict(conninfo).get("dbname") or "postgres")
            return [self.dumpall.path, *plan.args, "--dbname", conninfo, "-l", database, "--no-password"], env
        tool = self.pick_tool(snapshot)
        argv = [tool.path, *plan.args, "--dbname", conninfo, "--no-password", "--snapshot", snapshot.id]
        argv += self.selection_args(snapshot, data=kind == "data", schemas=False)
        return argv, env

    def produce(self, snapshot: Snapshot, sink: ArtifactSink) -> SourceReport:
        """Write schema.sql, data.sql and roles.sql; raises CommandError with pg_dump's stderr tail."""
        self.pick_tool(snapshot)
        plans = {kind: self.plan(kind) for kind in DUMP_KINDS}
        log.info("dump_started", tool="supabase", pg_dump=self.tool.version if self.tool else "")
        report = SourceReport()
        for kind, base_name in (("schema", "schema.sql"), ("data", "data.sql"), ("roles", "roles.sql")):
            plan = plans[kind]
            argv, env = self._argv(plan, snapshot, kind)
            writer = sink.open(base_name, kind)
            partial = [t for t in self.tables if t.excluded_columns] if kind == "data" else []
            extra: Callable[[ArtifactWriter], None] | None = None
            if partial:
                def extra(out: ArtifactWriter, partial: list[Table] = partial) -> None:
                    self._write_partial_tables(snapshot, partial, out)
            report.artifacts.append(self._run_plan(plan, argv, env, writer, extra))
        log.info("dump_finished", artifacts=[a.name for a in report.artifacts])
        return report

    def _run_plan(self, plan: DumpPlan, argv: list[str], env: dict[str, str], writer: ArtifactWriter,
                  before_epilogue: Callable[[ArtifactWriter], None] | None) -> ArtifactEntry:
        try:
            writer.write(plan.prologue)
            with proc.spawn(argv, env=env) as dump:
                for line in plan.filter.run(dump.stdout):
                    writer.write(line)
                dump.finish(hint=_hint_for(dump.collector.tail))
            if before_epilogue is not None:
                before_epilogue(writer)
            writer.write(plan.epilogue)
        except BaseException:
            writer.abort()
            raise
        return writer.close()
