"""Benchmark: an incremental backup against a full one, and `backupd diff` of two fulls in bounded memory.

    .venv/bin/python bench/incremental_bench.py --tasks 100000 [--changed 0.01]

Starts a throwaway PostgreSQL, loads the Jarvis fixture (`tests/fixtures/gen_data.py --tasks N`),
then with `export.incremental = true`, a local destination and zstd:
  1. `backupd backup --full` (dump + JSON + key sets), and the same with the dump disabled;
  2. changes 1% of tasks (updates), deletes 0.1% of tasks (with their comments, labels, ...);
  3. `backupd backup --incremental` (the SQL dump stays full), and the same with the dump disabled;
  4. `backupd backup --full` again, then `backupd diff FULL_1 FULL_2` with its peak RSS polled
     every 20 ms (psutil), and `diff FULL_1 INCREMENTAL` (the chain resolved).
Prints a Markdown table to paste into docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backupd.localpg import LocalPostgres


def timed(argv: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS of the process, stdout) of one command; raises on failure."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    handle = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, handle.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    stdout, stderr = child.communicate()
    elapsed = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} failed ({child.returncode}): {stderr.decode()[-2000:]}")
    return elapsed, peak, stdout.decode()


def write_config(path: Path, dsn: str, work: Path, dump: bool, name: str) -> Path:
    path.write_text(f"""
[source]
dsn = "{dsn}"
[dump]
enabled = {"true" if dump else "false"}
[export]
incremental = true
full_every = "7d"
[state]
dir = "{work / ("state-" + name)}"
[[destinations]]
name = "local"
type = "local"
path = "{work / ("backups-" + name)}"
""")
    path.chmod(0o600)
    return path


def cli(config: Path, *args: str) -> tuple[float, int, str]:
    return timed([sys.executable, "-m", "backupd", "--config", str(config), "-q", *args])


def latest(config: Path) -> dict[str, object]:
    listed = json.loads(cli(config, "list", "--json")[2])
    return dict(listed[-1])


def bench(tasks: int, changed: float, work: Path) -> list[tuple[str, str]]:
    server = LocalPostgres()
    server.start()
    try:
        dsn = server.create_database("jarvis")
        subprocess.run([sys.executable, str(REPO / "tests/fixtures/gen_data.py"), "--dsn", dsn, "--tasks", str(tasks),
                        "--schema", str(REPO / "tests/fixtures/jarvis_schema.sql")], check=True,
                       stdout=subprocess.DEVNULL)
        rows = int(server.psql("SELECT sum(n_live_tup) FROM pg_stat_user_tables", "jarvis").strip() or 0)
        hybrid = write_config(work / "hybrid.toml", dsn, work, True, "hybrid")
        json_only = write_config(work / "json.toml", dsn, work, False, "json")
        results: list[tuple[str, str]] = [("rows in the database", f"{rows:,}")]
        full_s, full_rss, _ = cli(hybrid, "backup", "--full")
        full_json_s, _, _ = cli(json_only, "backup", "--full")
        first_full = str(latest(hybrid)["id"])
        full_bytes = int(str(latest(hybrid)["bytes"]))
        full_json_bytes = int(str(latest(json_only)["bytes"]))
        updates = int(tasks * changed)
        deletes = max(1, tasks // 1000)
        server.psql(f"UPDATE tasks SET title = left(title, 400) || ' (edited)' WHERE id IN "
                    f"(SELECT id FROM tasks ORDER BY md5(id::text) LIMIT {updates})", "jarvis")
        # the fixture leaves some cascading foreign keys without an index: every cascaded delete
        # would then scan the child table (hours at 1M tasks); index them as an operator would
        server.psql("CREATE INDEX ON comments (parent_comment_id); CREATE INDEX ON attachments (comment_id); "
                    "CREATE INDEX ON notifications (task_id)", "jarvis")
        server.psql(f"DELETE FROM tasks WHERE id IN (SELECT id FROM tasks t WHERE NOT EXISTS (SELECT 1 FROM tasks s "
                    f"WHERE s.parent_task_id = t.id) ORDER BY md5(id::text || 'x') LIMIT {deletes})", "jarvis")
        inc_s, inc_rss, _ = cli(hybrid, "backup", "--incremental")
        inc_json_s, _, _ = cli(json_only, "backup", "--incremental")
        incremental = latest(hybrid)
        inc_json_bytes = int(str(latest(json_only)["bytes"]))
        assert incremental["kind"] == "incremental", incremental
        cli(hybrid, "backup", "--full")
        second_full = str(latest(hybrid)["id"])
        diff_s, diff_rss, diff_out = cli(hybrid, "diff", first_full, second_full)
        chain_s, chain_rss, _ = cli(hybrid, "diff", first_full, str(incremental["id"]))
        tasks_line = next(line for line in diff_out.splitlines() if line.startswith("tasks "))
        results += [
            ("changes", f"{updates:,} tasks updated, {deletes:,} deleted (with their cascades)"),
            ("full backup (dump + JSON + key sets)", f"{full_s:.1f} s, backupd RSS {full_rss / 2**20:.0f} MB"),
            ("incremental backup (dump stays full)", (f"{inc_s:.1f} s ({inc_s / full_s:.0%} of the full), "
                                                      f"RSS {inc_rss / 2**20:.0f} MB")),
            ("full, JSON half only", f"{full_json_s:.1f} s"),
            ("incremental, JSON half only", f"{inc_json_s:.1f} s ({inc_json_s / full_json_s:.0%} of the full)"),
            ("stored size, full -> incremental", (f"{full_bytes / 2**20:.1f} MB -> "
                                                  f"{int(str(incremental['bytes'])) / 2**20:.1f} MB")),
            ("stored size, JSON half only", f"{full_json_bytes / 2**20:.1f} MB -> {inc_json_bytes / 2**20:.1f} MB"),
            ("diff of two fulls", (f"{diff_s:.1f} s, peak RSS {diff_rss / 2**20:.0f} MB; tasks added/removed/changed "
                                   f"{'/'.join(tasks_line.split()[1:])}")),
            ("diff full -> incremental (chain)", f"{chain_s:.1f} s, peak RSS {chain_rss / 2**20:.0f} MB"),
        ]
        return results
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100000)
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of tasks updated")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="backupd-incbench-"))
    os.chmod(work, 0o755)
    try:
        results = bench(args.tasks, args.changed, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n### Incrementals and diff, --tasks {args.tasks} ({platform.node()}, {os.cpu_count()} cores)\n")
    print("| what | measured |\n|---|---|")
    for name, value in results:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
