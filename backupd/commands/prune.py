"""`backupd prune [--dry-run]`: apply every destination's retention now."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from backupd import audit
from backupd.commands.common import config_from
from backupd.destinations import build
from backupd.errors import BackupdError
from backupd.manifest import now_utc
from backupd.retention import apply_retention
from backupd.signing import key_of


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("prune", parents=[common], help="apply each destination's retention")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from backupd.lock import RunLock

    config = config_from(args)
    failed = 0
    started = time.monotonic()
    outcomes: dict[str, dict[str, Any]] = {}
    with RunLock(config.state.dir):
        for dest_config in config.destinations:
            destination = build(dest_config)
            try:
                keep, removed = apply_retention(destination, dest_config.retention, now_utc(), args.dry_run,
                                                state_dir=config.state.dir, key=key_of(config))
            except BackupdError as exc:
                sys.stderr.write(f"backupd: error: {dest_config.name}: {exc}\n")
                failed += 1
                outcomes[dest_config.name] = {"ok": False, "error": str(exc)}
                continue
            outcomes[dest_config.name] = {"ok": True, "kept": len(keep), "removed": list(removed)}
            verb = "would remove" if args.dry_run else "removed"
            sys.stdout.write(f"{dest_config.name}: keep {len(keep)}, {verb} {len(removed)}\n")
            for backup_id, reasons in sorted(keep.items()):
                sys.stdout.write(f"  keep   {backup_id}  ({', '.join(reasons)})\n")
            for backup_id in removed:
                sys.stdout.write(f"  {'prune' if args.dry_run else 'pruned'}  {backup_id}\n")
    if not args.dry_run:  # a dry run changes nothing, so it leaves no audit row
        audit.record(
            config, "prune", outcome="failed" if failed else "success",
            counts={"removed": sum(len(o.get("removed", [])) for o in outcomes.values()),
                    "kept": sum(o.get("kept", 0) for o in outcomes.values())},
            duration_seconds=time.monotonic() - started, detail={"destinations": outcomes},
            error="; ".join(f"{n}: {o['error']}" for n, o in outcomes.items() if not o["ok"]) or None,
        )
    return 1 if failed else 0
