"""The per-table content checksum, identical whether computed at backup or after a restore.

Each row is rendered by PostgreSQL as `row_to_json` of the exported columns; the checksum is the
sum, modulo 2^64, of a 64-bit BLAKE2b of each rendered row. A sum does not depend on row order,
so a restored table (whose physical order differs) gives the same value as the source.
"""

from __future__ import annotations

from hashlib import blake2b

_MASK = (1 << 64) - 1


def _row_hash(line: bytes) -> int:
    return int.from_bytes(blake2b(line, digest_size=8).digest(), "little")


class TableChecksum:
    """Accumulates rows (each one JSON line, without its newline) into a count and a checksum."""

    def __init__(self) -> None:
        self.rows = 0
        self._sum = 0

    def add_lines(self, lines: list[bytes]) -> None:
        """Add complete rows."""
        self.rows += len(lines)
        self._sum = (self._sum + sum(map(_row_hash, lines))) & _MASK

    @property
    def hexdigest(self) -> str:
        """The checksum as 16 hex digits, prefixed by its algorithm."""
        return f"b2sum64:{self._sum:016x}"


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
