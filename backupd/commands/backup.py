"""`backupd backup [--full|--incremental] [--destination NAME]...`: one backup now."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from backupd.commands.common import config_from, human_bytes


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("backup", parents=[common], help="take one backup now")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--full", dest="kind", action="store_const", const="full", help="a full backup")
    kind.add_argument("--incremental", dest="kind", action="store_const", const="incremental",
                      help="an incremental (needs export.incremental)")
    parser.add_argument("--destination", action="append", metavar="NAME", help="only this destination (repeatable)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from backupd.runner import Runner

    config = config_from(args)
    if args.destination:
        for name in args.destination:
            config.destination(name)
    from backupd.incremental import check_request

    check_request(config, args.kind)
    result = Runner(config).run(trigger="manual", only=args.destination, kind=args.kind)
    if result.outcome == "failed":
        sys.stderr.write(f"backupd: error: backup {result.id} failed: {result.error}\n")
    else:
        manifest = result.manifest
        assert manifest is not None
        stored = ", ".join(n for n, r in result.destinations.items() if r["ok"])
        sys.stdout.write(
            f"backup {result.id} {result.outcome}: {manifest.kind}, {manifest.total_rows} rows, "
            f"{human_bytes(manifest.total_bytes)}, {result.duration_seconds:.1f}s -> {stored}\n"
        )
        for name, r in result.destinations.items():
            if not r["ok"]:
                sys.stderr.write(f"backupd: error: destination {name} failed: {r['error']}\n")
    return result.exit_code
