"""The docs cannot rot: every fenced block marked `<!-- runnable -->` in README.md and docs/*.md is
run, in order, per document, against a real PostgreSQL, as an operator would type it.

Each document gets a fresh environment: `BACKUPD_CONFIG` (source: a copy of the Jarvis database;
destination: a local folder; state under the same work folder), `SOURCE_DSN`, `TARGET_DSN` (an empty
database), the venv's `backupd` first on PATH, and the work folder as the current directory. A block
runs under `bash -euo pipefail`; it must exit 0, and with `ends-with="a,b"` its last stdout lines
must be exactly those.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_TASKS, REPO, write_config

MARKER = re.compile(r'<!-- runnable(?: ends-with="([^"]*)")? -->\n```(?:sh|bash|console)?\n(.*?)```', re.S)
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])


def runnable_blocks(path: Path) -> list[tuple[str, list[str] | None]]:
    """(script, expected last lines or None) for each runnable block of a document, in order."""
    text = path.read_text()
    return [(m.group(2), m.group(1).split(",") if m.group(1) is not None else None)
            for m in MARKER.finditer(text)]


DOCUMENTS = [d for d in DOCS if runnable_blocks(d)]


def test_the_guide_has_runnable_blocks():
    assert REPO / "docs" / "backup-restore.md" in DOCUMENTS


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_runnable_blocks_run(document: Path, pg, tmp_path):
    source = pg.fresh_db("docsrc")
    target = pg.fresh_db("docdst", template=None)
    config = write_config(tmp_path / "backupd.toml", {
        "source": {"dsn": source, "exclude_columns": {"users": ["email"]}},
        "state": {"dir": str(tmp_path / "state")},
        "destinations": [{"name": "local", "type": "local", "path": str(tmp_path / "backups"),
                          "retention": {"keep_last": 7}}],
    })
    env = {**os.environ, "BACKUPD_CONFIG": str(config), "SOURCE_DSN": source, "TARGET_DSN": target,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "FIXTURE_TASKS": str(FIXTURE_TASKS)}
    env.pop("JOURNAL_STREAM", None)
    for number, (script, expected) in enumerate(runnable_blocks(document), start=1):
        if expected == ["2000"]:
            expected = [str(FIXTURE_TASKS)]
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        where = f"{document.name} block {number}:\n{script}"
        assert result.returncode == 0, f"{where}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
        if expected is not None:
            lines = result.stdout.rstrip("\n").splitlines()
            assert lines[-len(expected):] == expected, f"{where}\nstdout:\n{result.stdout}"
