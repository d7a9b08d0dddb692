"""`backupd check-config`: validate the config and say so."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from backupd.commands.common import config_from


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("check-config", parents=[common], help="validate the config file")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    config = config_from(args)
    names = ", ".join(f"{d.name} ({d.type})" for d in config.destinations)
    sys.stdout.write(f"config ok: {len(config.destinations)} destination(s): {names}; "
                     f"{len(config.notifiers)} notifier(s)\n")
    return 0
