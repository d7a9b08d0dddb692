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


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed (scripts/ensure-tools.sh)")
def test_zsh_completion_in_a_real_interactive_zsh(make_config, tmp_path):
    """The zsh script loaded by compinit from fpath in an interactive zsh on a pseudo-terminal
    (zsh's own zpty module types the Tabs): a subcommand's option, an option's choices, the
    completion shells, and the id of the backup just taken after `verify`. Each expected word is
    awaited with `zpty -r` and a pattern; a completion that never comes ends in the timeout."""
    config = make_config()
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    backup_id = run_cli("--config", str(config), "completion", "ids").stdout.split()[0]
    generated = run_cli("completion", "zsh")
    assert generated.returncode == 0 and generated.stdout.startswith("#compdef backupd")
    functions = tmp_path / "functions"
    functions.mkdir()
    (functions / "_backupd").write_text(generated.stdout)
    check = subprocess.run(["zsh", "-n", str(functions / "_backupd")], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    bin_dir = _wrapper(tmp_path)
    cases = [("backupd restore x --str", "--strategy"), ("backupd --log-format ", "logfmt"),
             ("backupd completion ", "zsh"), (f"backupd --config {config} verify ", backup_id)]
    steps = [f"zpty -w -n z {shlex.quote(line + chr(9))}\nzpty -r z out {shlex.quote('*' + expected + '*')} "
             f"&& print -r -- FOUND:{shlex.quote(expected)}\nzpty -w -n z $'\\C-u'" for line, expected in cases]
    program = "\n".join([
        "zmodload zsh/zpty",
        f"zpty -b z 'PATH={bin_dir}:/usr/bin:/bin HOME={tmp_path} zsh -f -i'",
        f"zpty -w z 'PS1=\"> \"; fpath=({functions} $fpath); autoload -U compinit; compinit -u; setopt nobeep'",
        *[step.replace("\\n", "\n") for step in steps],
        "zpty -d z",
    ])
    result = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True, timeout=120)
    found = [line.removeprefix("FOUND:") for line in result.stdout.splitlines() if line.startswith("FOUND:")]
    assert found == [expected for _line, expected in cases], result.stdout[-2000:] + result.stderr[-2000:]
