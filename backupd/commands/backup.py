"""`backupd backup [--full|--incremental] [--destination NAME]...`: one backup now."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from backupd import progress
from backupd.commands.common import config_from, human_bytes
from backupd.errors import Abandoned
from backupd.log import emit


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("backup", parents=[common], help="take one backup now")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--full", dest="kind", action="store_const", const="full", help="a full backup")
    kind.add_argument("--incremental", dest="kind", action="store_const", const="incremental",
                      help="an incremental (needs export.incremental)")
    parser.add_argument("--destination", action="append", metavar="NAME", help="only this destination (repeatable)")
    parser.set_defaults(handler=handle)


@contextmanager
def _abandon_on_signals() -> Iterator[None]:
    """SIGTERM/SIGINT abandon the run cleanly: Abandoned is raised in the main thread, the runner
    stops pg_dump and the other children, removes staging, and no manifest is written anywhere
    (a kill -9 leaves staging for the next run to remove, and still publishes nothing)."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        for each in (signal.SIGTERM, signal.SIGINT):
            signal.signal(each, signal.SIG_IGN)  # one Abandoned is enough; cleanup must not be cut short
        raise Abandoned(f"stopped by {signal.Signals(signum).name}: the backup was abandoned, nothing published")

    previous = {each: signal.signal(each, stop) for each in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)


def handle(args: argparse.Namespace) -> int:
    from backupd.runner import Runner

    config = config_from(args)
    if args.destination:
        for name in args.destination:
            config.destination(name)
    from backupd.incremental import check_request

    check_request(config, args.kind)
    with _abandon_on_signals(), progress.on_terminal(args.log_format, "backing up") as shown:
        phases = {"snapshot": "snapshot, exporting", "upload": "storing"}
        result = Runner(config, on_phase=lambda phase: shown.stage(phases.get(phase, phase))).run(
            trigger="manual", only=args.destination, kind=args.kind)
    if result.outcome == "failed":
        sys.stderr.write(f"backupd: error: backup {result.id} failed: {result.error}\n")
    else:
        manifest = result.manifest
        assert manifest is not None
        stored = ", ".join(n for n, r in result.destinations.items() if r["ok"])
        # journald: a stored backup is a notice, a partial one a warning
        emit(sys.stdout, f"backup {result.id} {result.outcome}: {manifest.kind}, {manifest.total_rows} rows, "
             f"{human_bytes(manifest.total_bytes)}, {result.duration_seconds:.1f}s -> {stored}",
             5 if result.outcome == "success" else 4)
        for name, r in result.destinations.items():
            if not r["ok"]:
                sys.stderr.write(f"backupd: error: destination {name} failed: {r['error']}\n")
    return result.exit_code
