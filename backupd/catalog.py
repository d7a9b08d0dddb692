"""What tables a backup covers: discovery in the configured schemas, columns, primary keys, and
an order that puts every table after the tables its foreign keys point at."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from backupd.db import qualified, quote_ident


@dataclass(frozen=True)
class Table:
    """One table to back up: its name in the export, its columns (after exclusions), its key."""

    schema: str
    name: str
    columns: list[str]
    primary_key: list[str]
    excluded_columns: list[str] = field(default_factory=list)
    generated_columns: list[str] = field(default_factory=list)
    # excluded columns that are NOT NULL without a default: a SQL restore must relax them
    excluded_required: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The table's name in the export: bare for public, else schema.table."""
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"

    @property
    def sql_name(self) -> str:
        """Quoted schema-qualified name."""
        return qualified(self.schema, self.name)

    @property
    def has_updated_at(self) -> bool:
        """True when the table tracks changes through an updated_at column."""
        return "updated_at" in self.columns

    def select_sql(self, where: str = "") -> str:
        """SELECT of the exported columns (excluded columns never leave the database)."""
        cols = ", ".join(quote_ident(c) for c in self.columns)
        return f"SELECT {cols} FROM {self.sql_name}" + (f" WHERE {where}" if where else "")

    def json_copy_sql(self, where: str = "") -> str:
        """COPY that renders each row as one JSON line, passed through byte for byte.

        CSV format with control-character delimiter and quote: row_to_json never emits those raw,
        so nothing is quoted or escaped (text format would double every backslash).
        """
        return (
            f"COPY (SELECT row_to_json(t.*) FROM ({self.select_sql(where)}) t) TO STDOUT "
            "WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"
        )


def _matches(schema: str, table: str, patterns: list[str]) -> bool:
    return table in patterns or f"{schema}.{table}" in patterns


def discover(
    conn: psycopg.Connection[tuple[object, ...]],
    schemas: list[str],
    include: list[str],
    exclude: list[str],
    exclude_columns: dict[str, list[str]],
) -> list[Table]:
    """The tables to back up, parents before children (foreign-key order)."""
    rows = conn.execute(
        """
        SELECT c.oid, n.nspname, c.relname
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = ANY(%s)
        ORDER BY n.nspname, c.relname
        """,
        (schemas,),
    ).fetchall()
    tables: dict[int, Table] = {}
    for oid, schema, name in rows:
        assert isinstance(oid, int) and isinstance(schema, str) and isinstance(name, str)
        if include and not _matches(schema, name, include):
            continue
        if _matches(schema, name, exclude):
            continue
        attrs = conn.execute(
            """
            SELECT a.attname, a.attgenerated <> '', a.attnotnull AND NOT a.atthasdef
            FROM pg_attribute a
            WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum
            """,
            (oid,),
        ).fetchall()
        excluded = list(exclude_columns.get(name, [])) + list(exclude_columns.get(f"{schema}.{name}", []))
        columns = [str(a[0]) for a in attrs if a[0] not in excluded]
        generated = [str(a[0]) for a in attrs if a[1]]
        pk = conn.execute(
            """
            SELECT a.attname FROM pg_index i
            JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
            WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord
            """,
            (oid,),
        ).fetchall()
        present = {str(a[0]) for a in attrs}
        required = [str(a[0]) for a in attrs if a[2] and a[0] in excluded]
        tables[oid] = Table(schema, name, columns, [str(p[0]) for p in pk],
                            [c for c in excluded if c in present], generated, required)
    edges = conn.execute(
        "SELECT conrelid, confrelid FROM pg_constraint WHERE contype = 'f' AND conrelid = ANY(%s)",
        (list(tables),),
    ).fetchall()
    return _fk_order(tables, [(int(a), int(b)) for a, b in edges])  # type: ignore[call-overload]


def _fk_order(tables: dict[int, Table], edges: list[tuple[int, int]]) -> list[Table]:
    parents: dict[int, set[int]] = {oid: set() for oid in tables}
    for child, parent in edges:
        if parent in tables and child != parent:
            parents[child].add(parent)
    ordered: list[Table] = []
    done: set[int] = set()
    remaining = sorted(tables, key=lambda o: tables[o].key)
    while remaining:
        ready = [o for o in remaining if parents[o] <= done] or remaining[:1]  # a cycle: break it
        for oid in ready:
            ordered.append(tables[oid])
            done.add(oid)
        remaining = [o for o in remaining if o not in done]
    return ordered
