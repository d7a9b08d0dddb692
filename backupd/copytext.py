"""Turning backupd's JSON rows back into COPY text inside the restoring process.

Letting PostgreSQL parse each JSON row (`json_populate_recordset`) costs the one restoring backend
about twice what parsing COPY text does, and that backend is the bottleneck of a restore. So rows
are rewritten here as COPY text, with each value exactly the text `json_populate_record` would
have handed to the column type's input function.

The fast path does not parse JSON at all. A row rendered by `row_to_json` is
`{"a":V,"b":V,...}` with the keys in column order and no spaces, while jsonb values inside it are
printed with `", "` and `": "`, and every quote inside a string is escaped: so `,"b":` occurs only
between two top-level values, and one regex split per row yields the raw values (their keys are
checked against the expected ones). A raw value then becomes COPY text with almost no work,
because the escapes PostgreSQL's JSON output uses (`\\"`, `\\\\`, `\\b`, `\\f`, `\\n`,
`\\r`, `\\t`) mean the same in COPY text: a string's contents are taken between its quotes,
numbers and `true`/`false` as they are, `null` becomes `\\N`, a jsonb value keeps its JSON text
with its backslashes doubled, an array's JSON `[...]` becomes the literal `{...}`. Rows this
cannot take (a `\\u00XX` escape, which COPY does not read; an array with escapes or nesting;
keys not as expected) go through the exact path: parsed with the C JSON scanner (numbers as
`Decimal`, so `12.50` stays `12.50`) and rendered value by value.

Types this module does not convert (`json`, whose text must survive byte for byte; composite
types; arrays of those) make `column_kind` return None, and such tables keep the server-side
path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any

from backupd.errors import IntegrityError

# Column kinds, decided from the target's catalog (see `column_kind`)
SCALAR = "scalar"
BOOL = "bool"
JSONB = "jsonb"
# a NOT NULL jsonb column: its `null` can only be the JSON null (restored as such)
JSONB_NOT_NULL = "jsonb-not-null"
ARRAY = "array"


_scan_exact = json.JSONDecoder(parse_float=Decimal).scan_once  # type: ignore[attr-defined]
# in a raw row: an escaped control character, which COPY text would not read back
_CONTROL_ESCAPES = (b"\\u000", b"\\u001")


def column_kind(type_name: str, category: str, type_type: str, element: tuple[str, str, str] | None) -> str | None:
    """The conversion for a column of this (base) type, None when COPY text is not built here.

    `type_name`, `category` and `type_type` are pg_type's typname, typcategory and typtype of the
    column's base type; `element` the same three for an array's element type."""
    if type_type == "c" or type_name == "json":
        return None
    if type_name == "jsonb":
        return JSONB
    if type_name == "bool":
        return BOOL
    if category == "A":
        if element is None or element[0] in ("json", "jsonb") or element[2] == "c" or element[1] == "A":
            return None
        return ARRAY
    return SCALAR


# -- the exact path -------------------------------------------------------------------------------


def _copy_escape(text: str) -> str:
    return (text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))


def _json_exact(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(encode_basestring(str(k)) + ": " + _json_exact(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_json_exact(v) for v in value) + "]"
    if isinstance(value, str):
        return str(encode_basestring(value))
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _scalar_exact(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return _json_exact(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _array_exact(value: Any) -> str:
    if not isinstance(value, list):
        return _scalar_exact(value)
    parts = []
    for item in value:
        if item is None:
            parts.append("NULL")
        elif isinstance(item, list):
            parts.append(_array_exact(item))
        else:
            text = _scalar_exact(item)
            parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"


def _value_exact(kind: str, value: Any) -> str:
    if value is None:
        return "null" if kind == JSONB_NOT_NULL else "\\N"
    if kind in (JSONB, JSONB_NOT_NULL):
        return _copy_escape(_json_exact(value))
    if kind == ARRAY:
        return _copy_escape(_array_exact(value))
    if kind == BOOL and isinstance(value, bool):
        return "t" if value else "f"
    return _copy_escape(_scalar_exact(value))


# -- the converter ----------------------------------------------------------------------------------


class _NotFast(Exception):
    """A row the fast path does not take."""


def _not_fast(_: bytes = b"") -> bytes:
    raise _NotFast


# escapes JSON and array literals do not share (`\\"` and `\\\\` they do)
_ARRAY_UNSHARED_ESCAPE = re.compile(rb"\\[bfnrtu/]")


def _array_fast(raw: bytes) -> bytes:
    """An array column's JSON array as an array literal in COPY text (flat arrays only)."""
    if raw[:1] != b"[" or raw.count(b"[") != 1:
        raise _NotFast
    if b"\\" in raw:
        if _ARRAY_UNSHARED_ESCAPE.search(raw):
            raise _NotFast
        return b"{" + raw[1:-1].replace(b"\\", b"\\\\") + b"}"
    return b"{" + raw[1:-1] + b"}"


