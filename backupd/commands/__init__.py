"""One module per subcommand; each has `add_parser(subparsers, common)` setting `handler`."""

from __future__ import annotations

from types import ModuleType

from backupd.commands import (
    backup, check_config, completion, diff, doctor, export, keygen, list_backups, prune, restore, restore_storage,
    run, status,
    verify,
)

COMMANDS: list[ModuleType] = [run, backup, status, list_backups, prune, check_config, doctor, restore, verify, diff,
                              export, restore_storage, completion, keygen]
