"""The pieces of a restore that need no database: reading exports in every layout, refusing
damaged ones, filtering dump lines across chunk boundaries, choosing a psql for \\restrict."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from backupd.errors import IntegrityError
from backupd.jsonreader import ExportReader
from backupd.lines import MAX_LINE_BYTES
from backupd.pgtools import PgTool
from backupd.sqlrestore import LineFilter, knows_restrict


class Collect:
    def __init__(self) -> None:
        self.rows: list[str] = []
        self.keys: list[str] = []

    def write_rows(self, rows: list[bytes]) -> None:
        assert all(b"\n" not in r for r in rows)
        self.rows += [r.decode() for r in rows]

    def finish(self, keys: list[str]) -> None:
        self.keys = keys


class Trickle(io.RawIOBase):
    """A stream that returns at most `step` bytes per read (block boundaries everywhere)."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.pos = data, step, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        chunk = self.data[self.pos:self.pos + self.step]
        self.pos += len(chunk)
        return chunk


def read(data: bytes, step: int | None = None) -> tuple[Any, dict[str, Collect]]:
    sinks: dict[str, Collect] = {}

    def handler(table: str) -> Collect:
        sinks[table] = Collect()
        return sinks[table]

    stream = Trickle(data, step) if step else io.BytesIO(data)
    return ExportReader(stream, "export.json").read(handler), sinks  # type: ignore[arg-type]


DOC = {"version": "2.0", "exportedAt": "2026-01-30T14:30:00Z", "format": "full", "incremental": False,
       "since": None, "tables": ["projects", "tasks"],
       "data": {"projects": [{"id": 1, "budget": 12.50, "name": "a\nb \u00e9\U0001f600"}],
                "tasks": [{"id": i, "tags": ["x", None], "meta": {"n": 1.10}} for i in range(50)]},
       "deleted": {"tasks": [{"id": 99}]}, "recordCount": {"projects": 1, "tasks": 50}}


@pytest.mark.parametrize("text", [
    json.dumps(DOC, ensure_ascii=False),
    json.dumps(DOC, indent=2),
    json.dumps(DOC, indent=0),
    json.dumps({"data": DOC["data"], "version": "2.0"}),  # keys in another order
])
@pytest.mark.parametrize("step", [None, 7])
def test_any_valid_layout_yields_every_row_exactly(text, step):
    document, sinks = read(text.encode(), step)
    assert document.version == "2.0"
    assert [json.loads(r) for r in sinks["tasks"].rows] == DOC["data"]["tasks"]
    assert json.loads(sinks["projects"].rows[0]) == DOC["data"]["projects"][0]
    assert sinks["tasks"].keys == ["id", "tags", "meta"]


def test_numbers_keep_their_text():
    raw = b'{"version": "2.0", "data": {"t": [{"n": 12.50, "j": {"x": 1.10}}]}}'
    _, sinks = read(raw, 3)
    assert sinks["t"].rows == ['{"n": 12.50, "j": {"x": 1.10}}']


def test_backupd_layout_streams_rows_as_lines():
    raw = (b'{"version": "2.0", "tables": ["a", "b"],\n"data": {\n"a": [\n{"x":1},\n{"x":12.50}\n],\n'
           b'"b": []\n},\n"deleted": {"a": [1]},\n"recordCount": {"a": 2, "b": 0}}\n')
    for step in (None, 5):
        document, sinks = read(raw, step)
        assert sinks["a"].rows == ['{"x":1}', '{"x":12.50}'] and sinks["b"].rows == []
        assert document.deleted == {"a": [1]} and document.record_count == {"a": 2, "b": 0}


def test_a_row_larger_than_a_read_block():
    big = {"version": "2.0", "data": {"t": [{"body": "z" * (3 << 20)}, {"body": "small"}]}}
    _, sinks = read(json.dumps(big).encode())
    assert [len(json.loads(r)["body"]) for r in sinks["t"].rows] == [3 << 20, 5]


@pytest.mark.parametrize("raw, message", [
    (json.dumps(DOC)[:-40].encode(), "truncated"),
    (json.dumps({**DOC, "version": "3.0"}).encode(), "export version '3.0'"),
    (json.dumps(DOC).encode() + b" {}", "unexpected text"),
    (json.dumps({"data": {}}).encode(), "no \"version\""),
    (b"\xff\xfe not text", "not UTF-8"),
    (json.dumps({"version": "2.0", "data": {"t": [1, 2]}}).encode(), "not an object"),
])
def test_damaged_documents_are_refused(raw, message):
    with pytest.raises(IntegrityError, match=message):
        read(raw, 11)