class RowConverter:
    """Converts one table's rows, as backupd's export holds them (`row_to_json` text of
    `backup_columns`, one row per bytes object), into COPY text for `copy_columns`: the backup's
    columns, in the backup's order, that `kinds` names (the others are left out)."""

    def __init__(self, table: str, backup_columns: list[str], kinds: dict[str, str]) -> None:
        self.table = table
        self.backup_columns = backup_columns
        self.copy_columns = [c for c in backup_columns if c in kinds]
        self._kinds = [(c, kinds[c]) for c in self.copy_columns]
        self._fast = self._compile(backup_columns, kinds)
        keys = [c.encode() for c in backup_columns]
        self._first = b'{"' + keys[0] + b'":'
        self._keys = keys[1:]
        self._key_split = re.compile(b',"(' + b"|".join(re.escape(k) for k in keys[1:]) + b')":').split

    @staticmethod
    def _compile(columns: list[str], kinds: dict[str, str]) -> Callable[[bytes], bytes]:
        """A function from one raw row to its COPY line: generated, so that no loop over the
        columns runs per row.

        Without array columns, `,"` occurs in a row only before a key (a string's quotes are
        escaped, jsonb prints `, "`), so a plain split cuts the row into `key":value` pieces
        whose key lengths are known; the key sequence is checked by `check_keys` (on one row
        per batch). Array columns print `","` between strings: then a regex split on the exact
        keys is used, checking every row's keys."""
        keys = [c.encode() for c in columns]
        plain = ARRAY not in kinds.values()
        body = []
        names = []
        for index, column in enumerate(columns):
            kind = kinds.get(column)
            if kind is None:
                continue  # in the backup, not restored
            if plain:
                offset = len(keys[index]) + (3 if index == 0 else 2)
                piece = f"p[{index}]"
            else:
                offset = 0
                piece = f"p[{2 * index}]"
            name = f"c{index}"
            names.append(name)
            if kind in (SCALAR, BOOL):
                body.append(f"    v = {piece}; {name} = v[{offset + 1}:-1] if v[{offset}] == 34 else "
                            f"(NULL if v[{offset}:] == b'null' else v[{offset}:])")
            elif kind == JSONB_NOT_NULL:
                body.append(f"    {name} = {piece}[{offset}:].replace(b'\\\\', b'\\\\\\\\')")
            elif kind == JSONB:
                body.append(f"    v = {piece}[{offset}:]; {name} = NULL if v == b'null' else v.replace(b'\\\\', b'\\\\\\\\')")
            else:
                body.append(f"    v = {piece}[{offset}:]; {name} = NULL if v == b'null' else array(v)")
        if plain:
            head = (f"    p = row[1:-1].split(b',\"')\n"
                    f"    if len(p) != {len(columns)} or row[-1] != 125: not_fast()\n")
        else:
            head = ("    p = split(row[start:-1])\n"
                    "    if p[1::2] != keys or row[:start] != first or row[-1] != 125: not_fast()\n")
        source = ("def convert(row):\n" + head + "\n".join(body) + "\n"
                  + f"    return b'\\t'.join(({', '.join(names)},))\n")
        first = b'{"' + keys[0] + b'":'
        scope: dict[str, Any] = {
            "split": re.compile(b',"(' + b"|".join(re.escape(k) for k in keys[1:]) + b')":').split,
            "keys": keys[1:], "first": first, "start": len(first), "NULL": b"\\N", "not_fast": _not_fast,
            "array": _array_fast,
        }
        exec(compile(source, "<copytext>", "exec"), scope)  # noqa: S102 - built from escaped names above
        return scope["convert"]  # type: ignore[no-any-return]

    def _keys_as_expected(self, row: bytes) -> bool:
        return self._key_split(row)[1::2] == self._keys and row.startswith(self._first)

    def convert(self, rows: list[bytes]) -> bytes:
        """COPY text for `rows`, each line ending with a newline."""
        if not rows:
            return b""
        joined = b"".join(rows)
        if not self._keys_as_expected(rows[0]) or _CONTROL_ESCAPES[0] in joined or _CONTROL_ESCAPES[1] in joined:
            return b"".join(self._convert_row(row) + b"\n" for row in rows)
        fast = self._fast
        try:
            lines = [fast(row) for row in rows]
        except _NotFast:
            return b"".join(self._convert_row(row) + b"\n" for row in rows)
        lines.append(b"")
        return b"\n".join(lines)

    def _convert_row(self, row: bytes) -> bytes:
        if _CONTROL_ESCAPES[0] in row or _CONTROL_ESCAPES[1] in row or not self._keys_as_expected(row):
            return self._exact(row)
        try:
            return self._fast(row)
        except _NotFast:
            return self._exact(row)

    def _exact(self, row: bytes) -> bytes:
        try:
            text = row.decode()
            record, end = _scan_exact(text, 0)
        except (UnicodeDecodeError, StopIteration, json.JSONDecodeError):
            text, record, end = "", None, -1
        if end != len(text) or not isinstance(record, dict):
            raise IntegrityError(f"table {self.table!r} holds a row that is not a JSON object: {row[:60]!r}")
        return "\t".join(_value_exact(kind, record.get(column)) for column, kind in self._kinds).encode()


