"""The type zoo (issue 24): one column of each common PostgreSQL 15 type, with awkward values
(NaN, infinities, extremes, NULLs in arrays, 2-D and empty arrays, arrays of jsonb/enum/composite,
`\\u0000` and line breaks in `json`, JSON `null` beside SQL NULL), backed up and restored through
the real CLI: `--sql`, and the JSON restore under every strategy, into empty tables and over
different rows; `diff` of two backups of it; an incremental chain. Each time every row's text
form (`t::text`, ordered by key) is compared with the source's. hstore and citext columns are
added when the test server has those extensions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import PgServer, run_cli, table_checksums, write_config

pytestmark = pytest.mark.slow

TYPES = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (a int, j jsonb, t text);
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN doc AS jsonb;
"""

COLUMNS = """
  id int PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT '2026-01-01 00:00+00',
  sm smallint, i int, bi bigint, nu numeric, nu2 numeric(10,2), r real, dp float8, mo money,
  ch char(5), vc varchar(10), tx text, nm name, ba bytea, bo bool,
  d date, t time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
  u uuid, j json, jb jsonb, dj doc, x xml, ip inet, ci cidr, mac macaddr, mac8 macaddr8,
  bt bit(4), vb varbit, tsv tsvector, tsq tsquery,
  r4 int4range, rn numrange, rt tstzrange, mr datemultirange,
  pt point, ln line, ls lseg, bx box, pa path, pg polygon, cr circle,
  lsn pg_lsn, o oid, x8 xid8, rc regclass, rty regtype,
  ia int[], ta text[], ia2 int[], ea int[], jba jsonb[], ma mood[], pa2 pair[], ja json[],
  m mood, dom posint, p pair
"""

