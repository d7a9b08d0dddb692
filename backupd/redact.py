"""One redaction step for every byte backupd writes or sends: logs, errors, status, manifests, alerts.

Secrets are registered when the config is loaded (every SecretStr value); on top of that, any
password inside a URL-style or key=value DSN is masked even when it was never registered (a DSN
echoed by psycopg, a command line, a URL in a traceback).

Only secret values are masked, never ordinary words: a registered secret is masked wherever it
appears only when it is distinctive (at least 8 characters, and either not made of letters alone
or at least 16 long); a shorter or word-like one ("No", "a", "directory") would otherwise turn
"No such file or directory" into "*** such file ***". Such a secret is still masked where it
stands as a secret: the password of a URL, `password=...`, `"token": "..."`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

import structlog

MASK = "***"
_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None

# scheme://user:password@host  ->  scheme://user:***@host
# (every part is bounded: unbounded, a long run of letters costs quadratic time to scan; a
# registered secret is masked above whatever its length). The scheme starts where a run of scheme
# characters starts: tried at every letter of a long run, the scan cost 32 steps a character.
_URL_PASSWORD = re.compile(
    r"(?P<head>(?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]{0,255}://[^:/@\s]{0,256}:)(?P<pw>[^@\s]{1,1024})(?P<tail>@)")
# password=secret (libpq key/value), PGPASSWORD=..., token=..., key:value, "token": "value"; after a
# colon and a space only a quoted value counts (`.../telegram-token: No such file` is prose)
_KV_SECRET = re.compile(
    r"(?P<head>\b(?:password|passwd|pgpassword|token|secret|api_key|apikey|access_key|secret_access_key)"
    r"(?:\s*=\s*['\"]?|:['\"]?|['\"]?\s*:\s*['\"]))(?P<pw>[^\s'\"&;,]+)",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W\d_]+")
# Telegram bot tokens inside URLs: /bot123456:ABC-DEF/...
_BOT_TOKEN = re.compile(r"(?P<head>/bot)(?P<pw>\d+:[A-Za-z0-9_-]+)")


def register(values: Iterable[str]) -> None:
    """Remember secret values so that `redact` masks them wherever they appear."""
    global _pattern
    with _lock:
        for value in values:
            if distinctive(value):
                _secrets.add(value)
        if _secrets:
            alternatives = sorted(_secrets, key=len, reverse=True)
            _pattern = re.compile("|".join(re.escape(s) for s in alternatives))


def distinctive(value: str) -> bool:
    """Whether a secret can be masked wherever it appears without masking ordinary words."""
    if len(value) < 8:
        return False
    return len(value) >= 16 or _WORD.fullmatch(value) is None


def redact(text: str) -> str:
    """Return `text` with every registered secret and every inline password replaced by ***."""
    if not text:
        return text
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + m.group("tail"), text)
    text = _KV_SECRET.sub(lambda m: m.group("head") + MASK, text)
    text = _BOT_TOKEN.sub(lambda m: m.group("head") + MASK, text)
    return text


def redact_obj(value: object) -> object:
    """Redact every string inside a JSON-like structure (dicts, lists, strings); other values pass."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_obj(v) for v in value]
    return value


# PostgreSQL messages that quote a row's values (restore errors): the values are withheld from
# what leaves the terminal's debug log (history.jsonl, alerts, the audit row, the error line)
WITHHELD = "(row data withheld)"
_ROW_DATA = [
    # Partition key of the failing row contains (region) = (zz).
    (re.compile(r"(failing row contains \([^\n]{0,2000}?\) = )\([^\n]*", re.IGNORECASE), r"\1" + WITHHELD),
    # Failing row contains (1, secret@example.com, ...).
    (re.compile(r"(Failing row contains )\([^\n]*"), r"\1" + WITHHELD),
    # Key (id)=(5) already exists. / is not present in table "t". / is still referenced ...
    (re.compile(r"(Key \([^\n]{0,2000}?\))=\([^\n]*?\)( already exists| is not present in table| is still "
                r"referenced from table| conflicts with (?:existing|another) key)"), r"\1=(…)\2"),
    (re.compile(r"(Key \([^\n)]{0,2000}\))=\((?!…\) )[^\n]*"), r"\1=" + WITHHELD),
    # CONTEXT:  COPY users, line 3, column email: "x@y"   /   COPY users, line 3: "1\tx@y\t..."
    (re.compile(r"(COPY [^\n,]{1,300}, line \d+(?:, column [^\n:]{1,300})?): \"[^\n]*"), r"\1: " + WITHHELD),
    # invalid input syntax for type uuid: "not-a-uuid"
    (re.compile(r"(invalid input (?:syntax|value) for [^\n:]{1,200}): \"[^\n]*?\""), r"\1: " + WITHHELD),
]


def withhold_row_data(text: str, debug_event: str | None = None) -> str:
    """`text` with the row values PostgreSQL quotes in its errors (`Failing row contains (...)`,
    `Key (id)=(...) already exists`, COPY context lines, invalid input values) replaced by a
    placeholder; column and constraint names stay. With `debug_event`, the full text is logged
    under that name at debug level when something was withheld."""
    withheld = text
    for pattern, replacement in _ROW_DATA:
        withheld = pattern.sub(replacement, withheld)
    if debug_event and withheld != text:
        structlog.get_logger("backupd.redact").debug(debug_event, error=redact(text))
    return withheld
