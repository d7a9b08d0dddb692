"""Where a secret the config leaves empty is looked up: systemd credentials.

Inside the unit, systemd's `LoadCredential=KEY:PATH` copies each file into a private directory and
names it in `$CREDENTIALS_DIRECTORY`: the secret `KEY` is `$CREDENTIALS_DIRECTORY/KEY`. A command
run by hand has no such directory, so (in this order) it reads:

1. `--credentials-dir DIR` (the CLI puts it in `$CREDENTIALS_DIRECTORY`), else `$CREDENTIALS_DIRECTORY`;
2. else the installed unit's own `LoadCredential=` paths, from the unit whose `ExecStart=` runs
   this config (`backupd.service` for /etc/backupd/backupd.toml, `backupd@NAME.service` for
   /etc/backupd/NAME.toml), drop-ins included. Those files are root's: `sudo backupd doctor`.

A credential that exists but cannot be read is a config error naming the key and the path. A
directory that cannot be searched at all stops only the keys the config needs (an optional key such
as `verify.scratch_dsn` is then simply not given).
"""

from __future__ import annotations

import errno
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ENV = "CREDENTIALS_DIRECTORY"
# where scripts/install.sh puts the units; $BACKUPD_UNIT_DIR overrides it (packaging, tests)
UNIT_DIR = Path("/etc/systemd/system")
UNIT_DIR_ENV = "BACKUPD_UNIT_DIR"
UNITS = ("backupd.service", "backupd@.service")


@dataclass(frozen=True)
class Credentials:
    """Per key, the file that would hold it; `directory` when they come from one folder."""

    paths: dict[str, Path] = field(default_factory=dict)
    directory: Path | None = None
    origin: str = ""

    def path(self, key: str) -> Path | None:
        """The file that holds `key` when it is given this way, else None."""
        if self.directory is not None:
            return self.directory / key
        return self.paths.get(key)

    def read(self, key: str, required: bool) -> str | None:
        """The secret `key` (one trailing newline stripped), or None when not given this way.

        Raises ValueError (`@key@ cannot read PATH: reason`) for a credential that exists but
        cannot be read, and for one that the config needs in a directory that cannot be searched.
        """
        path = self.path(key)
        if path is None:
            return None
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            if exc.errno == errno.EACCES and not required and not _searchable(path.parent):
                return None
            advice = "" if self.directory is not None else "; the unit's credentials are root's: run it with sudo"
            raise ValueError(f"@{key}@ cannot read {path} ({self.origin}): {exc.strerror or exc}{advice}") from None
        except UnicodeDecodeError:
            raise ValueError(f"@{key}@ {path} is not UTF-8 text") from None
        if not text.strip():
            return None  # install.sh creates every credential empty: "not given this way"
        return text[:-1] if text.endswith("\n") else text


def _searchable(directory: Path) -> bool:
    try:
        os.stat(directory / ".")
        return os.access(directory, os.X_OK)
    except OSError:
        return False


def from_environment() -> Credentials:
    """`$CREDENTIALS_DIRECTORY` (systemd, or --credentials-dir), or nothing."""
    directory = os.environ.get(ENV)
    if directory:
        return Credentials(directory=Path(directory), origin=f"${ENV}")
    return Credentials()


def for_config(config_file: Path) -> Credentials:
    """The credentials for a command reading `config_file`: the environment's directory, else the
    installed unit's LoadCredential= paths for that config, else none."""
    found = from_environment()
    if found.directory is not None:
        return found
    unit_dir = Path(os.environ.get(UNIT_DIR_ENV) or UNIT_DIR)
    config = _absolute(config_file)
    for unit in UNITS:
        lines = _unit_lines(unit_dir, unit)
        if not lines:
            continue
        instance = _instance_for(lines, config)
        if instance is None:
            continue
        paths: dict[str, Path] = {}
        for key, value in lines:
            if key != "LoadCredential":
                continue
            if not value:
                paths.clear()  # `LoadCredential=` in a drop-in resets the list
                continue
            name, _, source = value.partition(":")
            if name and source.startswith("/"):
                paths[name] = Path(source.replace("%i", instance))
        label = unit.replace("@.", f"@{instance}.") if instance else unit
        return Credentials(paths=paths, origin=f"LoadCredential= of {unit_dir / label}")
    return Credentials()


def _absolute(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _unit_lines(unit_dir: Path, unit: str) -> list[tuple[str, str]]:
    """`(key, value)` of the [Service] settings of a unit file and its drop-ins, in order."""
    files = [unit_dir / unit]
    drop_ins = unit_dir / f"{unit}.d"
    if drop_ins.is_dir():
        files += sorted(drop_ins.glob("*.conf"))
    lines: list[tuple[str, str]] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";", "[")) or "=" not in line:
                continue
            key, _, value = line.partition("=")
            lines.append((key.strip(), value.strip()))
    return lines


def _instance_for(lines: list[tuple[str, str]], config: Path) -> str | None:
    """"" when the unit's ExecStart= runs `config` (a template: the instance name), else None."""
    for key, value in lines:
        if key != "ExecStart" or not value:
            continue
        try:
            argv = shlex.split(value.lstrip("-@:+!"))
        except ValueError:
            continue
        for position, word in enumerate(argv[:-1]):
            if word != "--config":
                continue
            pattern = argv[position + 1]
            if "%i" in pattern:
                regex = re.escape(pattern).replace("%i", "([^/]+)")
                match = re.fullmatch(regex, str(config))
                if match:
                    return match.group(1)
            elif _absolute(Path(pattern)) == config:
                return ""
    return None
