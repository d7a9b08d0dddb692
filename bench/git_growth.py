"""Benchmark: how a git destination grows over daily backups with a few rows changed a day.

    .venv/bin/python bench/git_growth.py [--tasks 10000] [--days 30] [--change 0.01]

Starts a throwaway PostgreSQL, loads the Jarvis fixture (`tests/fixtures/gen_data.py --tasks N`),
then for each day: updates --change of the rows of `tasks` and of `comments` (a new description /
body suffix and updated_at, rows picked pseudo-randomly per day) and runs `backupd backup` with
one git destination that pushes to a local bare remote. After each backup it measures the
working repository's `.git` and the bare remote (bytes on disk, `du -sb`), and prints a Markdown
table to paste into docs/performance.md, beside the size of one plain export.json and of the
same backup's zstd artifacts on a local destination.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backupd.localpg import LocalPostgres


def du(path: Path) -> int:
    """Bytes on disk under a folder (du -sb)."""
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--change", type=float, default=0.01)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="backupd-gitbench-"))
    server = LocalPostgres()
    server.start()
    try:
        dsn = server.create_database("jarvis")
        subprocess.run([sys.executable, str(REPO / "tests/fixtures/gen_data.py"), "--dsn", dsn, "--tasks",
                        str(args.tasks), "--schema", str(REPO / "tests/fixtures/jarvis_schema.sql")],
                       check=True, capture_output=True)
        config = work / "backupd.toml"
        config.write_text(f'''
[source]
dsn = "{dsn}"
[state]
dir = "{work / 'state'}"
[[destinations]]
name = "git"
type = "git"
path = "{work / 'repo'}"
remote = "{work / 'remote.git'}"
[[destinations]]
name = "local"
type = "local"
path = "{work / 'local'}"
''')
        config.chmod(0o600)
        rows: list[tuple[int, float, int, int, int]] = []
        for day in range(1, args.days + 1):
            if day > 1:
                for table, column in (("tasks", "description"), ("comments", "body")):
                    server.psql(
                        f"UPDATE {table} SET {column} = coalesce({column}, '') || ' (edited day {day})', "
                        f"updated_at = updated_at + interval '1 day' WHERE id IN (SELECT id FROM {table} "
                        f"ORDER BY md5(id::text || '{day}') LIMIT (SELECT ceil(count(*) * {args.change}) "
                        f"FROM {table}))", "jarvis")
            began = time.monotonic()
            result = subprocess.run([sys.executable, "-m", "backupd", "--config", str(config), "-q", "backup"], check=False,
                                    capture_output=True, text=True)
            seconds = time.monotonic() - began
            if result.returncode != 0:
                sys.stderr.write(result.stderr[-3000:])
                raise SystemExit(1)
            local_bytes = du(work / "local")
            rows.append((day, seconds, du(work / "repo" / ".git"), du(work / "remote.git"), local_bytes))
            print(f"day {day:>2}: {seconds:5.1f} s, repo .git {rows[-1][2] / 2**20:6.1f} MiB, "
                  f"remote {rows[-1][3] / 2**20:6.1f} MiB, local (zstd, every backup kept) "
                  f"{local_bytes / 2**20:6.1f} MiB", flush=True)
        listing = json.loads(subprocess.run(
            [sys.executable, "-m", "backupd", "--config", str(config), "-q", "list", "--from", "git", "--json"],
            capture_output=True, text=True, check=True).stdout)
        export_bytes = next(a for a in json.loads(
            subprocess.run(["git", "-C", str(work / "repo"), "show", "HEAD:manifest.json"], capture_output=True,
                           text=True, check=True).stdout)["artifacts"] if a["name"] == "export.json")["bytes"]
        print()
        print(f"{len(listing)} backups listed from git; one plain export.json is {export_bytes / 2**20:.1f} MiB")
        print()
        print("| day | backup s | repo .git MiB | bare remote MiB | local zstd MiB (all kept) |")
        print("|---:|---:|---:|---:|---:|")
        for day, seconds, repo, remote, local in rows:
            if day in (1, 2, 5, 10, 20, args.days):
                print(f"| {day} | {seconds:.1f} | {repo / 2**20:.1f} | {remote / 2**20:.1f} | {local / 2**20:.1f} |")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
