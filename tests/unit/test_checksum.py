"""The per-table content checksum: order-independent, named by its hash, and the older BLAKE2b
digests of earlier backups still computed the same way."""

from __future__ import annotations

from hashlib import blake2b

import pytest

from backupd.checksum import TableChecksum

ROWS = [b'{"id":1,"t":"a"}', b'{"id":2,"t":"\xc3\xa9"}', b'{"id":3,"t":null}']


@pytest.mark.parametrize("algorithm", ["xxh3sum64v2", "xxh3sum64", "b2sum64"])
def test_the_checksum_ignores_row_order_and_batching_but_not_content(algorithm):
    whole = TableChecksum(algorithm)
    whole.add_lines(ROWS)
    split = TableChecksum(algorithm)
    split.add_lines(ROWS[2:])
    split.add_lines(ROWS[:2])
    assert whole.hexdigest == split.hexdigest and whole.rows == split.rows == 3
    assert whole.hexdigest.startswith(algorithm + ":")
    changed = TableChecksum(algorithm)
    changed.add_lines([*ROWS[:2], b'{"id":3,"t":""}'])
    assert changed.hexdigest != whole.hexdigest


def test_b2sum64_is_the_sum_of_little_endian_blake2b_values():
    expected = sum(int.from_bytes(blake2b(r, digest_size=8).digest(), "little") for r in ROWS) % (1 << 64)
    checksum = TableChecksum("b2sum64")
    checksum.add_lines(ROWS)
    assert checksum.hexdigest == f"b2sum64:{expected:016x}"


def test_like_picks_the_digest_s_algorithm():
    old = TableChecksum.like("b2sum64:00a2ffc247b8bd66")
    assert old is not None and old.algorithm == "b2sum64"
    assert TableChecksum().algorithm == "xxh3sum64v2"
    assert TableChecksum.like("xxh3sum64:00a2ffc247b8bd66").algorithm == "xxh3sum64"  # type: ignore[union-attr]
    assert TableChecksum.like("sha3sum:1234") is None


def test_v2_sees_exact_values_and_older_digests_do_not():
    """A JSON null (an exactValues entry) against SQL NULL (none): same rows, different v2 digest;
    the digests of older backups (made before exactValues) are computed as they were."""
    entry = {"column": "meta", "key": {"id": 3}, "text": "null"}
    for algorithm, differs in [("xxh3sum64v2", True), ("xxh3sum64", False), ("b2sum64", False)]:
        sql_null, json_null = TableChecksum(algorithm), TableChecksum(algorithm)
        sql_null.add_lines(ROWS)
        json_null.add_lines(ROWS)
        json_null.add_exact_values([entry])
        assert (sql_null.hexdigest != json_null.hexdigest) is differs
        reordered = TableChecksum(algorithm)
        reordered.add_exact_values([{"text": "null", "key": {"id": 3}, "column": "meta"}])
        reordered.add_lines(ROWS)
        assert reordered.hexdigest == json_null.hexdigest
