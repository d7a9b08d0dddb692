"""Each error message documented in docs/troubleshooting.md is one the code can print, word for
word: the doc's `<placeholder>` parts line up with the code's f-string `{...}` parts."""

from __future__ import annotations

import re

from tests.conftest import REPO

HOLE = "\x00"


def _code_text() -> str:
    text = "\n".join(p.read_text() for p in sorted((REPO / "backupd").rglob("*.py")))
    # implicit concatenation of string literals split over lines: "abc "\n    f"def" -> "abc def"
    text = re.sub(r"([\"'])\s*\n\s*[rbfRBF]{0,2}([\"'])", "", text)
    return re.sub(r"\{[^{}\n]*\}", HOLE, text)


def documented_messages() -> list[str]:
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    return re.findall(r"^### `(.+)`$", doc, re.M)


def test_doc_lists_the_common_failures():
    messages = " ".join(documented_messages())
    for words in ("older than the server", "cannot connect", "transaction pooler", "no space left",
                  "another backupd run", "cannot decrypt", "sha256 mismatch", "s3 "):
        assert words in messages, words


def test_every_documented_message_is_in_the_code():
    code = _code_text()
    missing = []
    for message in documented_messages():
        pattern = re.sub(r"<[^<>]*>", HOLE, message)
        if pattern not in code:
            missing.append(message)
    assert not missing, f"documented but not printed by the code: {missing}"
