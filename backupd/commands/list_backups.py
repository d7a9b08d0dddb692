"""`backupd list [--from NAME] [--json]`: the complete backups at a destination."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from backupd.commands.common import config_from, destination_from, human_age, human_bytes, print_json


# `list`'s SIGNATURE column (--json gives the state itself): valid, unsigned, INVALID, unchecked
# (signed, but no [security] signing_key to check it with), future (an id over a day ahead: never
# `latest`, never counted by retention)
_SIGNATURE_LABELS = {"valid": "valid", "unsigned": "unsigned", "invalid": "INVALID", "unchecked": "unchecked",
                     "future": "FUTURE"}


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("list", parents=[common], help="the backups at a destination")
    parser.add_argument("--from", dest="source", metavar="NAME", help="destination (default: the first)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    config = config_from(args)
    destination = destination_from(config, args.source)
    manifests = destination.backups()
    from backupd.signing import is_future, key_of, signature_state
    from backupd.verify import load_verify_records

    key = key_of(config)

    # the last verification of each backup (`backupd verify`, drills): True, False, or None (never)
    checked = load_verify_records(config.state.dir).get(destination.name, {})
    rows = [
        {"id": m.id, "kind": m.kind, "base": m.base, "bytes": m.total_bytes, "rows": m.total_rows,
         "age": human_age(m.id), "artifacts": [a.name for a in m.artifacts],
         "signature": "future" if is_future(m.id) else signature_state(m, key),
         "verified": checked.get(m.id, {}).get("verified"),
         "verify_error": checked.get(m.id, {}).get("error")}
        for m in manifests
    ]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        sys.stdout.write(f"no backups at {destination.name}\n")
        return 0
    sys.stdout.write(f"{'ID':<18} {'KIND':<12} {'SIZE':>10} {'ROWS':>10} {'AGE':>6}  {'SIGNATURE':<10} VERIFIED\n")
    for row in rows:
        flag = {True: "ok", False: "FAILED", None: "-"}[row["verified"]]
        sys.stdout.write(f"{row['id']:<18} {row['kind']:<12} {human_bytes(row['bytes']):>10} "
                         f"{row['rows']:>10} {row['age']:>6}  {_SIGNATURE_LABELS[row['signature']]:<10} {flag}\n")
    return 0
