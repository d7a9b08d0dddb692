"""Benchmark: one hybrid backup beside what an operator would otherwise run, on the same data.

    .venv/bin/python bench/backup_bench.py --tasks 100000 [--tasks 1000000] [--keep-data DIR]

For each scale it starts a throwaway PostgreSQL (the machine's server), loads the Jarvis fixture
(`tests/fixtures/gen_data.py --tasks N`), then times, one after the other on the same data:
  1. `pg_dump -Fc` to a file (the usual operator backup);
  2. `pg_dump -Fp` to a file (the plain-format floor for the SQL half);
  3. the JSON floor: `psql -c "COPY (SELECT row_to_json(t) FROM <table> t) TO STDOUT"` per table,
     output discarded;
  4. `backupd backup` with only the JSON export (dump disabled), zstd, local destination;
  5. `backupd backup`, the whole hybrid backup (dump + JSON, side by side, zstd), local destination.
Peak memory is backupd's own RSS (polled every 20 ms with psutil; pg_dump's is separate and listed).
Prints a Markdown table to paste into docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backupd import log  # noqa: E402
from backupd.localpg import LocalPostgres  # noqa: E402

log.configure("logfmt", -1)

TABLES = ["users", "projects", "labels", "tasks", "task_labels", "task_links", "task_dependencies",
          "comments", "attachments", "notifications", "documents", "logs"]


def timed(argv: list[str], env: dict[str, str] | None = None, stdout: int | None = subprocess.DEVNULL,
          poll_rss: bool = False) -> tuple[float, int]:
    """(seconds, peak RSS bytes of the process itself) of one command; raises on failure."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=stdout, stderr=subprocess.PIPE)
    peak = 0
    if poll_rss:
        handle = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                peak = max(peak, handle.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
    _, stderr = child.communicate()
    elapsed = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({child.returncode}): {stderr.decode()[-2000:]}")
    return elapsed, peak


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench(tasks: int, work: Path) -> dict[str, str]:
    server = LocalPostgres()
    server.start()
    try:
        dsn = server.create_database("jarvis")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "tests/fixtures/gen_data.py"), "--dsn", dsn, "--tasks", str(tasks),
                        "--schema", str(REPO / "tests/fixtures/jarvis_schema.sql")], check=True,
                       stdout=subprocess.DEVNULL)
        load_s = time.perf_counter() - t0
        rows = int(server.psql("SELECT sum(n_live_tup) FROM pg_stat_user_tables", "jarvis").strip() or 0)
        bin_dir = server.bin_dir
        env = {"PGPASSWORD": server.password}
        conn = ["-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-d", "jarvis"]
        out = work / "out"
        out.mkdir()
        fc_s, _ = timed([str(bin_dir / "pg_dump"), "-Fc", "-f", str(out / "dump.fc"), *conn], env)
        fc_bytes = (out / "dump.fc").stat().st_size
        (out / "dump.fc").unlink()
        fp_s, _ = timed([str(bin_dir / "pg_dump"), "-Fp", "-f", str(out / "dump.sql"), *conn], env)
        fp_bytes = (out / "dump.sql").stat().st_size
        (out / "dump.sql").unlink()
        floor_start = time.perf_counter()
        for table in TABLES:
            timed([str(bin_dir / "psql"), "-X", "-q", *conn, "-c",
                   f"COPY (SELECT row_to_json(t) FROM {table} t) TO STDOUT"], env)
        floor_s = time.perf_counter() - floor_start
        results = {}
        for label, dump_enabled in (("json", False), ("hybrid", True)):
            state = work / f"state-{label}"
            dest = work / f"backups-{label}"
            config = work / f"{label}.toml"
            config.write_text(f"""
[source]
dsn = "{dsn}"
[dump]
enabled = {"true" if dump_enabled else "false"}
[state]
dir = "{state}"
[[destinations]]
name = "local"
type = "local"
path = "{dest}"
""")
            config.chmod(0o600)
            seconds, peak = timed([sys.executable, "-m", "backupd", "-q", "--config", str(config), "backup"],
                                  poll_rss=True)
            results[label] = (seconds, peak, du(dest))
            shutil.rmtree(dest)
        json_s, json_rss, json_bytes = results["json"]
        hyb_s, hyb_rss, hyb_bytes = results["hybrid"]
        return {
            "tasks": f"{tasks:,}", "rows": f"{rows:,}", "load_s": f"{load_s:.0f}",
            "pg_dump -Fc": f"{fc_s:.1f} s ({fc_bytes / 1e6:.0f} MB)",
            "pg_dump -Fp": f"{fp_s:.1f} s ({fp_bytes / 1e6:.0f} MB)",
            "JSON floor (COPY row_to_json)": f"{floor_s:.1f} s",
            "backupd JSON half": f"{json_s:.1f} s ({json_bytes / 1e6:.0f} MB zstd), {json_s / floor_s:.2f}x floor, "
                                 f"peak RSS {json_rss / 2**20:.0f} MiB",
            "backupd hybrid backup": f"{hyb_s:.1f} s ({hyb_bytes / 1e6:.0f} MB zstd), {hyb_s / fc_s:.2f}x pg_dump -Fc, "
                                     f"peak RSS {hyb_rss / 2**20:.0f} MiB",
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, action="append", required=True)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"Python {platform.python_version()}")
    for tasks in args.tasks:
        work = Path(tempfile.mkdtemp(prefix="backupd-bench-", dir=args.workdir))
        try:
            result = bench(tasks, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print()
        for key, value in result.items():
            print(f"| {key} | {value} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
