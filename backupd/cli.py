"""The `backupd` command line: parse, set up logging, run one command, map the outcome to an exit code.

Exit codes: 0 ok, 1 failed, 2 usage or config error, 3 partial, 4 lock held. A BackupdError ends
as one line on stderr (with its hint); an unexpected exception too, plus the traceback with -v.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from backupd import __version__
from backupd.commands import COMMANDS
from backupd.errors import BackupdError, ConfigError
from backupd.redact import redact


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"backupd: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand."""
    # Global options are accepted before and after the subcommand; SUPPRESS keeps the subcommand's
    # parser from resetting a value given before it.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--config", metavar="PATH", help="config file (default: $BACKUPD_CONFIG or /etc/backupd/backupd.toml)")
    common.add_argument("--credentials-dir", metavar="DIR",
                        help="read secrets the config leaves empty from DIR/<key>, like systemd's "
                             "$CREDENTIALS_DIRECTORY (default: that, else the installed unit's LoadCredential= files)")
    common.add_argument("--log-format", choices=["auto", "console", "logfmt", "json"])
    common.add_argument("-v", "--verbose", action="count", help="more log output")
    common.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser = _Parser(prog="backupd", description="Hybrid SQL + JSON backups of a PostgreSQL/Supabase database.",
                     parents=[common])
    parser.add_argument("--version", action="version", version=f"backupd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in COMMANDS:
        module.add_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the exit code."""
    from backupd import log

    plain = (sys.stdout, sys.stderr)
    if log.resolve_format("auto") == "journal":
        log.prefix_plain_output()  # a usage error under systemd is a journal line too
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, default in (("config", None), ("log_format", "auto"), ("verbose", 0), ("quiet", False),
                          ("credentials_dir", None)):
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.credentials_dir:
        os.environ["CREDENTIALS_DIRECTORY"] = os.path.abspath(args.credentials_dir)
    verbosity = args.verbose - (1 if args.quiet else 0)
    sys.stdout, sys.stderr = plain  # structlog writes its own prefixes; --log-format may differ
    if log.configure(args.log_format, verbosity) == "journal":
        log.prefix_plain_output()
    os.umask(0o077)
    try:
        code = int(args.handler(args))
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"backupd: config error: {redact(problem)}\n")
        if exc.hint:
            sys.stderr.write(f"backupd: hint: {exc.hint}\n")
        code = exc.exit_code
    except BackupdError as exc:
        sys.stderr.write(f"backupd: error: {exc}\n")
        code = exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("backupd: interrupted\n")
        code = 130
    except BrokenPipeError:
        code = 0
    except Exception as exc:  # noqa: BLE001 - a bug still ends as one redacted line
        sys.stderr.write(f"backupd: internal error: {type(exc).__name__}: {redact(str(exc))}\n")
        if verbosity > 0:
            import traceback

            sys.stderr.write(redact("".join(traceback.format_exception(exc))))
        code = 1
    for stream in (sys.stdout, sys.stderr):
        close_line = getattr(stream, "close_line", None)
        if close_line is not None:
            close_line()
    sys.stdout.flush()
    return code


def run() -> None:
    """`python -m backupd`."""
    raise SystemExit(main())