def test_line_filter_drops_lines_across_chunk_boundaries():
    """pg_dump 17's `SET transaction_timeout` (for an older server) and the dump's own
    `\\restrict`/`\\unrestrict` lines go, outside COPY data only: a COPY row that reads like one
    (a value starting with a carriage return is written `\\r...`) stays, at every chunk size."""
    text = (b"\\restrict AbC123\nSET a = 1;\nSET transaction_timeout = 0;\nCOPY t (a) FROM stdin;\n"
            b"\\restrict looks like one\n1\n\\.\nSELECT 1;\n\\unrestrict AbC123\n")
    wanted = b"SET a = 1;\nCOPY t (a) FROM stdin;\n\\restrict looks like one\n1\n\\.\nSELECT 1;\n"
    for step in range(1, len(text) + 1):
        line_filter = LineFilter("data.sql", drop_transaction_timeout=True)
        out = b"".join(line_filter.feed(text[i:i + step]) for i in range(0, len(text), step)) + line_filter.finish()
        assert out == wanted, step
    kept = LineFilter("data.sql").feed(text)
    assert b"SET transaction_timeout = 0;" in kept and b"AbC123" not in kept


def test_line_filter_refuses_a_line_over_the_cap_before_buffering_it():
    line_filter = LineFilter("data.sql")
    chunk = b"x" * (8 << 20)
    with pytest.raises(IntegrityError, match="data.sql: a line longer than 64 MiB"):
        for _ in range(9):
            line_filter.feed(chunk)
    assert len(line_filter._rest) <= MAX_LINE_BYTES


@pytest.mark.parametrize("version, expected", [("15.13", False), ("15.14", True), ("15.18", True),
                                               ("16.9", False), ("16.10", True), ("17.6", True),
                                               ("18.0", True), ("12.22", False)])
def test_which_psql_knows_restrict(version, expected):
    major = int(version.split(".")[0])
    assert knows_restrict(PgTool("/nonexistent/psql", major, version)) is expected


def test_a_backported_restrict_is_found_in_psql_help(tmp_path):
    """A distribution's 15.13 that lists `\\restrict` among its meta-commands is accepted."""
    fake = tmp_path / "psql"
    fake.write_text("#!/bin/sh\necho '  \\\\restrict RESTRICT_KEY'\n")
    fake.chmod(0o755)
    assert knows_restrict(PgTool(str(fake), 15, "15.13")) is True


def _written(tables: dict[str, list[dict[str, Any]]], deleted: dict[str, list[object]] | None = None) -> bytes:
    """A document exactly as backupd's JsonDocumentWriter lays it out."""
    from datetime import UTC, datetime

    from backupd.sources.json_export import JsonDocumentWriter

    out = io.BytesIO()
    writer = JsonDocumentWriter(out, list(tables), datetime(2026, 11, 28, tzinfo=UTC))
    for key, rows in tables.items():
        lines = [json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode() for r in rows]
        writer.table(key, [lines[i:i + 300] for i in range(0, len(lines), 300)])
    writer.finish(deleted)
    return out.getvalue()


WRITTEN = {
    "empty_first": [],
    "many": [{"id": i, "body": "é" * (i % 700), "tags": ["a,b", "c"]} for i in range(5000)],
    "big": [{"id": 1, "body": "z" * (3 << 20)}, {"id": 2, "body": "small"}],
    "empty_middle": [],
    "one": [{"id": 7}],
    "empty_last": [],
}


@pytest.mark.parametrize("step", [None, 1 << 20, 65536, 997])
def test_backupd_writer_layout_reads_back_row_for_row(step):
    """backupd's own layout goes through the bytes line reader: rows across block boundaries,
    a row larger than a block, empty tables first, between and last."""
    document, sinks = read(_written(WRITTEN, {"many": [{"id": 3}]}), step)
    for key, rows in WRITTEN.items():
        assert [json.loads(r) for r in sinks[key].rows] == rows, key
        assert document.rows.get(key, 0) == len(rows)
    assert sinks["many"].keys == ["id", "body", "tags"]
    assert document.deleted == {"many": [{"id": 3}]}
    assert document.record_count == {key: len(rows) for key, rows in WRITTEN.items()}
    assert document.tables == list(WRITTEN) and document.format == "full"


def test_backupd_writer_layout_cut_anywhere_is_refused():
    raw = _written({"a": [{"id": i} for i in range(40)], "b": [], "c": [{"id": 1}]})
    for cut in range(raw.index(b'"data"'), len(raw) - 1, 7):
        with pytest.raises(IntegrityError, match="truncated|not a valid JSON export"):
            read(raw[:cut], 64)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw.replace(b'\n"b": []', b'\n"b": [ oops'), "unexpected line"),
    (lambda raw: raw.replace(b'\n]', b'\n}', 1), "unexpected line"),
    (lambda raw: raw.replace(b'"recordCount": {', b'"recordCount": {{'), "unexpected line"),
    (lambda raw: raw + b"trailing", "unexpected text after the document"),
])
def test_backupd_writer_layout_damage_is_refused(damage, message):
    raw = _written({"a": [{"id": i} for i in range(40)], "b": []})
    with pytest.raises(IntegrityError, match=message):
        read(damage(raw), 13)
