"""status.json (replaced atomically after every run), history.jsonl (one line per run), health.

Health: `never` (no run yet), `failing` (the latest run failed, or the latest drill at any
destination failed), `stale` (last success older than stale_after), else `healthy`. `health()` is
the one place it is computed: `backupd status`, the metrics, the daemon and every write of
status.json (`health`, `age_hours`, `health_computed_at`) use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backupd import ownership
from backupd.errors import StorageFull
from backupd.manifest import iso
from backupd.redact import redact_obj

STATUS_NAME = "status.json"
HISTORY_NAME = "history.jsonl"
VERIFY_RECORDS_NAME = "verify.json"
# run triggers that are commands from a chat (not the schedule nor an operator's shell): their
# backups never push other backups out (backupd.retention)
COMMAND_TRIGGERS = frozenset({"telegram"})


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd`; raises OSError (ENOSPC...) if the disk takes only part.

    A single os.write on a nearly full disk writes what fits and returns the short count."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Temp file, fsync, rename, fsync the directory: readers see the old or the new file, never half."""
    temp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        ownership.adopt(temp)
        os.replace(temp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        try:
            temp.unlink(missing_ok=True)
        except OSError:
            pass
        raise StorageFull(f"cannot write {path}: {exc.strerror or exc}") from None


def parse_time(text: str | None) -> datetime | None:
    """A timestamp written by `iso`, or None."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class StatusStore:
    """Reads and writes the state dir's status and history. With `stale_after`, every save
    also writes the health computed at that moment (`health`, `age_hours`, `health_computed_at`)."""

    def __init__(self, state_dir: Path, stale_after: timedelta | None = None) -> None:
        self.dir = state_dir
        self.stale_after = stale_after

    @property
    def status_path(self) -> Path:
        return self.dir / STATUS_NAME

    @property
    def history_path(self) -> Path:
        return self.dir / HISTORY_NAME

    def load(self) -> dict[str, Any]:
        """The last written status, or {} (no run yet, or an unreadable file)."""
        try:
            data = json.loads(self.status_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, status: dict[str, Any]) -> None:
        """Replace status.json atomically (with its health, when the store knows stale_after)."""
        if self.stale_after is not None:
            status.update(health(status, self.stale_after))
        atomic_write(self.status_path, (json.dumps(redact_obj(status), indent=2) + "\n").encode())

    def append_history(self, record: dict[str, Any]) -> None:
        """Append one line to history.jsonl (fsynced)."""
        line = (json.dumps(redact_obj(record), separators=(",", ":")) + "\n").encode()
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.history_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            end = os.fstat(fd).st_size
            try:
                write_all(fd, line)
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, end)  # no half line may stay for the next run's line to run into
                raise
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageFull(f"cannot append to {self.history_path}: {exc.strerror or exc}") from None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold `<state.dir>/status.lock` around a read-modify-write of the state files (a backup
        and a verification may finish at the same moment)."""
        from backupd.lock import RunLock

        lock = RunLock(self.dir, "status.lock")
        lock.acquire(wait=True)
        try:
            yield
        finally:
            lock.release()

    def command_backups(self) -> set[str]:
        """Ids of the backups that runs triggered by a command (COMMAND_TRIGGERS) made."""
        found: set[str] = set()
        try:
            with self.history_path.open("rb") as history:
                for line in history:
                    if b'"trigger"' not in line:
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and record.get("event") == "backup" \
                            and record.get("trigger") in COMMAND_TRIGGERS and isinstance(record.get("id"), str):
                        found.add(record["id"])
        except OSError:
            pass
        return found

    def verified_backups(self, destination: str) -> set[str]:
        """Ids that passed their last verification at `destination` (verify.json)."""
        try:
            records = json.loads((self.dir / VERIFY_RECORDS_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return set()
        per_destination = records.get(destination) if isinstance(records, dict) else None
        if not isinstance(per_destination, dict):
            return set()
        return {k for k, v in per_destination.items() if isinstance(v, dict) and v.get("verified") is True}

    def record_run(self, run: dict[str, Any], next_run: datetime | None = None) -> dict[str, Any]:
        """Fold one finished run into status.json and history.jsonl; returns the new status."""
        with self.locked():
            return self._record_run(run, next_run)

    def record_drill(self, drill: dict[str, Any], destinations: list[str]) -> dict[str, Any]:
        """Fold one verification (`backupd verify`, a restore drill) into status.json (`last_drill`,
        `drills` per destination, for the configured `destinations`) and history.jsonl."""
        with self.locked():
            status = self.load()
            drills = {k: v for k, v in (status.get("drills") or {}).items() if k in destinations}
            drills[drill["destination"]] = drill
            status["drills"] = drills
            status["last_drill"] = drill
            self.append_history({"event": "verify", **drill})
            self.save(status)
            return status

    def mark_scheduled_drill(self, at: datetime) -> None:
        """Remember when the daemon last ran its scheduled drills (`[verify] schedule`)."""
        with self.locked():
            status = self.load()
            status["last_scheduled_drill"] = {"finished": iso(at)}
            self.save(status)

    def _record_run(self, run: dict[str, Any], next_run: datetime | None = None) -> dict[str, Any]:
        status = self.load()
        destinations: dict[str, Any] = dict(status.get("destinations", {}))
        for name, result in run.get("destinations", {}).items():
            entry = dict(destinations.get(name, {}))
            if result.get("ok"):
                entry["last_success"] = run["finished"]
                entry["last_error"] = None
                entry["consecutive_failures"] = 0
            else:
                entry["last_error"] = result.get("error")
                entry["last_error_at"] = run["finished"]
                entry["consecutive_failures"] = int(entry.get("consecutive_failures", 0)) + 1
            destinations[name] = entry
        status["last_run"] = run
        status["destinations"] = destinations
        if run["outcome"] in ("success", "partial"):
            status["last_success"] = {"id": run["id"], "finished": run["finished"], "outcome": run["outcome"]}
            status["consecutive_failures"] = 0
        else:
            status["consecutive_failures"] = int(status.get("consecutive_failures", 0)) + 1
        if next_run is not None:
            status["next_run"] = iso(next_run)
        self.append_history({"event": "backup", **run})
        self.save(status)
        return status

    def set_next_run(self, next_run: datetime | None) -> None:
        """Record when the daemon runs next."""
        status = self.load()
        status["next_run"] = iso(next_run) if next_run else None
        self.save(status)


def health(status: dict[str, Any], stale_after: timedelta, now: datetime | None = None) -> dict[str, Any]:
    """Health and age of a status: {'health', 'age_hours', 'health_computed_at'} (see module docstring)."""
    now = now or datetime.now(UTC)
    last_run = status.get("last_run")
    last_success = parse_time((status.get("last_success") or {}).get("finished"))
    age_hours = round((now - last_success).total_seconds() / 3600, 2) if last_success else None
    if not last_run:
        state = "never"
    elif last_run.get("outcome") == "failed" or (status.get("last_drill") or {}).get("outcome") == "failed" \
            or any((d or {}).get("outcome") == "failed" for d in (status.get("drills") or {}).values()):
        state = "failing"
    elif last_success is None or now - last_success > stale_after:
        state = "stale"
    else:
        state = "healthy"
    return {"health": state, "age_hours": age_hours, "health_computed_at": iso(now)}
