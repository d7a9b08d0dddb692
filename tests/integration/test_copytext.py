"""Rows rewritten as COPY text in backupd's process (backupd.copytext) load exactly the values
PostgreSQL rendered: awkward values through the fast path and through the exact path, loaded
into a real PostgreSQL and compared with the source row by row."""

from __future__ import annotations

import psycopg
import pytest

from backupd.catalog import Table
from backupd.copytext import RowConverter, _NotFast
from backupd.restore import TargetTable, _copy_kinds
from backupd.snapshot import RENDERING_SETTINGS
from backupd.sources.json_export import copy_json_lines

AWKWARD = """
CREATE TYPE pair AS (a int, b text);
CREATE TABLE awkward (
    id int PRIMARY KEY, t text, n numeric, f float8, b bool, j jsonb, ta text[], ia int[], ba bytea,
    iv interval, ts timestamptz, u uuid, d date, ip inet, vc varchar(20), sm smallint, big bigint
);
INSERT INTO awkward (id, t, n, f, b, j, ta, ia, ba, iv, ts, u, d, ip, vc, sm, big) VALUES
 (1, 'plain', 12.50, 0.1, true, '{"a": 1.10, "b": [1, null, "s"], "c": {"d": "e"}}', '{a,b}', '{1,2}',
  '\\x00ff10', '1 day 02:03:04', '2024-07-01 16:58:33.633849+00', 'b4ef7e80-a49d-4612-99b7-54578c730920',
  '2024-02-29', '10.0.0.1/8', 'v', -32768, 9223372036854775807),
 (2, E'tab\\there\\nnew\\rline \\\\ back "quote" \\\\N \\\\. ', 'NaN', 'Infinity', false,
  '{"q": "x\\"y\\\\z", "path": "C:\\\\dir", "u": "é😀", "n": 123456789012345678901234567890.123456789}',
  ARRAY['quote"in', 'back\\slash', NULL, '', 'NULL', '{brace}', 'comma,x', 'é 😀', ' lead'],
  '{NULL,3}', '', '-1 mons', NULL, NULL, NULL, NULL, '', 0, 0),
 (3, 'NULL', 0.00000000000000000001, '-Infinity', NULL, '"just a string"', '{}', '{}', NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, '', 1e-5, 'NaN', NULL, '12.50', ARRAY[E'new\\nline', '[bracket]'], '{{1,2},{3,4}}', NULL,
  NULL, NULL, NULL, NULL, NULL, 'null', NULL, NULL),
 (5, E'ctl \\x01 and \\x1f', NULL, 1e300, NULL, '{"ctl": "\\u0001", "tab": "a\\tb"}', ARRAY[E'ctl\\x01'],
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (6, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (7, '\\u00e9 literal', 1, 2, true, '[]', ARRAY['\\u0041'], '{7}', '\\x', '00:00:00', 'infinity', NULL,
  '-infinity', '::1', NULL, NULL, NULL),
 (8, 'json-like ,"t": inside', 3, 4, false, '{}', ARRAY['a","b'], '{}', NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL);
CREATE TABLE awkward_copy (LIKE awkward);
CREATE TABLE with_json (id int PRIMARY KEY, j json);
CREATE TABLE with_composite (id int PRIMARY KEY, p pair);
"""


def _rendered(conn: psycopg.Connection[tuple[object, ...]], name: str) -> list[str]:
    for setting, value in RENDERING_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, false)", (setting, value))
    rows = conn.execute(f"SELECT row_to_json(t.*)::text FROM {name} t ORDER BY id").fetchall()
    return [str(r[0]) for r in rows]


def _table(conn: psycopg.Connection[tuple[object, ...]], name: str) -> TargetTable:
    columns = [str(r[0]) for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (name,)).fetchall()]
    row = conn.execute("SELECT %s::regclass::oid", (name,)).fetchone()
    assert row is not None
    target = TargetTable(Table("public", name, columns, ["id"]), int(row[0]))
    target.restore_columns = columns
    return target


@pytest.fixture
def awkward(pg):  # type: ignore[no-untyped-def]
    dsn = pg.fresh_db("copytext", template=None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(AWKWARD)
    return dsn


def _exported(conn: psycopg.Connection[tuple[object, ...]], table: Table) -> list[bytes]:
    for setting, value in RENDERING_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, false)", (setting, value))
    return [line for batch in copy_json_lines(conn, table) for line in batch]


@pytest.mark.parametrize("path", ["fast", "exact"])
def test_awkward_values_load_exactly(awkward, path):
    with psycopg.connect(awkward) as conn:
        target = _table(conn, "awkward")
        kinds = _copy_kinds(conn, target)
        assert kinds is not None
        converter = RowConverter("awkward", target.table.columns, kinds)
        rows = _exported(conn, target.table)
        if path == "fast":
            text = converter.convert(rows)
            # the plain rows really take the fast path (the others fall back row by row)
            converter._fast(rows[0])
            with pytest.raises(_NotFast):
                converter._fast(rows[3])  # a nested array
        else:
            text = b"".join(converter._exact(row) + b"\n" for row in rows)
        with conn.cursor().copy(f"COPY awkward_copy ({', '.join(converter.copy_columns)}) FROM STDIN") as copy:
            copy.write(text)
        conn.commit()
        assert _rendered(conn, "awkward_copy") == _rendered(conn, "awkward")


def test_columns_left_out_of_the_target_are_skipped(awkward):
    with psycopg.connect(awkward) as conn:
        target = _table(conn, "awkward")
        target.restore_columns = ["id", "t", "j"]
        kinds = _copy_kinds(conn, target)
        assert kinds is not None
        converter = RowConverter("awkward", target.table.columns, kinds)
        assert converter.copy_columns == ["id", "t", "j"]
        text = converter.convert(_exported(conn, target.table))
        with conn.cursor().copy("COPY awkward_copy (id, t, j) FROM STDIN") as copy:
            copy.write(text)
        assert (conn.execute("SELECT count(*) FROM awkward_copy a JOIN awkward b USING (id) "
                             "WHERE a.t IS NOT DISTINCT FROM b.t AND a.j IS NOT DISTINCT FROM b.j "
                             "AND a.n IS NULL").fetchone() == (8,))


@pytest.mark.parametrize("name", ["with_json", "with_composite"])
def test_types_whose_text_is_not_rebuilt_keep_the_server_path(awkward, name):
    with psycopg.connect(awkward) as conn:
        assert _copy_kinds(conn, _table(conn, name)) is None
