"""`backupd doctor [--test-notify]`: check everything a backup needs, one line per check.

Config; the database (reachable, its server version); the pg_dump that would be picked and its
version; every destination (write, read back and delete a probe object); with `--test-notify`,
a test message through every notifier. Exit 1 when any check failed (2 for a bad config).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from backupd.commands.common import config_from
from backupd.config import Config
from backupd.errors import BackupdError


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("doctor", parents=[common],
                            help="probe the database, pg_dump, every destination (and notifiers)")
    parser.add_argument("--test-notify", action="store_true", help="also send a test message through every notifier")
    parser.set_defaults(handler=handle)


def _line(ok: bool, name: str, detail: str) -> None:
    sys.stdout.write(f"{'ok  ' if ok else 'FAIL'}  {name:<24} {detail}\n")
    sys.stdout.flush()


def _warn(name: str, detail: str) -> None:
    sys.stdout.write(f"WARN  {name:<24} {detail}\n")
    sys.stdout.flush()


def _check(name: str, action: Callable[[], str]) -> bool:
    began = time.monotonic()
    try:
        detail = action()
    except BackupdError as exc:
        _line(False, name, str(exc))
        return False
    except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check, not a crash
        from backupd.redact import redact

        _line(False, name, f"{type(exc).__name__}: {redact(str(exc))}")
        return False
    _line(True, name, f"{detail} ({time.monotonic() - began:.1f}s)")
    return True


def _database(config: Config, found: dict[str, Any]) -> str:
    from backupd.db import connect, describe

    dsn = config.source.dsn.get_secret_value()
    with connect(dsn, timeout=config.source.connect_timeout, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
                           "current_database()").fetchone()
    assert row is not None
    found["server_version"], found["server_version_num"] = str(row[0]), int(str(row[1]))
    return f"{describe(dsn)}: PostgreSQL {row[0]}"


def _pg_dump(config: Config, found: dict[str, Any]) -> str:
    from backupd.errors import SourceError
    from backupd.pgtools import pick

    if "server_version_num" not in found:
        raise SourceError("skipped: the database is not reachable, so the server's version is unknown")
    if config.dump.tool == "supabase":
        prefix = "supabase db dump (via its pg_dump): "
    else:
        prefix = ""
    tool = pick("pg_dump", found["server_version_num"] // 10000, found["server_version"], config.dump.pg_dump)
    return f"{prefix}{tool.path} {tool.version} (server {found['server_version']})"


def _destination(config: Config, index: int) -> Callable[[], str]:
    def probe() -> str:
        from backupd.destinations import build

        destination = build(config.destinations[index])
        detail: str = destination.probe()
        count = len(destination.backups())
        return f"{detail}; {count} backup(s) listed"

    return probe


def handle(args: argparse.Namespace) -> int:
    config = config_from(args)
    ok = True
    _line(True, "config", f"{len(config.destinations)} destination(s), {len(config.notifiers)} notifier(s)")
    if config.security.signing_key is None:
        _warn("signing key", "no [security] signing_key: manifests are not signed, so a forged backup at a "
                             "destination cannot be told from a real one (`backupd keygen FILE`, then "
                             "signing_key_file = FILE; keep it with the decryption keys)")
    else:
        _line(True, "signing key", "set: manifests are signed and checked")
    found: dict[str, Any] = {}
    ok &= _check("database", lambda: _database(config, found))
    if config.dump.enabled:
        ok &= _check("pg_dump", lambda: _pg_dump(config, found))
    for index, destination in enumerate(config.destinations):
        ok &= _check(f"destination {destination.name}", _destination(config, index))
    if args.test_notify:
        from backupd.notify.dispatch import send_test

        if not config.notifiers:
            _line(True, "notifiers", "none configured")
        for name, sent, detail in send_test(config):
            _line(sent, f"notifier {name}", detail)
            ok &= sent
    return 0 if ok else 1
