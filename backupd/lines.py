"""Lines read from artifacts are bounded: a stored file is written by whoever can write to the
destination, and a few bytes of zstd can expand to gigabytes without a newline. A line longer
than MAX_LINE_BYTES is an error (IntegrityError naming the file), never an allocation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from backupd.errors import IntegrityError

MAX_LINE_BYTES = 64 << 20


def line_too_long(where: str) -> IntegrityError:
    """The error for a line over the cap in `where`."""
    # 64 MiB is MAX_LINE_BYTES, spelt out so that docs/troubleshooting.md can quote the message
    return IntegrityError(f"{where}: a line longer than 64 MiB (backupd never writes one): "
                          "refused as damaged or forged")


def bounded_lines(stream: BinaryIO, where: str) -> Iterator[bytes]:
    """The lines of `stream` (each with its newline, the last one maybe without); raises
    IntegrityError at a line over MAX_LINE_BYTES, having read at most that much of it."""
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES:
            raise line_too_long(where)
        yield line
