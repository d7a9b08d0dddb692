"""The per-table content checksum, identical whether computed at backup or after a restore.

Each row is rendered by PostgreSQL as `row_to_json` of the exported columns; the checksum is the
sum, modulo 2^64, of a 64-bit hash of each rendered row. A sum does not depend on row order, so a
restored table (whose physical order differs) gives the same value as the source.

The digest names its hash: `xxh3sum64:` (XXH3-64, what backups are made with) or `b2sum64:`
(BLAKE2b-64, what backupd wrote before XXH3 and still verifies). XXH3 hashes a row about six
times faster, and the hash is in the way of the export's speed; either detects a changed row with
the same odds (2^-64), and neither is meant to resist forgery: an artifact's SHA-256 in the
manifest does that.

`xxh3sum64v2:` (what backups are made with now) also sums, for each of the table's `exactValues`
entries (values a row's JSON does not carry exactly, such as a JSON `null` that would read back as
SQL NULL; see docs/restore.md), the XXH3-64 of `exactValues\0` plus the entry as canonical JSON
(keys sorted, no spaces): a restore that loses such a value no longer matches. `xxh3sum64:` and
`b2sum64:` digests (older backups) are verified as they were made, without the entries.
"""

from __future__ import annotations

import json
import sys
from array import array
from collections.abc import Callable, Iterable
from decimal import Decimal
from hashlib import blake2b
from typing import Any

import xxhash

_MASK = (1 << 64) - 1


def _xxh3_sum(lines: list[bytes]) -> int:
    return sum(map(xxhash.xxh3_64_intdigest, lines))


def _blake2b_sum(lines: list[bytes]) -> int:
    """The sum of the rows' 64-bit BLAKE2b values, each read as a little-endian integer."""
    digests = array("Q", b"".join([blake2b(line, digest_size=8).digest() for line in lines]))
    if sys.byteorder != "little":
        digests.byteswap()
    return sum(digests)


ALGORITHMS: dict[str, Callable[[list[bytes]], int]] = {
    "xxh3sum64v2": _xxh3_sum, "xxh3sum64": _xxh3_sum, "b2sum64": _blake2b_sum}
# the digests that also cover a table's exactValues entries
WITH_EXACT_VALUES = {"xxh3sum64v2"}
DEFAULT_ALGORITHM = "xxh3sum64v2"
EXACT_PREFIX = b"exactValues\x00"


def canonical_json(value: Any) -> str:
    """`value` (parsed with numbers as int or Decimal) as canonical JSON: keys sorted, no spaces,
    numbers as written."""
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k), ensure_ascii=False) + ":" + canonical_json(value[k])
                              for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, Decimal)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


class TableChecksum:
    """Accumulates rows (each one JSON line, without its newline) into a count and a checksum."""

    def __init__(self, algorithm: str = DEFAULT_ALGORITHM) -> None:
        self.algorithm = algorithm
        self._hash_sum = ALGORITHMS[algorithm]
        self.rows = 0
        self._sum = 0

    @classmethod
    def like(cls, digest: str) -> TableChecksum | None:
        """A checksum computed the way `digest` was; None when this release does not know how."""
        algorithm = digest.partition(":")[0]
        return cls(algorithm) if algorithm in ALGORITHMS else None

    def add_lines(self, lines: list[bytes]) -> None:
        """Add complete rows."""
        self.rows += len(lines)
        self._sum = (self._sum + self._hash_sum(lines)) & _MASK

    def add_exact_values(self, entries: Iterable[Any]) -> None:
        """Add the table's exactValues entries (parsed JSON objects); a digest made before they
        existed ignores them."""
        if self.algorithm not in WITH_EXACT_VALUES:
            return
        lines = [EXACT_PREFIX + canonical_json(entry).encode() for entry in entries]
        if lines:
            self._sum = (self._sum + self._hash_sum(lines)) & _MASK

    @property
    def hexdigest(self) -> str:
        """The checksum as 16 hex digits, prefixed by its algorithm."""
        return f"{self.algorithm}:{self._sum:016x}"


class LineSplitter:
    """Cuts a byte stream (COPY output in arbitrary chunks) into complete lines."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[bytes]:
        """Complete lines in `chunk` (plus what was pending), without newlines."""
        data = self._rest + bytes(chunk) if self._rest else bytes(chunk)
        lines = data.split(b"\n")
        self._rest = lines.pop()
        return lines

    def finish(self) -> list[bytes]:
        """What is left when the stream ends (a last line without a newline)."""
        rest, self._rest = self._rest, b""
        return [rest] if rest else []
