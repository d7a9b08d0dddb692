"""Under journald (JOURNAL_STREAM naming the stream's dev:inode), every line backupd writes to
stderr, and to stdout when it is the journal stream too, carries the `<N>` syslog priority prefix,
so `journalctl -p` sorts a command's summary and error lines as well as its log events."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

PREFIX = re.compile(r"^<[0-7]>")


def _as_under_systemd(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """`backupd ARGS` with stdout and stderr on one file and JOURNAL_STREAM set to its dev:inode,
    as systemd sets it for StandardOutput=journal (both streams on the one journal socket)."""
    out = tmp_path / "journal-stream.txt"
    with open(out, "w") as stream:
        info = os.fstat(stream.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        code = subprocess.run([sys.executable, "-m", "backupd", *args], stdout=stream, stderr=stream,
                              env=env, timeout=300).returncode
    return code, out.read_text().splitlines()


def test_every_line_has_a_priority_prefix_summary_at_notice_errors_at_err(make_config, tmp_path):
    """A successful `backupd backup`: its log events and its human summary line (`<5>backup ...
    success: full, N rows`) all carry a prefix. A run with a failing destination: the
    `backupd: error:` lines are `<3>`. A usage error (exit 2) is `<3>` too."""
    config = make_config()
    code, lines = _as_under_systemd(tmp_path, "--config", str(config), "backup")
    assert code == 0 and lines, lines
    assert all(PREFIX.match(line) for line in lines), lines
    summary = [line for line in lines if " success: full, " in line]
    assert len(summary) == 1 and summary[0].startswith("<5>backup ") and " rows" in summary[0], lines
    assert any(line.startswith("<6>level=info event=backup_finished") for line in lines), lines

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    broken = make_config(destinations=[{"name": "local", "type": "local", "path": str(tmp_path / "backups")},
                                       {"name": "blocked", "type": "local", "path": str(blocker / "backups")}])
    code, lines = _as_under_systemd(tmp_path, "--config", str(broken), "backup")
    assert code == 3, lines
    assert all(PREFIX.match(line) for line in lines), lines
    assert any(line.startswith("<4>backup ") and " partial: " in line for line in lines), lines
    assert any(line.startswith("<3>backupd: error: destination blocked failed") for line in lines), lines

    code, lines = _as_under_systemd(tmp_path, "--config", str(config), "backup", "--no-such-flag")
    assert code == 2 and lines and all(PREFIX.match(line) for line in lines), lines
    assert any(line.startswith("<3>backupd: error: unrecognized arguments") for line in lines), lines


def test_plain_output_unprefixed_when_not_under_journald(make_config, tmp_path):
    """Without JOURNAL_STREAM the summary is the plain line a person or a script reads."""
    config = make_config()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    result = subprocess.run([sys.executable, "-m", "backupd", "--config", str(config), "-q", "backup"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("backup "), result.stdout + result.stderr
