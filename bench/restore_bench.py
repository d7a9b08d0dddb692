#!/usr/bin/env python3
"""Benchmark (not a test): JSON restore (`--strategy replace` into an empty schema) beside
`pg_restore -j 2` of a `pg_dump -Fc` of the same data.

    .venv/bin/python bench/restore_bench.py --tasks 100000

Starts its own throwaway PostgreSQL (the machine's server binaries), loads the Jarvis fixture
with `tests/fixtures/gen_data.py --tasks N`, takes one backupd backup (zstd) to a local folder,
then times, each into a fresh database on the same server:
  - `backupd restore latest --strategy replace --yes` into a database holding only the schema
    (wall time, peak RSS of the backupd process),
  - `pg_restore -j 2 --no-owner` of a `pg_dump -Fc` (wall time; the dump itself is not timed),
and checks that the JSON restore's per-table checksums equal the source's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backupd.localpg import LocalPostgres
from tests.conftest import table_checksums, write_config


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run argv; returns (wall seconds, peak RSS in MiB of that process tree's largest member)."""
    began = time.monotonic()
    child = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.monotonic() - began
    stderr = child.stderr.read().decode() if child.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed: {stderr[-2000:]}")
    return seconds, usage.ru_maxrss // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="backupd-restore-bench-"))
    server = LocalPostgres()
    server.start()
    try:
        bin_dir = server.bin_dir
        source = server.create_database("bench_src")
        began = time.monotonic()
        subprocess.run([sys.executable, str(REPO / "tests/fixtures/gen_data.py"), "--dsn", source, "--tasks",
                        str(args.tasks), "--schema", str(REPO / "tests/fixtures/jarvis_schema.sql")],
                       check=True, capture_output=True)
        rows = server.psql("SELECT sum(n_live_tup) FROM pg_stat_user_tables", "bench_src").strip()
        print(f"fixture --tasks {args.tasks}: loaded in {time.monotonic() - began:.0f}s (~{rows} rows)", flush=True)
        config = write_config(work / "backupd.toml", {
            "source": {"dsn": source}, "state": {"dir": str(work / "state")},
            "destinations": [{"name": "local", "type": "local", "path": str(work / "backups")}],
        })
        seconds, _ = timed([sys.executable, "-m", "backupd", "--config", str(config), "-q", "backup"])
        print(f"backupd backup: {seconds:.1f}s", flush=True)

        json_target = server.create_database("bench_json")
        subprocess.run(
            [str(bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", json_target,
             "-f", str(REPO / "tests/fixtures/jarvis_schema.sql")], check=True, capture_output=True)
        json_seconds, json_rss = timed([sys.executable, "-m", "backupd", "--config", str(config), "-q",
                                        "restore", "latest", "--target", json_target, "--strategy", "replace",
                                        "--yes"])
        print(f"backupd restore (JSON, replace, empty schema): {json_seconds:.1f}s, peak RSS {json_rss} MiB",
              flush=True)

        dump = work / "bench.dump"
        env = {"PGPASSWORD": server.password}
        conn = ["-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres"]
        dump_seconds, _ = timed([str(bin_dir / "pg_dump"), *conn, "-Fc", "-f", str(dump), "-d", "bench_src"], env)
        server.create_database("bench_pgr")
        pgr_seconds, pgr_rss = timed([str(bin_dir / "pg_restore"), *conn, "-j", "2", "--no-owner", "-d", "bench_pgr",
                                      str(dump)], env)
        print(f"pg_dump -Fc: {dump_seconds:.1f}s; pg_restore -j 2: {pgr_seconds:.1f}s, peak RSS {pgr_rss} MiB",
              flush=True)
        print(f"ratio JSON restore / pg_restore -j 2: {json_seconds / pgr_seconds:.2f}", flush=True)
        same = table_checksums(json_target) == table_checksums(source)
        print(f"JSON restore checksums equal the source: {same}", flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