ROWS = r"""
INSERT INTO zoo (id, sm, i, bi, nu, nu2, r, dp, mo, ch, vc, tx, nm, ba, bo, d, t, ttz, ts, tstz, iv,
  u, j, jb, dj, x, ip, ci, mac, mac8, bt, vb, tsv, tsq, r4, rn, rt, mr, pt, ln, ls, bx, pa, pg, cr,
  lsn, o, x8, rc, rty, ia, ta, ia2, ea, jba, ma, pa2, ja, m, dom, p) VALUES
(1, 32767, -2147483648, 9223372036854775807, 'NaN', 12.50, 'Infinity', '-Infinity', '-92233720368547758.08',
 'ab', 'quote"x', E'tab\tnl\nback\\', 'name', '\x00ff', true,
 '4713-01-01 BC', '24:00:00', '23:59:59.999999-15:59', '294276-12-31 23:59:59.999999', 'infinity',
 '-178000000 years', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', E'{"k": "x\\u0000y",\n "n": 1.10}',
 '{"a": null, "b": [1, "2"], "c": 1.10}', 'null', '<a>x</a>', '::1/128', '10.0.0.0/8', '08:00:2b:01:02:03',
 '08:00:2b:01:02:03:04:05', B'1010', B'101', 'a fat:1A cat', 'fat & !rat', '[1,5)', '(,1.5]',
 '[2020-01-01 00:00+00,infinity)', '{[2020-01-01,2020-02-01),[2021-01-01,)}',
 '(1.5,NaN)', '{1,-1,0}', '[(0,0),(1,1)]', '(1,1),(0,0)', '[(0,0),(1,1),(2,0)]', '((0,0),(1,1),(1,0))',
 '<(0,0),5>', '16/B374D848', 4294967295, '18446744073709551615', 'zoo', 'integer',
 '{1,NULL,3}', '{"a,b","NULL",NULL,"","x\"y"}', '{{1,2},{3,4}}', '{}', ARRAY['null'::jsonb, NULL, '{"x": null}'],
 '{sad,happy}', ARRAY[ROW(1, 'null', NULL)::pair, NULL, ROW(NULL, NULL, NULL)::pair],
 ARRAY['null'::json, NULL, E'{"a":\n1}'], 'happy', 5, ROW(1, 'null'::jsonb, 'q"')),
(2, -32768, 0, -9223372036854775808, '-Infinity', -0.01, 'NaN', 1e-307, 0, '', '', '', '', '', false,
 '-infinity', '00:00', '00:00+15:59', '-infinity', '-infinity', '1 mon', '00000000-0000-0000-0000-000000000000',
 'null', 'null', NULL, '<empty/>', '0.0.0.0', '::/0', '00:00:00:00:00:00', '00:00:00:00:00:00:00:00', B'0000',
 B'', '', 'a', 'empty', '(0,0)', '(,)', '{}', '(0,0)', '{1,0,0}', '[(0,0),(0,0)]', '(0,0),(0,0)', '((0,0))',
 '((0,0))', '<(0,0),0>', '0/0', 0, '0', '-', '-', '{}', '{}', '{{NULL,NULL},{NULL,NULL}}', '{}', '{}', '{}',
 '{}', '{}', 'sad', 1, ROW(NULL, NULL, NULL)),
(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL),
(4, 1, 1, 1, 0.000000000000000000001, 99999999.99, 3.4e38, 1.7976931348623157e308, 12.5, 'abcde',
 E'\u00e9\U0001F600', E'\\N \\. "q"', 'x', '\x5c', true, '2024-02-29', '12:34:56.789', '12:00+00',
 '2000-01-01 00:00', '1999-12-31 23:59:59.5+05', '1 year 2 mons 3 days 04:05:06.7',
 'ffffffff-ffff-ffff-ffff-ffffffffffff', E'{\n  "pretty": [1,\n 2],\r\n  "s": "t\\tu"\n}', '"just a string"',
 '[]', '<?xml version="1.0"?><r a="1"/>', '192.168.0.1/24', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff',
 'ff:ff:ff:ff:ff:ff:ff:ff', B'1111', B'0101010101', 'x:1 y:2B', 'x <-> y', '[-5,5]', '[1.10,2.200)',
 '(,)', '{[2024-01-01,2024-01-02)}', '(-1e300,1e-300)', '{0,1,-2.5}', '[(1,2),(3,4)]', '(3,4),(1,2)',
 '((1,2),(3,4))', '((1,1),(2,2),(3,1))', '<(1,1),0.5>', 'FFFFFFFF/FFFFFFFF', 1, '1', 'pg_class',
 'timestamp with time zone', '{{{1}}}', ARRAY['}', '{', ',', ' '], '[0:1]={5,6}', '{}', ARRAY['1.10'::jsonb],
 ARRAY[]::mood[], ARRAY[ROW(2, '{"k": [null]}', 'comma,paren)')::pair], ARRAY['"s"'::json], 'ok', 2147483647,
 ROW(NULL, '{}', NULL));
"""


EXTENSION_COLUMNS = {"hstore": "hs", "citext": "cit"}


@dataclass
class Zoo:
    """A zoo database, its backupd config and the extension columns it got."""

    dsn: str
    config: Path
    schema: str

    def cli(self, *args: str) -> Any:
        return run_cli("--config", str(self.config), *args)


def _available(pg: PgServer, dsn: str) -> list[str]:
    return [str(r[0]) for r in pg.execute(
        dsn, "SELECT name FROM pg_available_extensions WHERE name IN ('hstore', 'citext') ORDER BY 1")]


def _schema(extensions: list[str]) -> str:
    """The DDL of the zoo: the types, the table (hstore/citext columns when available)."""
    extra = "".join(f", {EXTENSION_COLUMNS[name]} {name}" for name in extensions)
    create = "".join(f"CREATE EXTENSION IF NOT EXISTS {name};\n" for name in extensions)
    return create + TYPES + f"CREATE TABLE zoo ({COLUMNS}{extra});\n"


