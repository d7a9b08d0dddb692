"""`backupd verify ID|latest [--from NAME] [--restore-test] [--gpg-homedir DIR] [--identity FILE] [--json]`.

Exit 0 when every artifact is whole (and the restore test, when asked, matched the manifest);
1 naming the artifact or table otherwise. The verdict is recorded (status, history, `list` flag).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from backupd import progress
from backupd.commands.common import add_trust_unsigned, config_from, human_bytes, print_json, trusted_destination_from


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("verify", parents=[common],
                            help="check a backup's artifacts (sha256, decoding, rows); optionally restore-test it")
    parser.add_argument("backup", metavar="ID|latest", help="backup id, or `latest`")
    parser.add_argument("--from", dest="source", metavar="NAME", help="destination (default: the first)")
    parser.add_argument("--restore-test", action="store_true",
                        help="restore into scratch databases and compare rows and checksums with the manifest")
    parser.add_argument("--gpg-homedir", type=Path, metavar="DIR", help="GPG home with the private keys")
    parser.add_argument("--identity", type=Path, action="append", default=[], metavar="FILE",
                        help="age identity file (repeatable)")
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    add_trust_unsigned(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from backupd.signing import resolve
    from backupd.verify import record_result, verify_backup

    config = config_from(args)
    if args.restore_test:
        from backupd.scratch import refusal

        problem = refusal(config)
        if problem is not None:
            raise problem  # up front, exit 2: plain verify still works
    destination = trusted_destination_from(config, args.source, trust_unsigned=args.trust_unsigned)
    manifest = resolve(destination, args.backup)
    decryptor = None
    if args.gpg_homedir or args.identity or any(a.encryption != "none" for a in manifest.artifacts):
        from backupd.crypto import build_decryptor

        decryptor = build_decryptor(args.gpg_homedir, list(args.identity))
    if not args.json:
        sys.stdout.write(f"verifying backup {manifest.id} ({manifest.kind}) at {destination.name}\n")
        sys.stdout.flush()
    with progress.on_terminal(args.log_format, f"verifying {manifest.id}", unit="artifacts",
                              total=len(manifest.artifacts)):
        report = verify_backup(config, destination, manifest, restore_test=args.restore_test, decryptor=decryptor)
    record_result(config, report)
    from backupd import audit

    audit.record(config, "verify", outcome="success" if report.ok else "failed", trigger=report.trigger,
                 backup_id=report.backup_id, counts={"artifacts": len(report.artifacts)},
                 duration_seconds=report.seconds, error=report.failure(),
                 detail={"destination": report.destination, "restore_test": report.restore_requested})
    if args.json:
        print_json(report.as_json())
    else:
        _print(report)
    failure = report.failure()
    if failure:
        sys.stderr.write(f"backupd: error: backup {report.backup_id} at {report.destination} failed "
                         f"verification: {failure}\n")
        return 1
    return 0


def _print(report: Any) -> None:
    out = sys.stdout
    width = max((len(a.name) for a in report.artifacts), default=10)
    for artifact in report.artifacts:
        verdict = "ok" if artifact.ok else "FAILED"
        text = artifact.detail if artifact.ok else artifact.error
        out.write(f"  {verdict:<6} {artifact.name:<{width}} {human_bytes(artifact.bytes):>10}  {text}\n")
    test = report.restore_test
    if test is not None:
        if test.error:
            out.write(f"  restore test: {'FAILED' if report.restore_requested else ''} {test.error}\n")
        else:
            out.write(f"  restore test on {test.server}:\n")
            for half in test.halves:
                label = "schema.sql + data.sql via psql" if half.name == "sql" else "schema.sql + JSON export"
                if half.ok and not half.tables_checked:
                    out.write(f"    ok     {half.name:<5} {label}: restored in {half.seconds:.1f}s "
                              "(the reference the JSON chain is compared with)\n")
                elif half.ok:
                    against = "the manifest" if report.kind == "full" else "the SQL dump"
                    out.write(f"    ok     {half.name:<5} {label}: restored in {half.seconds:.1f}s, "
                              f"{half.tables_checked} tables, {half.rows} rows match {against} "
                              "(rows and checksums)\n")
                else:
                    for error in half.errors:
                        out.write(f"    FAILED {half.name:<5} {label}: {error}\n")
            out.write(f"  restore time (RTO): {test.rto_seconds:.1f}s\n")
    if report.note:
        out.write(f"  note: {report.note}\n")
    out.write(f"backup {report.backup_id} at {report.destination}: verification {report.outcome} "
              f"({report.level}, {report.seconds:.1f}s)\n")
