"""Helpers shared by the subcommands: loading the config once, picking a destination, printing."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import structlog

from backupd import ownership
from backupd.config import Config, load_config
from backupd.destinations import build
from backupd.destinations.base import Destination
from backupd.manifest import id_time
from backupd.signing import Trust, TrustedDestination


def config_from(args: Any) -> Config:
    """The validated config named by --config/$BACKUPD_CONFIG; warnings are logged."""
    warnings: list[str] = []
    config = load_config(args.config, warn=warnings)
    for warning in warnings:
        structlog.get_logger("backupd.config").warning("config_insecure", detail=warning)
    ownership.keep_owner_on_exit(config.state.dir)
    return config


def destination_from(config: Config, name: str | None) -> Destination:
    """`--from NAME`, or the first configured destination."""
    chosen = config.destination(name) if name else config.destinations[0]
    return build(chosen)


def trusted_destination_from(config: Config, name: str | None, *, trust_unsigned: bool = False
                             ) -> TrustedDestination:
    """`--from NAME` (or the first destination) as readers see it: every manifest checked
    (backupd.signing) before anything of its backup is read."""
    return TrustedDestination(destination_from(config, name), Trust.of(config, trust_unsigned=trust_unsigned))


def add_trust_unsigned(parser: Any) -> None:
    """The `--trust-unsigned` option of every command that reads a backup."""
    parser.add_argument("--trust-unsigned", action="store_true",
                        help="read a backup whose manifest is unsigned or does not verify with [security] "
                             "signing_key, or is unencrypted under a config that encrypts (a warning is logged)")


def print_json(data: Any) -> None:
    """Pretty JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def human_bytes(count: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def human_age(backup_id: str, now: datetime | None = None) -> str:
    """How long ago a backup id was taken: '3h', '2d'."""
    seconds = ((now or datetime.now(UTC)) - id_time(backup_id)).total_seconds()
    if seconds < 120:
        return f"{int(seconds)}s"
    if seconds < 7200:
        return f"{int(seconds // 60)}min"
    if seconds < 172800:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"
