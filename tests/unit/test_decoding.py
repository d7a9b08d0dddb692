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
GZIP = gzip.compress(b"hello ", mtime=0) + gzip.compress(b"world", mtime=0)  # fixed bytes: test ids must match across xdist workers


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


def _bomb(kind: str, size: int) -> bytes:
    """`size` bytes of one repeated byte, compressed: a few KiB standing for hundreds of MiB."""
    out = io.BytesIO()
    block = b"x" * (1 << 20)
    if kind == "zstd":
        with zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as writer:
            for _ in range(size >> 20):
                writer.write(block)
    else:
        with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as writer:
            for _ in range(size >> 20):
                writer.write(block)
    return out.getvalue()


@pytest.mark.parametrize("kind", ["zstd", "gzip"])
def test_a_decompression_bomb_is_read_in_bounded_memory(kind):
    """200 MiB from a few KiB (zstd) or 200 KiB (gzip), read in 1 MiB chunks: no single
    allocation near its size (the decompressor is fed a slice at a time); frames concatenated
    after it still read through."""
    import tracemalloc

    data = _bomb(kind, 200 << 20) + (ZSTD if kind == "zstd" else GZIP)
    assert len(data) < 1 << 20
    tracemalloc.start()
    try:
        stream = decompress_stream(io.BytesIO(data), kind, "x")
        total = 0
        tail = b""
        while chunk := stream.read(1 << 20):
            total += len(chunk)
            tail = (tail + chunk)[-11:]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == (200 << 20) + len(b"hello world") and tail == b"hello world"
    assert peak < 32 << 20, peak
