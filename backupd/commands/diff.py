"""`backupd diff ID_A ID_B [--from NAME] [--table T] [--json]`: rows added, removed and changed
per table between two backups (fulls or incrementals, each resolved to its state)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from backupd import progress
from backupd.commands.common import add_trust_unsigned, config_from, trusted_destination_from


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("diff", parents=[common], help="rows added, removed, changed between two backups")
    parser.add_argument("before", metavar="ID_A", help="a backup id (or latest)")
    parser.add_argument("after", metavar="ID_B", help="a backup id (or latest)")
    parser.add_argument("--from", dest="source", metavar="NAME", help="destination (default: the first)")
    parser.add_argument("--table", metavar="T", help="only this table, listing its keys and changed columns")
    parser.add_argument("--json", action="store_true", help="machine-readable output, keys included")
    add_trust_unsigned(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from backupd.diff import diff_backups

    config = config_from(args)
    destination = trusted_destination_from(config, args.source, trust_unsigned=args.trust_unsigned)
    with progress.on_terminal(args.log_format, "comparing"):
        result = diff_backups(destination, args.before, args.after, args.table, config.state.dir
                              if config.state.dir.exists() else None)
    out = sys.stdout
    try:
        if args.json:
            # streamed by hand: the key lists may be longer than memory
            out.write(json.dumps({"from": result.before, "to": result.after})[:-1] + ', "tables": {')
            for index, (table, diff) in enumerate(result.tables.items()):
                out.write(("," if index else "") + f"\n  {json.dumps(table)}: " + json.dumps(
                    {"added": diff.added, "removed": diff.removed, "changed": diff.changed})[:-1])
                for which in ("added", "removed", "changed"):
                    out.write(f', "{which}_keys": [')
                    for count, item in enumerate(diff.keys(which)):
                        out.write(("," if count else "") + json.dumps(item, ensure_ascii=False))
                    out.write("]")
                out.write("}")
            out.write("\n}}\n")
            return 0
        out.write(f"diff {result.before} -> {result.after}\n")
        out.write(f"{'TABLE':<24} {'ADDED':>9} {'REMOVED':>9} {'CHANGED':>9}\n")
        for table, diff in result.tables.items():
            out.write(f"{table:<24} {diff.added:>9} {diff.removed:>9} {diff.changed:>9}\n")
        if args.table:
            diff = result.tables[args.table]
            for item in diff.keys("added"):
                out.write(f"+ {json.dumps(item, ensure_ascii=False)}\n")
            for item in diff.keys("removed"):
                out.write(f"- {json.dumps(item, ensure_ascii=False)}\n")
            for item in diff.keys("changed"):
                out.write(f"~ {json.dumps(item['key'], ensure_ascii=False)}  {', '.join(item['columns'])}\n")
    finally:
        result.close()
    return 0
