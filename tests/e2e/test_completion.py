"""`backupd completion bash|zsh`: the generated scripts, loaded into a real bash (and zsh), complete
subcommands, options, option values and the ids of backups that a real run made."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli


def _wrapper(tmp_path: Path) -> Path:
    """A `backupd` on PATH that runs this checkout (as the installed console script would)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "backupd"
    script.write_text(f"#!/bin/sh\ncd {shlex.quote(str(REPO))} && exec {shlex.quote(sys.executable)} -m backupd \"$@\"\n")
    script.chmod(0o755)
    return bin_dir


def _complete(script: Path, bin_dir: Path, *words: str) -> list[str]:
    """COMPREPLY for the command line `words` (the last word is the one being completed)."""
    line = " ".join(shlex.quote(w) for w in words)
    program = (f"source {shlex.quote(str(script))}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
               "_backupd; printf '%s\\n' \"${COMPREPLY[@]}\"")
    result = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=60,
                            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(bin_dir)})
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completion_of_commands_options_values_and_backup_ids(make_config, tmp_path):
    """Subcommands, a subcommand's options, an option's choices, files for --config, and for
    verify/restore/diff `latest` plus the id of the backup just taken (from history.jsonl)."""
    config = make_config()
    backup = run_cli("--config", str(config), "-q", "backup")
    assert backup.returncode == 0, backup.stderr
    backup_id = run_cli("--config", str(config), "completion", "ids").stdout.split()
    assert len(backup_id) == 1 and backup_id[0].endswith("Z")
    generated = run_cli("completion", "bash")
    assert generated.returncode == 0 and generated.stderr == ""
    script = tmp_path / "backupd.bash"
    script.write_text(generated.stdout)
    bin_dir = _wrapper(tmp_path)

    commands = _complete(script, bin_dir, "backupd", "")
    assert {"backup", "restore", "verify", "diff", "export", "completion", "--config"} <= set(commands)
    assert _complete(script, bin_dir, "backupd", "re") == ["restore", "restore-storage"]
    assert _complete(script, bin_dir, "backupd", "restore", "--str") == ["--strategy"]
    assert _complete(script, bin_dir, "backupd", "restore", "x", "--strategy", "") == ["upsert", "replace", "merge"]
    assert _complete(script, bin_dir, "backupd", "--log-format", "j") == ["json"]
    assert _complete(script, bin_dir, "backupd", "--config", str(config)[:-3]) == [str(config)]
    ids = _complete(script, bin_dir, "backupd", "--config", str(config), "verify", "")
    assert ids == ["latest", backup_id[0]]
    assert _complete(script, bin_dir, "backupd", "--config", str(config), "diff", backup_id[0], "l") == ["latest"]
    assert _complete(script, bin_dir, "backupd", "completion", "") == ["bash", "zsh", "ids"]


def test_completion_ids_without_a_readable_config_prints_nothing(tmp_path):
    """Tab must never put an error into the line being typed: no config, no ids, exit 0."""
    result = run_cli("--config", str(tmp_path / "missing.toml"), "completion", "ids")
    assert result.returncode == 0 and result.stdout == ""


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed (scripts/ensure-tools.sh)")
def test_zsh_completion_parses_and_offers_backup_ids(make_config, tmp_path):
    """zsh accepts the script (zsh -n), and its id function hands `latest` and the backup's id to
    zsh's _describe (stood in by a function that prints what it is given)."""
    config = make_config()
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    backup_id = run_cli("--config", str(config), "completion", "ids").stdout.split()[0]
    generated = run_cli("completion", "zsh")
    assert generated.returncode == 0 and generated.stdout.startswith("#compdef backupd")
    script = tmp_path / "_backupd"
    script.write_text(generated.stdout)
    check = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    functions = generated.stdout.replace('\n_backupd "$@"\n', "\n")
    (tmp_path / "functions.zsh").write_text(functions)
    program = (f"source {shlex.quote(str(tmp_path / 'functions.zsh'))}; typeset -A opt_args; "
               f"opt_args[--config]={shlex.quote(str(config))}; "
               "_describe() { print -l -- ${(P)2} }; _backupd_ids")
    result = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True, timeout=60,
                            env={"PATH": f"{_wrapper(tmp_path)}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["latest", backup_id]
