"""Decompression of stored and foreign artifacts: concatenated frames read through, a cut-off or
corrupt stream refused (the libraries' own readers stop silently at a truncated end)."""

from __future__ import annotations

import gzip
import io

import pytest
import zstandard

from backupd.errors import IntegrityError
from backupd.pipeline import decompress_stream

ZSTD = zstandard.ZstdCompressor().compress(b"hello ") + zstandard.ZstdCompressor().compress(b"world")
GZIP = gzip.compress(b"hello ") + gzip.compress(b"world")


@pytest.mark.parametrize("kind,data", [("zstd", ZSTD), ("gzip", GZIP)])
def test_concatenated_frames_are_read_through(kind, data):
    assert decompress_stream(io.BytesIO(data), kind, "x").read() == b"hello world"


@pytest.mark.parametrize("kind,data", [("zstd", ZSTD), ("gzip", GZIP)])
def test_truncated_stream_is_refused(kind, data):
    with pytest.raises(IntegrityError, match=f"truncated {kind} stream"):
        decompress_stream(io.BytesIO(data[:-3]), kind, "x").read()


@pytest.mark.parametrize("kind,data", [("zstd", ZSTD), ("gzip", GZIP)])
def test_corrupt_stream_is_refused(kind, data):
    damaged = bytearray(data)
    damaged[len(damaged) // 4] ^= 0xFF
    with pytest.raises(IntegrityError):
        decompress_stream(io.BytesIO(bytes(damaged)), kind, "x").read()