def _make_zoo(pg: PgServer, folder: Path) -> Zoo:
    dsn = pg.fresh_db("zoo", template=None)
    extensions = _available(pg, dsn)
    schema = _schema(extensions)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(schema)
        conn.execute(ROWS)
        if "hstore" in extensions:
            conn.execute("""UPDATE zoo SET hs = 'a=>1, "b c"=>NULL, "q\\""=>"x,y"' WHERE id = 1""")
            conn.execute("UPDATE zoo SET hs = '' WHERE id = 2")
        if "citext" in extensions:
            conn.execute("UPDATE zoo SET cit = 'MiXeD' WHERE id = 1")
    config = write_config(folder / "backupd.toml", {
        "source": {"dsn": dsn},
        "export": {"incremental": True},
        "state": {"dir": str(folder / "state")},
        "verify": {"scratch_dsn": pg.dsn()},
        "destinations": [{"name": "local", "type": "local", "path": str(folder / "backups")}],
    })
    return Zoo(dsn, config, schema)


@pytest.fixture(scope="module")
def zoo(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    """A zoo and one full backup of it (tests of this module do not change its source)."""
    made = _make_zoo(pg, tmp_path_factory.mktemp("zoo"))
    result = made.cli("backup", "--full")
    assert result.returncode == 0, result.stderr
    assert "json_values_not_exact" not in result.stderr
    return made


def rows_text(dsn: str) -> list[str]:
    """Each row's text form (`z::text`), by key."""
    with psycopg.connect(dsn) as conn:
        return [str(r[0]) for r in conn.execute("SELECT z::text FROM zoo z ORDER BY id").fetchall()]


def differences(target: str, source: str) -> list[str]:
    """`id.column: target != source` for each value whose text (its type's output, as in `z::text`)
    differs; rows matched by key."""
    found = []
    with psycopg.connect(target) as mine, psycopg.connect(source) as theirs:
        columns = [str(r[0]) for r in theirs.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'zoo'::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum").fetchall()]
        query = "SELECT " + ", ".join(f"format('%s', z.\"{c}\")" for c in columns) + " FROM zoo z ORDER BY id"
        got = {r[0]: r for r in mine.execute(query).fetchall()}
        for row in theirs.execute(query).fetchall():
            other = got.get(row[0])
            for index, column in enumerate(columns):
                if other is None or other[index] != row[index]:
                    found.append(f"{row[0]}.{column}: {other and other[index]!r} != {row[index]!r}")
    return found


def empty_schema(pg: PgServer, zoo: Zoo) -> str:
    dsn = pg.fresh_db("zoot", template=None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(zoo.schema)
    return dsn


def restore(zoo: Zoo, target: str, *args: str, backup: str = "latest") -> None:
    result = zoo.cli("restore", backup, "--target", target, *args)
    assert result.returncode == 0, result.stderr


def test_the_zoo_renders_awkward_values_and_records_what_json_cannot_carry(zoo):
    """The export keeps the app's view (JSON null is a plain null, NaN a string, numerics as
    printed) and lists in exactValues each value the row does not carry exactly."""
    folder = next(p for p in (zoo.config.parent / "backups").iterdir() if p.is_dir())
    import zstandard

    document = json.loads(zstandard.ZstdDecompressor().stream_reader((folder / "export.json.zst").open("rb")).read())
    rows = {r["id"]: r for r in document["data"]["zoo"]}
    assert rows[1]["nu"] == "NaN" and rows[1]["jb"] == {"a": None, "b": [1, "2"], "c": 1.1}
    assert rows[2]["jb"] is None and rows[3]["jb"] is None and rows[2]["j"] is None
    assert rows[1]["j"] == {"k": "x\u0000y", "n": 1.1}
    entries = {(e["key"]["id"], e["column"]): e["text"] for e in document["exactValues"]["zoo"]}
    assert entries[(2, "jb")] == "null" and entries[(2, "j")] == "null" and entries[(1, "dj")] == "null"
    assert entries[(1, "j")] == '{"k": "x\\u0000y",\n "n": 1.10}'
    assert entries[(1, "jba")] == '{"null",NULL,"{\\"x\\": null}"}'
    assert (1, "p") in entries and (1, "pa2") in entries and (1, "ja") in entries and (4, "j") in entries
    assert entries[(4, "ia2")] == "[0:1]={5,6}" and rows[4]["ia2"] == [5, 6]
    assert not any(key[0] == 3 for key in entries)  # SQL NULL needs no entry
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["tables"]["zoo"]["checksum"].startswith("xxh3sum64v2:")


def test_sql_restore_and_restore_test_are_exact(zoo, pg):
    target = pg.fresh_db("zoosql", template=None)
    restore(zoo, target, "--sql")
    assert rows_text(target) == rows_text(zoo.dsn)
    result = zoo.cli("verify", "latest", "--restore-test", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert report["restore"]["ok"] and set(report["restore"]["halves"]) == {"sql", "json"}


@pytest.mark.parametrize("strategy", ["replace", "upsert", "merge"])
def test_json_restore_is_exact_under_every_strategy(zoo, pg, strategy):
    """Into empty tables (rows stream straight in) and over a target whose rows all differ (rows
    staged, then applied by key): every row of the backup comes back as it was."""
    extra = ["--yes"] if strategy == "replace" else []
    target = empty_schema(pg, zoo)
    restore(zoo, target, "--strategy", strategy, *extra)
    assert not differences(target, zoo.dsn)
    assert rows_text(target) == rows_text(zoo.dsn)
    with psycopg.connect(target, autocommit=True) as conn:
        # JSON null made SQL NULL and back, other values changed, older updated_at (merge), one row more
        conn.execute("UPDATE zoo SET jb = CASE WHEN jb IS NULL THEN 'null'::jsonb END, j = '{}', jba = NULL, p = NULL, "
                     "ja = '{}', tx = 'changed', dj = NULL, updated_at = '2020-01-01'")
        conn.execute("INSERT INTO zoo (id, jb) VALUES (5, 'null')")
    restore(zoo, target, "--strategy", strategy, *extra)
    expected = rows_text(zoo.dsn)
    got = rows_text(target)
    if strategy == "replace":
        assert got == expected
    else:
        assert got[:-1] == expected and got[-1].startswith("(5,")


def test_diff_of_two_backups_of_the_zoo_shows_no_change(zoo):
    second = zoo.cli("backup", "--full")
    assert second.returncode == 0, second.stderr
    ids = [b["id"] for b in json.loads(zoo.cli("list", "--json").stdout)]
    result = zoo.cli("diff", ids[-2], ids[-1], "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert all(not (t.get("added") or t.get("removed") or t.get("changed")) for t in report["tables"].values()), report


def test_json_null_and_sql_null_have_different_checksums(zoo, pg):
    """The manifest's checksum sees a JSON null turned into SQL NULL (the rows' JSON is the same)."""
    manifest_tables = json.loads(zoo.cli("list", "--json").stdout)
    folder = zoo.config.parent / "backups" / manifest_tables[0]["id"]
    tables = json.loads((folder / "manifest.json").read_text())["tables"]
    copy = pg.fresh_db("zoocopy", template=None)
    restore(zoo, copy, "--sql")
    assert table_checksums(copy, tables)["zoo"][1] == tables["zoo"]["checksum"]
    pg.execute(copy, "UPDATE zoo SET jb = NULL WHERE jb = 'null'")
    assert table_checksums(copy, tables)["zoo"][1] != tables["zoo"]["checksum"]


def test_incremental_chain_of_the_zoo_restores_exactly(pg, tmp_path):
    made = _make_zoo(pg, tmp_path)
    assert made.cli("backup", "--full").returncode == 0
    with psycopg.connect(made.dsn, autocommit=True) as conn:
        conn.execute("UPDATE zoo SET jb = NULL, j = E'{\"n\": \"\\\\u0000\"}', updated_at = now() WHERE id = 2")
        conn.execute("UPDATE zoo SET jb = 'null', ja = ARRAY[NULL, 'null'::json], updated_at = now() WHERE id = 3")
        conn.execute("DELETE FROM zoo WHERE id = 4")
        conn.execute("INSERT INTO zoo (id, j, jb, jba, p) SELECT 6, j, jb, jba, p FROM zoo WHERE id = 1")
    result = made.cli("backup", "--incremental")
    assert result.returncode == 0, result.stderr
    listed = json.loads(made.cli("list", "--json").stdout)
    assert listed[-1]["kind"] == "incremental"
    for args in (["--strategy", "replace", "--yes"], ["--sql"]):
        target = empty_schema(pg, made) if args[0] != "--sql" else pg.fresh_db("zooinc", template=None)
        result = made.cli("restore", listed[-1]["id"], "--target", target, *args)
        assert result.returncode == 0, result.stderr
        assert rows_text(target) == rows_text(made.dsn), args


def test_a_table_without_key_warns_about_what_json_cannot_carry(pg, tmp_path):
    """No primary key, so no exactValues entry can name the row: the backup says which column
    holds values its JSON restore cannot give back."""
    dsn = pg.fresh_db("nokey", template=None)
    pg.execute(dsn, "CREATE TABLE loose (meta jsonb, note json); "
                    "INSERT INTO loose VALUES ('null', '{}'), (NULL, E'[1,\\n2]'), ('{}', '{}')")
    config = write_config(tmp_path / "backupd.toml", {
        "source": {"dsn": dsn}, "state": {"dir": str(tmp_path / "state")},
        "destinations": [{"name": "local", "type": "local", "path": str(tmp_path / "backups")}],
    })
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if "json_values_not_exact" in line)
    assert "table=loose" in warning and "columns=meta,note" in warning and "warning" in warning


def test_the_git_destination_keeps_exact_values(pg, tmp_path):
    """The git destination stores tables as files and assembles the export again: its
    exactValues (numbers as written) come back, and the JSON restore from it is exact."""
    made = _make_zoo(pg, tmp_path)
    config = write_config(tmp_path / "git.toml", {
        "source": {"dsn": made.dsn}, "state": {"dir": str(tmp_path / "gitstate")},
        "destinations": [{"name": "git", "type": "git", "path": str(tmp_path / "repo")}],
    })
    assert run_cli("--config", str(config), "backup").returncode == 0
    target = empty_schema(pg, made)
    result = run_cli("--config", str(config), "restore", "latest", "--target", target, "--strategy", "replace", "--yes")
    assert result.returncode == 0, result.stderr
    assert not differences(target, made.dsn)


def test_jarvis_json_nulls_survive_the_fast_path_and_the_staged_path(make_config, source_dsn, pg):
    """JSON nulls in the app's own tables: a NOT NULL jsonb column (tasks.metadata, whose rows go
    through the COPY-text fast path) and nullable ones (comments.reactions, logs.context), restored
    into empty tables and then with upsert over rows that changed them."""
    from tests.integration.test_incremental import empty_schema as jarvis_schema

    nulls = {"tasks": "metadata", "comments": "reactions", "logs": "context", "users": "preferences"}
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        for table, column in nulls.items():
            conn.execute(f"UPDATE {table} SET {column} = 'null' WHERE id = (SELECT min(id::text)::uuid FROM {table})")
    config = make_config()
    result = run_cli("--config", str(config), "backup")
    assert result.returncode == 0, result.stderr
    listed = json.loads(run_cli("--config", str(config), "list", "--json").stdout)
    folder = config.parent / "backups" / listed[-1]["id"]
    tables = json.loads((folder / "manifest.json").read_text())["tables"]

    def json_nulls(dsn: str) -> dict[str, int]:
        return {t: pg.execute(dsn, f"SELECT count(*) FROM {t} WHERE jsonb_typeof({c}) = 'null'")[0][0]
                for t, c in nulls.items()}

    target = jarvis_schema(pg)
    result = run_cli("--config", str(config), "restore", "latest", "--target", target, "--strategy", "replace", "--yes")
    assert result.returncode == 0, result.stderr
    assert json_nulls(target) == dict.fromkeys(nulls, 1)
    assert table_checksums(target, tables) == {k: (v["rows"], v["checksum"]) for k, v in tables.items()}
    for table, column in nulls.items():
        pg.execute(target, f"UPDATE {table} SET {column} = '{{}}' WHERE jsonb_typeof({column}) = 'null'")
    result = run_cli("--config", str(config), "restore", "latest", "--target", target)
    assert result.returncode == 0, result.stderr
    assert json_nulls(target) == dict.fromkeys(nulls, 1)
    assert table_checksums(target, tables) == {k: (v["rows"], v["checksum"]) for k, v in tables.items()}
