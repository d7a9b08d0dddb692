"""`backupd restore-storage ID|latest [--from NAME] [--bucket B]... [--to-bucket B] [--url URL] [--dry-run]`.

Puts the Supabase Storage objects of a backup back into Storage: the same bucket and path
(`--to-bucket` renames the bucket), into the project of the first `[[source.storage]]` (or
`--url`). Another project has another key: with `--url` of a project other than the configured
one, its service role key must come from `--service-role-key-file FILE` or
`$SUPABASE_SERVICE_ROLE_KEY` (the old project's key is never sent to it). Each object's sha256 is
checked before upload.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from backupd import redact
from backupd.commands.common import add_trust_unsigned, config_from, trusted_destination_from
from backupd.errors import UsageError

KEY_ENV = "SUPABASE_SERVICE_ROLE_KEY"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("restore-storage", parents=[common],
                            help="put a backup's Supabase Storage objects back into their buckets")
    parser.add_argument("backup", metavar="ID|latest", help="backup id, or `latest`")
    parser.add_argument("--from", dest="source", metavar="NAME", help="destination (default: the first)")
    parser.add_argument("--bucket", action="append", default=[], metavar="B",
                        help="only this bucket (repeatable; default: every bucket in the backup)")
    parser.add_argument("--to-bucket", metavar="B", help="upload into this bucket instead")
    parser.add_argument("--url", help="Storage project URL (default: the first [[source.storage]] url); "
                                      "another project needs its own key")
    parser.add_argument("--service-role-key-file", type=Path, metavar="FILE",
                        help=f"the target project's service role key (default: ${KEY_ENV}, else the "
                             "configured key when the project is the configured one)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be uploaded, upload nothing")
    parser.add_argument("--gpg-homedir", type=Path, metavar="DIR", help="GPG home with the private keys")
    parser.add_argument("--identity", type=Path, action="append", default=[], metavar="FILE",
                        help="age identity file (repeatable)")
    add_trust_unsigned(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from backupd.signing import resolve
    from backupd.storage_objects import restore_objects

    config = config_from(args)
    if not config.source.storage:
        raise UsageError("restore-storage needs a [[source.storage]] entry (its service_role_key uploads)")
    target = config.source.storage[0]
    url = args.url.rstrip("/") if args.url else target.url
    key = _target_key(args)
    if key is None and url != target.url:
        raise UsageError(f"restore-storage --url {url}: the configured service_role_key belongs to {target.url}; "
                         f"give the new project's key with --service-role-key-file FILE or ${KEY_ENV}")
    update: dict[str, Any] = {"url": url}
    if key is not None:
        redact.register([key])
        update["service_role_key"] = SecretStr(key)
    target = target.model_copy(update=update)
    destination = trusted_destination_from(config, args.source, trust_unsigned=args.trust_unsigned)
    manifest = resolve(destination, args.backup)
    decryptor = None
    if args.gpg_homedir or args.identity or any(a.encryption != "none" for a in manifest.artifacts):
        from backupd.crypto import build_decryptor

        decryptor = build_decryptor(args.gpg_homedir, list(args.identity))
    counts = restore_objects(destination.inner, manifest, target, buckets=list(args.bucket), to_bucket=args.to_bucket,
                             decryptor=decryptor, work_dir=config.state.dir / "restore-storage",
                             dry_run=args.dry_run)
    verb = "would upload" if args.dry_run else "uploaded"
    for bucket, count in sorted(counts.items()):
        sys.stdout.write(f"{bucket}: {verb} {count} objects\n")
    if not counts:
        sys.stdout.write("no objects matched\n")
    return 0


def _target_key(args: argparse.Namespace) -> str | None:
    """The target project's key from --service-role-key-file or the environment, else None."""
    key_file: Path | None = args.service_role_key_file
    if key_file:
        try:
            text = key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--service-role-key-file: cannot read {key_file}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        if not text:
            raise UsageError(f"--service-role-key-file: {key_file} is empty")
        return text
    return os.environ.get(KEY_ENV, "").strip() or None
