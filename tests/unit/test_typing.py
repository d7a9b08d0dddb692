"""The package type-checks under mypy --strict (pyproject [tool.mypy]); every ignore names its code."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_mypy_strict_is_clean():
    result = subprocess.run([sys.executable, "-m", "mypy", "backupd"], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_every_type_ignore_names_its_code():
    bare = [f"{path.relative_to(REPO)}:{number}"
            for path in (REPO / "backupd").rglob("*.py")
            for number, line in enumerate(path.read_text().splitlines(), start=1)
            if re.search(r"#\s*type:\s*ignore(?!\[)", line)]
    assert not bare, bare
