"""Soak: the daemon (`backupd run`) with `every = "5s"` for a while, sampling its memory, open
file descriptors and threads; memory and fd counts must stay flat run after run.

A manual run, not part of `make test`:

    .venv/bin/python bench/soak.py --minutes 10 [--tasks 2000]

It starts its own throwaway PostgreSQL (loaded with the Jarvis fixture), a local destination with
`keep_last = 5`, and prints one line per minute plus a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backupd.localpg import LocalPostgres
from tests.conftest import GEN_DATA, SCHEMA_SQL, write_config


def sample(pid: int) -> dict[str, int]:
    """RSS (KiB), open fds and threads of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_kib": int(fields["VmRSS"].split()[0]), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(fields["Threads"].strip())}


def runs(state: Path) -> list[dict[str, Any]]:
    path = state / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--every", default="5s")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="backupd-soak-"))
    server = LocalPostgres()
    server.start()
    daemon = None
    try:
        dsn = server.create_database("jarvis")
        subprocess.run([sys.executable, str(GEN_DATA), "--dsn", dsn, "--tasks", str(args.tasks),
                        "--schema", str(SCHEMA_SQL)], check=True, capture_output=True)
        state = work / "state"
        config = write_config(work / "backupd.toml", {
            "source": {"dsn": dsn}, "schedule": {"every": args.every}, "state": {"dir": str(state)},
            "destinations": [{"name": "local", "type": "local", "path": str(work / "backups"),
                              "retention": {"keep_last": 5}}],
        })
        log = open(work / "daemon.log", "w")  # noqa: SIM115 - closed with the process
        daemon = subprocess.Popen([sys.executable, "-m", "backupd", "--config", str(config), "run"],
                                  stdout=subprocess.DEVNULL, stderr=log, cwd=REPO)
        started = time.monotonic()
        samples: list[dict[str, Any]] = []
        next_report = started + 60
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(1)
            if daemon.poll() is not None:
                raise SystemExit(f"the daemon exited with {daemon.returncode}; see {work}/daemon.log")
            point = {"t": round(time.monotonic() - started), **sample(daemon.pid), "runs": len(runs(state))}
            samples.append(point)
            if time.monotonic() >= next_report:
                print(json.dumps(point), flush=True)
                next_report += 60
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
        history = runs(state)
        warm = [s for s in samples if s["runs"] >= 3] or samples  # after the first runs have loaded everything
        summary = {
            "minutes": args.minutes, "every": args.every, "tasks": args.tasks, "exit": code,
            "runs": len(history), "succeeded": sum(1 for r in history if r.get("outcome") == "success"),
            "backups_kept": len([p for p in (work / "backups").iterdir() if p.is_dir()]),
            "rss_mib": {"first_warm": round(warm[0]["rss_kib"] / 1024, 1), "last": round(samples[-1]["rss_kib"] / 1024, 1),
                        "max": round(max(s["rss_kib"] for s in samples) / 1024, 1),
                        "min_warm": round(min(s["rss_kib"] for s in warm) / 1024, 1)},
            "fds": {"first_warm": warm[0]["fds"], "last": samples[-1]["fds"], "max": max(s["fds"] for s in samples)},
            "threads": {"first_warm": warm[0]["threads"], "last": samples[-1]["threads"],
                        "max": max(s["threads"] for s in samples)},
            "staging_left": len(list((state / "staging").iterdir())) if (state / "staging").exists() else 0,
        }
        print(json.dumps(summary, indent=1))
        return 0 if code == 0 and summary["succeeded"] == summary["runs"] else 1
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
