"""`backupd keygen FILE`: write a fresh manifest signing key ([security] signing_key_file).

32 random bytes as 64 hex digits, mode 0600; an existing file is never overwritten (backups signed
with it would stop verifying). Needs no config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from backupd.signing import write_new_key


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("keygen", parents=[common], help="write a fresh manifest signing key (mode 0600)",
                            description="Write a fresh [security] signing_key to FILE (never overwrites).")
    parser.add_argument("file", type=Path, metavar="FILE", help="where to write the key (must not exist)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    write_new_key(args.file)
    sys.stdout.write(f"wrote a new signing key to {args.file} (mode 0600): set `signing_key_file = "
                     f"\"{args.file}\"` under [security], and keep a copy with the decryption keys\n")
    return 0
