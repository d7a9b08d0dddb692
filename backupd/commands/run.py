"""`backupd run`: the daemon (backs up on schedule until SIGTERM; SIGHUP reloads the config)."""

from __future__ import annotations

import argparse
from typing import Any

from backupd.commands.common import config_from
from backupd.config import config_path


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "run", parents=[common],
        help="the daemon: back up on schedule until SIGTERM (SIGHUP reloads the config)",
        description="Back up on the [schedule] until SIGTERM/SIGINT; SIGHUP reloads the config. "
                    "Speaks sd_notify (READY, STATUS, WATCHDOG, STOPPING) when NOTIFY_SOCKET is set.",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from backupd.daemon import Daemon

    config = config_from(args)  # a bad config ends here: exit 2, nothing started
    if config.verify.schedule:
        from backupd.scratch import refusal

        problem = refusal(config)
        if problem is not None:
            raise problem  # drills could never run: say so before the daemon starts
    return Daemon(config_path(args.config).absolute(), config).run()
