"""`backupd status [--json]`: health, last run, last success, next run, per destination."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from backupd.commands.common import config_from, human_bytes, print_json
from backupd.status import StatusStore, health


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("status", parents=[common], help="health of the backups (exit 0 only when healthy)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=handle)


def current_status(config: Any) -> dict[str, Any]:
    """status.json with health and age computed now."""
    status = StatusStore(config.state.dir).load()
    return {**status, **health(status, config.state.stale_after)}


def handle(args: argparse.Namespace) -> int:
    config = config_from(args)
    status = current_status(config)
    if args.json:
        print_json(status)
    else:
        out = sys.stdout
        out.write(f"health:        {status['health']}\n")
        last = status.get("last_run")
        if last:
            out.write(f"last run:      {last['id']} {last['outcome']} ({last.get('duration_seconds', 0):.1f}s, "
                      f"{last.get('rows', 0)} rows, {human_bytes(int(last.get('bytes', 0)))})\n")
            if last.get("error"):
                out.write(f"  error:       {last['error']}\n")
        success = status.get("last_success")
        age = status.get("age_hours")
        out.write(f"last success:  {success['id'] if success else 'never'}"
                  + (f" ({age:.1f}h ago)" if age is not None else "") + "\n")
        out.write(f"next run:      {status.get('next_run') or 'not scheduled (daemon not running)'}\n")
        for name, entry in (status.get("destinations") or {}).items():
            state = "ok" if not entry.get("last_error") else f"error: {entry['last_error']}"
            out.write(f"  {name:<12} last success {entry.get('last_success') or 'never'}; {state}\n")
        if status.get("last_drill"):
            drill = status["last_drill"]
            out.write(f"last drill:    {drill.get('id')} {drill.get('outcome')} ({drill.get('seconds', 0):.1f}s)\n")
    return 0 if status["health"] == "healthy" else 1
