"""Progress on a terminal: `backup`, `verify`, `diff`, `export` and `restore` run as subprocesses
whose stderr is a pseudo-terminal (Python's pty module) show rich's live line (stage, tables,
rows, bytes); the same commands with stderr in a pipe, or with `--log-format json`, show none of
it. And the display is touched per table and per MiB, never per row or per write."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backupd import progress
from tests.conftest import REPO, run_cli

COUNTS = re.compile(r"\d+(/\d+)? (tables|artifacts), [\d,]+ rows")
HIDE_CURSOR = "\x1b[?25l"


def _on_pty(*args: str) -> tuple[int, str]:
    """`backupd ARGS` with stderr on a pseudo-terminal (stdout to /dev/null); returns the exit
    code and everything the terminal received."""
    main, secondary = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("JOURNAL_STREAM", None)
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "backupd", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=secondary, cwd=REPO, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed its side
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    return proc.wait(timeout=300), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_progress_on_a_terminal_and_none_in_pipes_or_json(make_config, pg, source_dsn, tmp_path):
    config = str(make_config())
    code, screen = _on_pty("--config", config, "backup")
    assert code == 0, screen
    assert HIDE_CURSOR in screen and "12 tables" in screen and COUNTS.search(screen), screen[-2000:]

    pg.execute(source_dsn, "UPDATE tasks SET title = title || '?' WHERE id IN (SELECT id FROM tasks LIMIT 10)")
    piped = run_cli("--config", config, "backup")           # stderr is a pipe
    assert piped.returncode == 0
    assert HIDE_CURSOR not in piped.stderr and not COUNTS.search(piped.stderr)
    code, json_screen = _on_pty("--config", config, "--log-format", "json", "backup")
    assert code == 0 and HIDE_CURSOR not in json_screen and not COUNTS.search(json_screen)

    ids = [line.split()[0] for line in run_cli("--config", config, "-q", "list").stdout.splitlines()
           if re.match(r"\d{8}T\d{6}Z", line)]
    assert len(ids) == 3
    code, screen = _on_pty("--config", config, "verify", "latest")
    assert code == 0 and HIDE_CURSOR in screen and re.search(r"\d+/\d+ artifacts", screen), screen[-2000:]
    code, screen = _on_pty("--config", config, "diff", ids[0], ids[-1])
    assert code == 0 and HIDE_CURSOR in screen and COUNTS.search(screen), screen[-2000:]
    out = tmp_path / "export.json"
    code, screen = _on_pty("--config", config, "export", "-o", str(out))
    assert code == 0 and out.stat().st_size > 0
    assert HIDE_CURSOR in screen and "12/12 tables" in screen, screen[-2000:]
    target = pg.fresh_db("progress_target", template=None)
    code, screen = _on_pty("--config", config, "restore", "latest", "--target", target, "--sql")
    assert code == 0 and HIDE_CURSOR in screen and "restoring" in screen, screen[-2000:]
    target_json = pg.fresh_db("progress_json")
    code, screen = _on_pty("--config", config, "restore", str(out), "--target", target_json)
    assert code == 0 and "restored tasks:" in screen and COUNTS.search(screen), screen[-2000:]
    piped = run_cli("--config", config, "restore", str(out), "--target", target_json)
    assert piped.returncode == 0 and "restored tasks:" not in piped.stderr and HIDE_CURSOR not in piped.stderr


class _CountingReporter(progress.TerminalReporter):
    """The real terminal reporter, counting how often it touches rich's display."""

    updates = 0

    def __init__(self) -> None:
        super().__init__("counting")
        real = self.display.update

        def update(*args: object, **kwargs: object) -> None:
            type(self).updates += 1
            real(*args, **kwargs)  # type: ignore[arg-type]

        self.display.update = update  # type: ignore[method-assign]


def test_display_is_touched_per_mib_and_per_table_not_per_write():
    reporter = _CountingReporter()
    for _ in range(10 * 256):          # 10 MiB in 4 KiB writes
        reporter.transferred(4096)
    for table in range(12):
        reporter.done(f"t{table}", rows=100_000)
    assert _CountingReporter.updates <= 10 + 12
    assert reporter.rows == 1_200_000 and reporter.items == 12
