"""A git repository of plain, row-sorted table files: one commit per backup (contract section 4).

Each commit holds `schema.sql` (plain pg_dump --schema-only), `manifest.json`,
`export-header.json` (the export's header fields and table order) and `tables/<table>.json`: one
JSON array per table, one row per line, rows sorted by primary key, each row exactly the text
PostgreSQL rendered at backup time (never re-serialised: `12.50` stays `12.50`). Stable, plain,
ordered text is what lets `git log -p` show row-level changes and git's delta compression keep
the repository small. Sorting is an external merge sort: memory stays bounded whatever the table.

git keeps no `data.sql` and no CSV/SQLite artifacts (the row files are the data); a SQL restore
from git is therefore schema-only, a JSON restore is complete. The manifest stored in the commit
describes what git can give back: `schema.sql` and `export.json` (compression none), where
`export.json` is the JSON v2.0 document re-assembled from the commit's table files; its sha256
and size are computed when the commit is made, so `open(id, "export.json")` streams a document
that verifies like any other artifact.

Commits are built with plumbing (hash-object, a private index, write-tree, commit-tree) and
published by one compare-and-swap `update-ref`: a killed run leaves no commit, so nothing
half-published is ever listed. When `remote` is set the branch is pushed after every commit; a
failed push takes the local commit back, so the backup is stored everywhere or nowhere. The
remote URL reaches git through `GIT_CONFIG_*` environment variables, never argv or a file; an
ssh remote is reached with the GIT_SSH_COMMAND that gitremote.py builds (deploy key in a private
temp file, pinned host key, BatchMode), and a failed push or `doctor` check keeps the line that
says why (gitremote.diagnose).
Removing a backup (retention) rewrites the later commits onto the removed one's parent (each
commit is a whole snapshot, so trees are reused as they are) and force-pushes with a lease.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import quote

import structlog

from backupd import proc
from backupd.checksum import canonical_json
from backupd.config import GitDestinationConfig
from backupd.destinations.base import StagedBackup, destination_os_error
from backupd.destinations.gitremote import diagnose, is_ssh_remote, ssh_environment, ssh_target
from backupd.errors import CommandError, DestinationError, IntegrityError, NotFound
from backupd.lines import MAX_LINE_BYTES, bounded_lines, line_too_long
from backupd.manifest import MANIFEST_NAME, ArtifactEntry, Manifest
from backupd.pipeline import open_decoded
from backupd.sources.json_export import JsonDocumentWriter

log = structlog.get_logger("backupd.git")

SCHEMA_NAME = "schema.sql"
EXPORT_NAME = "export.json"
HEADER_NAME = "export-header.json"
REMOTE_NAME = "backupd"
SORT_RUN_BYTES = 64 << 20
_SUBJECT = re.compile(r"^backupd backup (\d{8}T\d{6}Z)\b")
_SAFE_TABLE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ZERO = "0" * 40


# -- the export document, read back as events ------------------------------------------------

def read_export(stream: BinaryIO) -> Iterator[tuple[str, Any]]:
    """Events of a JSON v2.0 document laid out by JsonDocumentWriter (one row per line):
    ("header", dict), ("table", key), ("row", bytes), ("trailer", dict). Raises IntegrityError."""
    lines = bounded_lines(stream, "export.json")
    first = next(lines, b"").rstrip(b"\n")
    try:
        header = json.loads(first[:-1] + b"}") if first.endswith(b",") else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or next(lines, b"").strip() != b'"data": {':
        raise IntegrityError("export.json is not laid out one row per line as backupd writes it")
    yield "header", header
    decoder = json.JSONDecoder()
    in_table = False
    for raw in lines:
        line = raw.rstrip(b"\n")
        if in_table:
            if line in (b"]", b"],"):
                in_table = False
                continue
            yield "row", line[:-1] if line.endswith(b",") else line
            continue
        if line in (b"}", b"},"):
            rest = stream.read(MAX_LINE_BYTES + 1)
            if len(rest) > MAX_LINE_BYTES:
                raise line_too_long("export.json")
            try:
                trailer = json.loads(b"{" + rest)
                if "exactValues" in trailer:
                    # checksummed as written: their numbers stay Decimal
                    trailer["exactValues"] = json.loads(b"{" + rest, parse_float=Decimal)["exactValues"]
            except json.JSONDecodeError as exc:
                raise IntegrityError(f"export.json ends badly: {exc}") from None
            yield "trailer", trailer
            return
        text = line.decode("utf-8")
        key, end = decoder.raw_decode(text)
        tail = text[end:].strip()
        yield "table", key
        if tail == ": [":
            in_table = True
        elif tail not in (": []", ": [],"):
            raise IntegrityError(f"export.json: unexpected line after table {key!r}")
    raise IntegrityError("export.json is truncated")


def _sort_value(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, (int, Decimal)):
        return (2, value)
    if isinstance(value, str):
        return (3, value)
    return (4, json.dumps(value, sort_keys=True, default=str))


def row_sort_key(primary_key: list[str]) -> Any:
    """A key function ordering row lines by their primary key (the whole line when there is none)."""
    if not primary_key:
        return lambda line: ((5, line),)

    def key(line: bytes) -> tuple[tuple[int, Any], ...]:
        row = json.loads(line, parse_float=Decimal)
        return tuple(_sort_value(row.get(column)) for column in primary_key)

    return key


class SortedTableWriter:
    """Collects a table's row lines and writes them sorted into one file (external merge sort)."""

    def __init__(self, folder: Path, primary_key: list[str]) -> None:
        self.folder = folder
        self.key = row_sort_key(primary_key)
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        self.runs: list[Path] = []

    def add(self, line: bytes) -> None:
        """One row (its JSON text, no newline)."""
        self.batch.append(line)
        self.batch_bytes += len(line) + 64
        if self.batch_bytes >= SORT_RUN_BYTES:
            self._spill()

    def _spill(self) -> None:
        self.batch.sort(key=self.key)
        run = self.folder / f"run-{len(self.runs)}"
        with open(run, "wb") as out:
            out.writelines(line + b"\n" for line in self.batch)
        self.runs.append(run)
        self.batch, self.batch_bytes = [], 0

    def write(self, path: Path) -> None:
        """Write `[`, the rows sorted, one a line, `]`."""
        if self.runs:
            self._spill()
            files = [open(run, "rb") for run in self.runs]  # noqa: SIM115 - closed below
            try:
                rows: Iterable[bytes] = heapq.merge(*((line.rstrip(b"\n") for line in f) for f in files),
                                                    key=self.key)
                _write_table_file(path, rows)
            finally:
                for f in files:
                    f.close()
                for run in self.runs:
                    run.unlink(missing_ok=True)
        else:
            self.batch.sort(key=self.key)
            _write_table_file(path, self.batch)
        self.batch, self.runs = [], []


