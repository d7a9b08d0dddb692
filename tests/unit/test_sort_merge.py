"""The streaming building blocks of incrementals and diff: the three-way key merge and the
external sort (forced to spill into several runs)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from backupd import diff
from backupd.diff import ExternalSorter, read_records
from backupd.incremental import merge_keys


def test_merge_keys_matches_set_arithmetic():
    rng = random.Random(7)
    universe = [f'{{"id" : {n}}}'.encode() for n in range(2000)]
    for _ in range(20):
        previous = sorted(rng.sample(universe, 700))
        current = sorted(rng.sample(universe, 800))
        exported = sorted(rng.sample(current, 200))
        deleted: list[bytes] = []
        missed: list[bytes] = []
        merge_keys(iter(previous), current, iter(exported), deleted.append, missed.append)
        assert deleted == sorted(set(previous) - set(current))
        assert missed == sorted(set(current) - set(previous) - set(exported))


def test_external_sort_spills_runs_and_merges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(diff, "RUN_BYTES", 4096)
    rng = random.Random(3)
    keys = [f"[{n}]".encode() for n in range(5000)]
    rng.shuffle(keys)
    sorter = ExternalSorter(tmp_path, "t")
    for key in keys:
        sorter.add(key + b"\x01" + b'{"v": "' + key + b'"}')
    assert len(sorter.runs) > 5
    path = sorter.finish()
    records = list(read_records(path))
    assert [k for k, _ in records] == sorted(keys)
    assert all(payload == b'{"v": "' + key + b'"}' for key, payload in records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.sorted"]  # runs removed