# -- `\u0000` in json values -------------------------------------------------------------------------

# a `\u0000` escape (not an escaped backslash followed by "u0000")
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class NulValue:
    """A top-level value of a row that held a `\\u0000` escape, taken out of the row."""

    def __init__(self, key: dict[str, Any], column: str, text: str | None) -> None:
        self.key = key
        self.column = column
        # the value's text for the column (a `json` column's JSON text), None when the row's JSON
        # is not that text (an array or composite type holding json)
        self.text = text


def take_nul_values(row: bytes, primary_key: list[str], json_columns: set[str],
                    table: str) -> tuple[bytes, list[NulValue]]:
    """`row` with each top-level value that holds a `\\u0000` escape replaced by an empty object or
    array (PostgreSQL cannot read such an escape into anything but a `json` value, and parses the
    whole row), and those values. Raises IntegrityError for a row that is not a JSON object."""
    text = row.decode()
    if not _NUL_ESCAPE.search(text):
        return row, []
    try:
        record, end = _scan_exact(text, 0)
    except (StopIteration, json.JSONDecodeError):
        record, end = None, -1
    if not isinstance(record, dict) or end != len(text):
        raise IntegrityError(f"table {table!r} holds a row that is not a JSON object: {row[:60]!r}")
    key = {column: record.get(column) for column in primary_key}
    taken: list[NulValue] = []
    pieces: list[str] = []
    position = _WHITESPACE.match(text, 1).end()  # type: ignore[union-attr]
    pieces.append(text[:position])
    while text[position] != "}":
        name, after = _scan_exact(text, position)
        colon = _WHITESPACE.match(text, after).end()  # type: ignore[union-attr]
        start = _WHITESPACE.match(text, colon + 1).end()  # type: ignore[union-attr]
        _, stop = _scan_exact(text, start)
        raw = text[start:stop]
        if _NUL_ESCAPE.search(raw):
            taken.append(NulValue(key, str(name), raw if name in json_columns else None))
            raw = "[]" if raw.startswith("[") else "{}"
        pieces.append(text[position:start] + raw)
        position = _WHITESPACE.match(text, stop).end()  # type: ignore[union-attr]
        if text[position] == ",":
            position = _WHITESPACE.match(text, position + 1).end()  # type: ignore[union-attr]
            pieces.append(text[stop:position])
        else:
            pieces.append(text[stop:position])
    pieces.append(text[position:])
    return "".join(pieces).encode(), taken