def _write_table_file(path: Path, rows: Iterable[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        first = True
        for row in rows:
            out.write((b"[\n" if first else b",\n") + row)
            first = False
        out.write(b"[]\n" if first else b"\n]\n")


def table_rows(stream: IO[bytes], batch: int = 1000) -> Iterator[list[bytes]]:
    """Batches of row lines from a table file written by `_write_table_file`."""
    rows: list[bytes] = []
    for raw in stream:
        line = raw.rstrip(b"\n")
        if line in (b"[", b"]", b"[]", b""):
            continue
        rows.append(line[:-1] if line.endswith(b",") else line)
        if len(rows) >= batch:
            yield rows
            rows = []
    if rows:
        yield rows


def table_file(key: str) -> str:
    """Path of a table's file in the commit."""
    name = key if _SAFE_TABLE.match(key) else quote(key, safe="")
    return f"tables/{name}.json"


def assemble_export(out: IO[bytes], header: dict[str, Any], open_table: Any) -> None:
    """Write the JSON v2.0 document from the header file's fields and each table's row file."""
    exported_at = datetime.fromisoformat(str(header["exportedAt"]).replace("Z", "+00:00"))
    writer = JsonDocumentWriter(out, list(header["tables"]), exported_at,
                                bool(header.get("incremental")), header.get("since"))
    for key in header["tables"]:
        with open_table(table_file(key)) as stream:
            writer.table(key, table_rows(stream))
    for key, entries in json.loads(header.get("exactValues") or "{}", parse_float=Decimal).items():
        writer.exact_values(key, entries)
    writer.finish(header.get("deleted") or {})


class _HashingSink:
    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return len(data)


class _ProcessStream:
    """A git child's stdout as a context-managed stream (for `git cat-file blob`)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self._stack = ExitStack()
        self.process = self._stack.enter_context(proc.spawn(argv, env=env))

    def __enter__(self) -> IO[bytes]:
        return self.process.stdout

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None:
                self.process.finish(timeout=600)
            else:
                self.process.kill()
        finally:
            self._stack.close()


class _ChildReader(io.RawIOBase):
    """A readable stream over a git child's stdout; closing it stops the child."""

    def __init__(self, stream: _ProcessStream) -> None:
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.process.stdout.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._stream.__exit__(ValueError)
            finally:
                super().close()


# -- the destination ---------------------------------------------------------------------------

class GitDestination:
    """Backups as commits on `branch` of the repository at `path`, pushed to `remote` when set."""

    def __init__(self, config: GitDestinationConfig) -> None:
        self.name = config.name
        self.config = config
        self.path = config.path
        self.branch = config.branch
        self.ref = f"refs/heads/{config.branch}"
        self.remote = config.remote.get_secret_value() if config.remote else None

    # -- git plumbing

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        identity = f"backupd@{socket.gethostname()}"
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_AUTHOR_NAME": "backupd", "GIT_AUTHOR_EMAIL": identity,
               "GIT_COMMITTER_NAME": "backupd", "GIT_COMMITTER_EMAIL": identity, "LC_ALL": "C"}
        if self.remote:
            env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"remote.{REMOTE_NAME}.url",
                        "GIT_CONFIG_VALUE_0": self.remote})
        env.update(extra or {})
        return env

    def _git(self, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
             timeout: float = 600) -> str:
        try:
            out = proc.run(["git", "-C", str(self.path), *args], input=input, env=self._env(env), timeout=timeout)
        except CommandError as exc:
            raise DestinationError(f"git {args[0]} in {self.path} failed: {exc}") from None
        return out.decode("utf-8", "replace").strip()

    def _ensure_repo(self) -> None:
        if (self.path / ".git").is_dir():
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise DestinationError(f"cannot create {self.path}: {exc.strerror or exc}") from None
        self._git("init", "-q", "-b", self.branch)
        for key, value in (("gc.autoPackLimit", "4"), ("core.compression", "6"),
                           ("pack.windowMemory", "256m"), ("gc.reflogExpire", "now"),
                           ("gc.reflogExpireUnreachable", "now")):
            self._git("config", key, value)
        if self.remote and _is_local_path(self.remote) and not Path(self.remote).exists():
            try:
                proc.run(["git", "init", "-q", "--bare", "-b", self.branch, self.remote], env=self._env())
            except CommandError as exc:
                raise DestinationError(f"cannot create the bare remote {self.remote}: {exc}") from None
            log.info("git_remote_created", remote=self.remote)

    def _tip(self) -> str | None:
        if not (self.path / ".git").is_dir():
            return None
        try:
            out = proc.run(["git", "-C", str(self.path), "rev-parse", "--verify", "-q", self.ref + "^{commit}"],
                           env=self._env())
        except CommandError:
            return None
        return out.decode().strip() or None

    def _commits(self) -> list[tuple[str, str]]:
        """(commit, backup id) on the branch, oldest first."""
        if self._tip() is None:
            return []
        out = self._git("log", "--format=%H %s", "--reverse", self.ref)
        found = []
        for line in out.splitlines():
            commit, _, subject = line.partition(" ")
            match = _SUBJECT.match(subject)
            if match:
                found.append((commit, match.group(1)))
        return found

    def _commit_of(self, backup_id: str) -> str:
        for commit, identifier in self._commits():
            if identifier == backup_id:
                return commit
        raise NotFound(f"{self.name}: no backup {backup_id} on branch {self.branch}")

    def _blob(self, spec: str) -> bytes:
        try:
            return proc.run(["git", "-C", str(self.path), "cat-file", "blob", spec], env=self._env())
        except CommandError:
            raise NotFound(f"{self.name}: {spec} not found") from None

    def _open_blob(self, spec: str) -> _ProcessStream:
        return _ProcessStream(["git", "-C", str(self.path), "cat-file", "blob", spec], self._env())

    def _remote_git(self, *args: str, timeout: float) -> bytes:
        """Run a git command that talks to the remote (over ssh with the key and pinned host key)."""
        with ssh_environment(self.config, self.remote) as ssh:
            return proc.run(["git", "-C", str(self.path), *args], env=self._env(ssh), timeout=timeout)

    def _push(self, lease: str | None = None) -> None:
        if not self.remote:
            return
        args = ["push", "-q"]  # not --porcelain: it moves the "[remote rejected] (why)" lines off stderr
        if lease is not None:
            args.append(f"--force-with-lease={self.ref}:{lease}")
        args += [REMOTE_NAME, f"{self.ref}:{self.ref}"]
        try:
            self._remote_git(*args, timeout=self.config.timeout.total_seconds())
        except CommandError as exc:
            problem = diagnose(exc, self.config, self.remote, self.branch)
            raise DestinationError(f"git push to {REMOTE_NAME} ({self.branch}) failed: {problem.reason}",
                                   problem.hint, transient=problem.transient) from None

    # -- Destination

    def store(self, backup: StagedBackup) -> None:
        manifest = backup.manifest
        if manifest.kind != "full":
            raise DestinationError(f"{self.name}: git keeps full backups only ({manifest.id} is {manifest.kind})",
                                   "set export.incremental = false, or send incrementals to another destination")
        if any(a.encryption != "none" for a in manifest.artifacts):
            raise DestinationError(f"{self.name}: git keeps plain text only; this backup is encrypted")
        self._ensure_repo()
        try:
            work = Path(tempfile.mkdtemp(prefix="backupd-", dir=self.path / ".git"))
        except OSError as exc:
            raise destination_os_error(exc, "write", self.path / ".git") from None
        try:
            files, artifacts = self._build_tree_files(backup, work)
            stored = manifest.model_copy(update={"artifacts": artifacts})
            (work / "tree" / MANIFEST_NAME).write_bytes(backup.manifest_bytes(stored))
            files.append(MANIFEST_NAME)
            parent = self._tip()
            commit = self._commit(work, files, parent, f"backupd backup {manifest.id} ({manifest.kind})\n\n"
                                  f"{manifest.total_rows} rows in {len(manifest.tables)} tables; "
                                  f"snapshot {manifest.snapshot}; backupd {manifest.backupd}\n")
            self._git("update-ref", "-m", f"backupd {manifest.id}", self.ref, commit, parent or _ZERO)
        except OSError as exc:  # the working files (a full or read-only disk): the destination's failure
            raise destination_os_error(exc) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        try:
            self._push()
        except DestinationError:
            # the backup must be stored everywhere or nowhere: take the local commit back
            self._git("update-ref", "-m", "backupd: push failed", self.ref, parent or _ZERO, commit) \
                if parent else self._git("update-ref", "-d", self.ref, commit)
            raise
        self._sync_worktree()
        self._maintain()
        log.info("git_committed", commit=commit[:12], backup_id=manifest.id)

    def _build_tree_files(self, backup: StagedBackup, work: Path) -> tuple[list[str], list[ArtifactEntry]]:
        tree = work / "tree"
        tree.mkdir()
        files: list[str] = []
        artifacts: list[ArtifactEntry] = []
        manifest = backup.manifest
        schema = manifest.artifact_for("schema")
        if schema is not None:
            sink = _HashingSink()
            with open(backup.folder / schema.name, "rb") as raw, \
                    open_decoded(raw, schema, f"staging/{schema.name}") as plain, \
                    open(tree / SCHEMA_NAME, "wb") as out:
                while chunk := plain.read(1 << 20):
                    out.write(chunk)
                    sink.write(chunk)
            files.append(SCHEMA_NAME)
            artifacts.append(ArtifactEntry(name=SCHEMA_NAME, bytes=sink.bytes, sha256=sink.sha256.hexdigest(),
                                           compression="none", content="schema"))
        export = manifest.artifact_for("export")
        if export is not None:
            header = self._split_tables(backup, export, tree, work)
            (tree / HEADER_NAME).write_text(json.dumps(header, indent=2, ensure_ascii=False) + "\n")
            files.append(HEADER_NAME)
            files.extend(table_file(key) for key in header["tables"])
            sink = _HashingSink()

            def open_local(name: str) -> IO[bytes]:
                return open(tree / name, "rb")

            assemble_export(sink, header, open_local)  # type: ignore[arg-type]
            artifacts.append(ArtifactEntry(name=EXPORT_NAME, bytes=sink.bytes, sha256=sink.sha256.hexdigest(),
                                           compression="none", content="export"))
        return files, artifacts

    def _split_tables(self, backup: StagedBackup, export: ArtifactEntry, tree: Path, work: Path) -> dict[str, Any]:
        manifest = backup.manifest
        header: dict[str, Any] = {}
        writer: SortedTableWriter | None = None
        current = ""
        runs = work / "runs"
        runs.mkdir()

        def close_table() -> None:
            if writer is not None:
                writer.write(tree / table_file(current))

        with open(backup.folder / export.name, "rb") as raw, \
                open_decoded(raw, export, f"staging/{export.name}") as plain:
            for event, value in read_export(plain):
                if event == "row":
                    assert writer is not None
                    writer.add(value)
                elif event == "table":
                    close_table()
                    current = value
                    entry = manifest.tables.get(value)
                    writer = SortedTableWriter(runs, list(entry.primary_key) if entry else [])
                elif event == "header":
                    header = {k: value.get(k) for k in ("version", "exportedAt", "format", "incremental",
                                                        "since", "tables")}
                elif event == "trailer":
                    close_table()
                    writer = None
                    header["deleted"] = value.get("deleted") or {}
                    if value.get("exactValues"):
                        # kept as their JSON text: numbers exactly as written (see docs/restore.md)
                        header["exactValues"] = canonical_json(value["exactValues"])
        header["files"] = {key: table_file(key) for key in header.get("tables", [])}
        return header

    def _commit(self, work: Path, files: list[str], parent: str | None, message: str) -> str:
        env = {"GIT_INDEX_FILE": str(work / "index")}
        tree = work / "tree"
        shas = self._git("hash-object", "-w", "--no-filters", "--", *[str(tree / f) for f in files]).split()
        if len(shas) != len(files):
            raise DestinationError(f"git hash-object in {self.path} returned {len(shas)} ids for {len(files)} files")
        listing = "".join(f"100644 {sha}\t{name}\n" for sha, name in zip(shas, files, strict=True))
        self._git("update-index", "--add", "--index-info", input=listing.encode(), env=env)
        tree_id = self._git("write-tree", env=env)
        args = ["commit-tree", tree_id, "-F", "-"]
        if parent:
            args[2:2] = ["-p", parent]
        return self._git(*args, input=message.encode())

    def _sync_worktree(self) -> None:
        """Keep the working tree showing the newest backup when it is checked out on our branch."""
        try:
            head = self._git("symbolic-ref", "-q", "HEAD")
        except DestinationError:
            return
        if head == self.ref:
            self._git("reset", "-q", "--hard", self.ref)

    def _maintain(self) -> None:
        """Repack into one pack, so the new table files are stored as deltas of yesterday's
        (existing deltas are reused: only the new objects are searched). A local bare remote is
        repacked too: a push completes its thin pack with whole copies of the delta bases."""
        self._git("repack", "-a", "-d", "-q")
        self._git("prune-packed")
        if self.remote and _is_local_path(self.remote) and Path(self.remote).is_dir():
            try:
                proc.run(["git", "--git-dir", self.remote, "repack", "-a", "-d", "-q"], env=self._env())
            except CommandError as exc:
                log.warning("git_remote_repack_failed", error=str(exc))

    def backups(self) -> list[Manifest]:
        found = []
        for commit, backup_id in self._commits():
            try:
                found.append(Manifest.parse(self._blob(f"{commit}:{MANIFEST_NAME}"),
                                            f"{self.name}:{backup_id}/{MANIFEST_NAME}"))
            except (IntegrityError, NotFound) as exc:
                log.warning("manifest_unreadable", destination=self.name, backup_id=backup_id, error=str(exc))
        return found

    def manifest(self, backup_id: str) -> Manifest:
        commit = self._commit_of(backup_id)
        return Manifest.parse(self._blob(f"{commit}:{MANIFEST_NAME}"), f"{self.name}:{backup_id}/{MANIFEST_NAME}")

    def open(self, backup_id: str, artifact: str) -> BinaryIO:
        commit = self._commit_of(backup_id)
        where = f"{self.name}:{backup_id}/{artifact}"
        if artifact in (SCHEMA_NAME, MANIFEST_NAME, HEADER_NAME):
            self._blob_exists(f"{commit}:{artifact}")
            return io.BufferedReader(_ChildReader(self._open_blob(f"{commit}:{artifact}")), 1 << 20)
        if artifact != EXPORT_NAME:
            raise NotFound(f"{where}: git keeps only {SCHEMA_NAME} and {EXPORT_NAME} "
                           "(no data.sql: the table files are the data)")
        header = json.loads(self._blob(f"{commit}:{HEADER_NAME}"))
        read_fd, write_fd = os.pipe()

        def produce() -> None:
            try:
                with open(write_fd, "wb", buffering=1 << 20) as out:
                    assemble_export(out, header, lambda name: self._open_blob(f"{commit}:{name}"))
            except BrokenPipeError:
                pass  # the reader stopped early
            except Exception as exc:  # noqa: BLE001 - the reader sees a short stream and fails its check
                log.error("git_export_assembly_failed", backup_id=backup_id, error=str(exc))

        threading.Thread(target=produce, daemon=True, name=f"git-export-{backup_id}").start()
        return open(read_fd, "rb", buffering=1 << 20)

    def _blob_exists(self, spec: str) -> None:
        try:
            proc.run(["git", "-C", str(self.path), "cat-file", "-e", spec], env=self._env())
        except CommandError:
            raise NotFound(f"{self.name}: {spec} not found") from None

    def remove(self, backup_id: str) -> None:
        commits = self._commits()
        position = next((i for i, (_, identifier) in enumerate(commits) if identifier == backup_id), None)
        if position is None:
            return
        old_tip = self._tip()
        assert old_tip is not None
        all_commits = self._git("rev-list", "--reverse", self.ref).split()
        removed = commits[position][0]
        index = all_commits.index(removed)
        new_parent: str | None = all_commits[index - 1] if index > 0 else None
        for commit in all_commits[index + 1:]:
            fields = self._git("log", "-1", "--format=%T%x00%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI", commit)
            tree, an, ae, ad, cn, ce, cd = fields.split("\x00")
            message = proc.run(["git", "-C", str(self.path), "log", "-1", "--format=%B", commit], env=self._env())
            env = {"GIT_AUTHOR_NAME": an, "GIT_AUTHOR_EMAIL": ae, "GIT_AUTHOR_DATE": ad,
                   "GIT_COMMITTER_NAME": cn, "GIT_COMMITTER_EMAIL": ce, "GIT_COMMITTER_DATE": cd}
            args = ["commit-tree", tree, "-F", "-"]
            if new_parent:
                args[2:2] = ["-p", new_parent]
            new_parent = self._git(*args, input=message, env=env)
        if new_parent is None:
            self._git("update-ref", "-d", self.ref, old_tip)
        else:
            self._git("update-ref", "-m", f"backupd: remove {backup_id}", self.ref, new_parent, old_tip)
        try:
            self._push(lease=old_tip)
        except DestinationError:
            self._git("update-ref", "-m", "backupd: push failed", self.ref, old_tip)
            raise
        self._sync_worktree()
        # the removed snapshot's objects go now, not in 90 days
        self._git("reflog", "expire", "--expire=now", "--expire-unreachable=now", "--all")
        self._git("gc", "-q", "--prune=now")
        log.info("git_backup_removed", backup_id=backup_id)

    def sweep(self, keep: str | None = None) -> list[str]:
        """git publishes atomically (no incomplete backups); leftovers of a killed run are removed."""
        git_dir = self.path / ".git"
        if git_dir.is_dir():
            for leftover in git_dir.glob("backupd-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        return []

    def probe(self) -> str:
        """Write, read back and delete a probe blob; reach the remote when set. Returns a detail line."""
        self._ensure_repo()
        payload = f"backupd probe {os.getpid()}\n".encode()
        sha = self._git("hash-object", "-w", "--stdin", input=payload)
        if self._blob(sha) != payload:
            raise DestinationError(f"{self.name}: probe blob read back differs")
        loose = self.path / ".git" / "objects" / sha[:2] / sha[2:]
        loose.unlink(missing_ok=True)
        detail = f"repository {self.path} writable"
        if self.remote:
            detail += ", " + self.check_remote()
        return detail

    def check_remote(self) -> str:
        """Connect to the remote (`git ls-remote`) and return a detail line; raises DestinationError
        whose message says which of the host key, the authentication or the reach failed."""
        if not self.remote:
            return "no remote"
        ssh = is_ssh_remote(self.remote)
        try:
            out = self._remote_git("ls-remote", "-q", REMOTE_NAME, self.ref,
                                   timeout=min(60.0, self.config.timeout.total_seconds()))
        except CommandError as exc:
            problem = diagnose(exc, self.config, self.remote, self.branch)
            message = {"host-key": f"{self.name}: host key verification failed: {problem.reason}",
                       "auth": f"{self.name}: authentication refused: {problem.reason}",
                       "not-found": f"{self.name}: repository not found: {problem.reason}",
                       "tls": f"{self.name}: TLS certificate not trusted: {problem.reason}",
                       "unreachable": f"{self.name}: remote unreachable: {problem.reason}"}
            raise DestinationError(message.get(problem.kind, f"{self.name}: remote check failed: {problem.reason}"),
                                   problem.hint, transient=problem.transient) from None
        tip = out.decode("utf-8", "replace").split()
        parts = []
        if ssh:
            host, port = ssh_target(self.remote)
            pinned = "pinned" if (self.config.host_key or self.config.known_hosts_file) else "from ~/.ssh/known_hosts"
            parts += [f"ssh host key of {host}{':' + str(port) if port else ''} verified ({pinned})",
                      "key accepted" if self.config.ssh_key is not None else "login accepted"]
        else:
            parts.append("remote reachable")
        parts.append(f"{self.branch} at {tip[0][:12]}" if tip else f"{self.branch} not pushed yet")
        return ", ".join(parts)


def _is_local_path(remote: str) -> bool:
    """True for a plain filesystem path (not a URL, not scp-like `host:path`)."""
    return "://" not in remote and not re.match(r"^[^/]+:", remote)
