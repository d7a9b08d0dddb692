"""What tables a backup covers: discovery in the configured schemas, columns, primary keys, and
an order that puts every table after the tables its foreign keys point at.

Partitions and inheritance children (docs/backup-restore.md, "Partitions and inherited tables"):
a partitioned table is one table of the backup, read through its parent (its rows are those of
its leaf partitions, each exactly once); its partitions are never tables of their own. An
inheritance child is a table of its own, and every table is read `FROM ONLY`, so a parent's rows
never repeat its children's. `exclude_tables` and `exclude_columns` of a table also hold for all
its partitions and inheritance children, at any depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import psycopg

from backupd.db import one_line, qualified, quote_ident, quote_literal
from backupd.errors import SourceError


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
    # a partitioned table: it holds no rows itself, reading it reads its leaf partitions
    partitioned: bool = False
    # every partition below a partitioned table (schema, name), at any depth
    partitions: tuple[tuple[str, str], ...] = ()
    # columns of a type with its own cast to json (hstore): exported as their text, which their
    # input function reads back (their JSON object it does not)
    text_columns: list[str] = field(default_factory=list)
    # some column's JSON rendering holds `json` text verbatim, which may hold raw line breaks
    raw_json: bool = False
    # per column whose JSON rendering can lose a value (JSON null read back as SQL NULL, a `json`
    # text's line breaks): the SQL condition (on alias t) under which the row does not carry it
    exact_conditions: dict[str, str] = field(default_factory=dict)

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

    @property
    def from_sql(self) -> str:
        """The table in a FROM clause: its own rows only (`ONLY`: an inheritance child's rows are
        the child's), or for a partitioned table the rows of all its partitions."""
        return self.sql_name if self.partitioned else f"ONLY {self.sql_name}"

    def select_sql(self, where: str = "") -> str:
        """SELECT of the exported columns (excluded columns never leave the database)."""
        cols = ", ".join(f"{quote_ident(c)}::text AS {quote_ident(c)}" if c in self.text_columns else quote_ident(c)
                         for c in self.columns)
        return f"SELECT {cols} FROM {self.from_sql}" + (f" WHERE {where}" if where else "")

    def row_json(self, alias: str = "t") -> str:
        """SQL for one row of `select_sql` (as `alias`) rendered as its JSON line.

        A `json` value is rendered verbatim, and its text may hold line breaks (only between
        tokens: PostgreSQL refuses them raw inside a string), which would cut the one-row-per-line
        layout: they become spaces, which changes no JSON value (the exact text is kept in the
        export's `exactValues`)."""
        if self.raw_json:
            return f"translate(row_to_json({alias}.*)::text, E'\\n\\r', '  ')"
        return f"row_to_json({alias}.*)"

    def exact_values_sql(self) -> str | None:
        """A query of this table's exactValues entries, one JSON object per row: `column`, `key`
        (the primary key's columns, as in `deleted`) and `text` (the value as PostgreSQL prints
        it); None when no column needs them or the table has no primary key."""
        if not self.exact_conditions or not self.primary_key:
            return None
        key = ", ".join(f"{quote_literal(c)}, t.{quote_ident(c)}" for c in self.primary_key)
        values = ", ".join(
            f"(CASE WHEN {condition} THEN json_build_object('column', {quote_literal(column)}, 'key', "
            f"json_build_object({key}), 'text', t.{quote_ident(column)}::text) END)"
            for column, condition in self.exact_conditions.items())
        return f"SELECT e FROM {self.from_sql} t, LATERAL (VALUES {values}) v(e) WHERE e IS NOT NULL"

    def json_copy_sql(self, where: str = "") -> str:
        """COPY that renders each row as one JSON line, passed through byte for byte.

        CSV format with control-character delimiter and quote: row_to_json never emits those raw,
        so nothing is quoted or escaped (text format would double every backslash).
        """
        return (
            f"COPY (SELECT {self.row_json()} FROM ({self.select_sql(where)}) t) TO STDOUT "
            "WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"
        )

    def restricted(self, columns: list[str], primary_key: list[str]) -> Table:
        """This table as a backup recorded it: only `columns`, keyed by `primary_key`."""
        return replace(self, columns=columns, primary_key=primary_key,
                       text_columns=[c for c in self.text_columns if c in columns],
                       exact_conditions={c: v for c, v in self.exact_conditions.items() if c in columns})


JSON_OID = 114
JSONB_OID = 3802
FIRST_NORMAL_OID = 16384  # below: built-in types, which row_to_json renders itself


@dataclass
class _TypeInfo:
    base: int = 0  # the type, domains resolved
    json_cast: bool = False  # holds a non-built-in type with its own cast to json (hstore)
    json_text: bool = False  # holds `json`, rendered verbatim
    json_any: bool = False  # holds `json` or `jsonb`
    array: bool = False  # an array (domains resolved)


def _type_info(conn: psycopg.Connection[tuple[object, ...]], oid: int, cache: dict[int, _TypeInfo]) -> _TypeInfo:
    """What the JSON rendering of a value of type `oid` can lose (domains, arrays and composite
    types followed down)."""
    if oid in cache:
        return cache[oid]
    info = cache[oid] = _TypeInfo(base=oid)  # a recursive type sees itself as plain
    row = conn.execute(
        """
        SELECT t.typtype, t.typbasetype, t.typelem, t.typcategory, t.typrelid,
               EXISTS (SELECT 1 FROM pg_cast c WHERE c.castsource = t.oid AND c.casttarget = 'json'::regtype)
        FROM pg_type t WHERE t.oid = %s
        """, (oid,)).fetchone()
    if row is None:
        return info
    type_type, base, element, category, relation, cast = row
    parts: list[_TypeInfo] = []
    if type_type == "d":
        found = _type_info(conn, int(base), cache)  # type: ignore[call-overload]
        info.base = found.base
        info.array = found.array
        parts.append(found)
    elif category == "A" and element:
        info.array = True
        parts.append(_type_info(conn, int(element), cache))  # type: ignore[call-overload]
    elif type_type == "c" and relation:
        for (field_type,) in conn.execute(
                "SELECT atttypid FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
                (relation,)).fetchall():
            parts.append(_type_info(conn, int(field_type), cache))  # type: ignore[call-overload]
    info.json_cast = bool(cast and oid >= FIRST_NORMAL_OID) or any(p.json_cast for p in parts)
    info.json_text = oid == JSON_OID or any(p.json_text for p in parts)
    info.json_any = oid in (JSON_OID, JSONB_OID) or any(p.json_any for p in parts)
    return info


def _exact_condition(table_sql: str, column: str, info: _TypeInfo) -> str | None:
    """The SQL condition (alias t) under which a value of `column` is not carried exactly by its
    row's JSON; None when it always is."""
    col = f"t.{quote_ident(column)}"
    if info.json_cast:
        return None
    if not info.json_any:
        # JSON arrays have no lower bounds: an array that does not start at 1 (`[0:1]={5,6}`)
        return f"array_dims({col}) ~ '\\[([^1]|1[^:])'" if info.array else None
    if info.base == JSONB_OID:
        return f"jsonb_typeof({col}) = 'null'"
    if info.base == JSON_OID:
        return f"(json_typeof({col}) = 'null' OR strpos({col}::text, E'\\n') > 0 OR strpos({col}::text, E'\\r') > 0)"
    # arrays and composite types holding json/jsonb: JSON null elements and fields, line breaks
    # and \u0000 inside `json`; whether the value survives is asked of PostgreSQL itself
    return (f"(CASE WHEN strpos({col}::text, '\\u0000') > 0 OR strpos({col}::text, E'\\n') > 0 "
            f"OR strpos({col}::text, E'\\r') > 0 THEN true ELSE {col}::text IS DISTINCT FROM "
            f"(json_populate_record(NULL::{table_sql}, json_build_object({quote_literal(column)}, {col})))."
            f"{quote_ident(column)}::text END)")


def _column_traits(conn: psycopg.Connection[tuple[object, ...]], oid: int, table_sql: str, columns: list[str],
                   cache: dict[int, _TypeInfo]) -> tuple[list[str], bool, dict[str, str]]:
    """(text columns, raw json, exact conditions) of a table's exported `columns`."""
    types = conn.execute(
        "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
        (oid,)).fetchall()
    text_columns: list[str] = []
    raw_json = False
    conditions: dict[str, str] = {}
    found = {str(name): int(type_oid) for name, type_oid in types}  # type: ignore[call-overload]
    for column in columns:
        if column not in found:
            continue
        info = _type_info(conn, found[column], cache)
        if info.json_cast:
            text_columns.append(column)
            continue
        raw_json = raw_json or info.json_text
        condition = _exact_condition(table_sql, column, info)
        if condition is not None:
            conditions[column] = condition
    return text_columns, raw_json, conditions


def describe_table(conn: psycopg.Connection[tuple[object, ...]], schema: str, name: str, columns: list[str],
                   primary_key: list[str]) -> Table:
    """A table of the database as a backup recorded it (its `columns` and key), rendered the way
    a backup renders it; raises SourceError when it does not exist."""
    table = Table(schema, name, columns, primary_key)
    try:
        row = conn.execute("SELECT %s::regclass::oid", (table.sql_name,)).fetchone()
        assert row is not None
        text_columns, raw_json, conditions = _column_traits(conn, int(row[0]), table.sql_name,  # type: ignore[call-overload]
                                                            columns, {})
    except psycopg.Error as exc:
        raise SourceError(f"exporting {table.key} failed: {one_line(exc)}") from None
    return replace(table, text_columns=text_columns, raw_json=raw_json, exact_conditions=conditions,
                   partitioned=is_partitioned(conn, schema, name))


def _matches(schema: str, table: str, patterns: list[str]) -> bool:
    return table in patterns or f"{schema}.{table}" in patterns


@dataclass(frozen=True)
class _Relation:
    oid: int
    schema: str
    name: str
    partitioned: bool
    partition: bool


class _Tree:
    """The tables of the schemas with their inheritance/partition parents and children."""

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]], schemas: list[str]) -> None:
        rows = conn.execute(
            """
            SELECT c.oid, n.nspname, c.relname, c.relkind = 'p', c.relispartition
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND (n.nspname = ANY(%s)
                  OR c.oid IN (SELECT inhparent FROM pg_inherits UNION SELECT inhrelid FROM pg_inherits))
            ORDER BY n.nspname, c.relname
            """,
            (schemas,),
        ).fetchall()
        self.schemas = schemas
        self.relations = {int(r[0]): _Relation(int(r[0]), str(r[1]), str(r[2]), bool(r[3]), bool(r[4]))  # type: ignore[call-overload]
                          for r in rows}
        self.parents: dict[int, list[int]] = {}
        self.children: dict[int, list[int]] = {}
        for child, parent in conn.execute("SELECT inhrelid, inhparent FROM pg_inherits ORDER BY inhseqno").fetchall():
            child_oid, parent_oid = int(child), int(parent)  # type: ignore[call-overload]
            self.parents.setdefault(child_oid, []).append(parent_oid)
            self.children.setdefault(parent_oid, []).append(child_oid)

    def _walk(self, oid: int, links: dict[int, list[int]]) -> list[int]:
        found: list[int] = []
        pending = list(links.get(oid, []))
        while pending:
            current = pending.pop(0)
            if current not in found:
                found.append(current)
                pending += links.get(current, [])
        return found

    def ancestors(self, oid: int) -> list[_Relation]:
        """Every parent, grandparent... of a table (nearest first)."""
        return [self.relations[o] for o in self._walk(oid, self.parents) if o in self.relations]

    def descendants(self, oid: int) -> list[_Relation]:
        """Every partition and inheritance child below a table, at any depth."""
        return [self.relations[o] for o in self._walk(oid, self.children) if o in self.relations]

    def tables(self) -> list[_Relation]:
        """The relations that are tables of a backup: those of the schemas that are not partitions."""
        return [r for r in self.relations.values() if r.schema in self.schemas and not r.partition]

    def excluded(self, relation: _Relation, exclude: list[str]) -> bool:
        """True when the table or one of its ancestors is in `exclude`."""
        return any(_matches(r.schema, r.name, exclude) for r in [relation, *self.ancestors(relation.oid)])


def excluded_relations(conn: psycopg.Connection[tuple[object, ...]], schemas: list[str],
                       exclude: list[str]) -> list[tuple[str, str]]:
    """(schema, name) of every table `exclude` names and of all their partitions and inheritance
    children: what pg_dump must leave out (its own --exclude-table covers none of them)."""
    tree = _Tree(conn, schemas)
    found: list[tuple[str, str]] = []
    for relation in tree.relations.values():
        if _matches(relation.schema, relation.name, exclude):
            for r in [relation, *tree.descendants(relation.oid)]:
                if (r.schema, r.name) not in found:
                    found.append((r.schema, r.name))
    return found


def is_partitioned(conn: psycopg.Connection[tuple[object, ...]], schema: str, name: str) -> bool:
    """True when schema.name is a partitioned table (read through its parent, not `ONLY`)."""
    row = conn.execute("SELECT c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = %s AND c.relname = %s", (schema, name)).fetchone()
    return bool(row and row[0])


def discover(
    conn: psycopg.Connection[tuple[object, ...]],
    schemas: list[str],
    include: list[str],
    exclude: list[str],
    exclude_columns: dict[str, list[str]],
) -> list[Table]:
    """The tables to back up, parents before children (foreign-key order).

    A table's exclusions (`exclude`, `exclude_columns`) are those of itself and of all its
    ancestors (partitioned or inheritance parents)."""
    tree = _Tree(conn, schemas)
    tables: dict[int, Table] = {}
    inherited_required: dict[int, set[str]] = {}
    type_cache: dict[int, _TypeInfo] = {}
    for relation in tree.tables():
        oid, schema, name = relation.oid, relation.schema, relation.name
        if include and not _matches(schema, name, include):
            continue
        if tree.excluded(relation, exclude):
            continue
        attrs = conn.execute(
            """
            SELECT a.attname, a.attgenerated <> '', a.attnotnull AND NOT a.atthasdef, a.attinhcount > 0
            FROM pg_attribute a
            WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum
            """,
            (oid,),
        ).fetchall()
        excluded: list[str] = []
        for owner in [relation, *tree.ancestors(oid)]:
            for column in [*exclude_columns.get(owner.name, []), *exclude_columns.get(f"{owner.schema}.{owner.name}", [])]:
                if column not in excluded:
                    excluded.append(column)
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
        inherited_required[oid] = {str(a[0]) for a in attrs if a[2] and a[3] and a[0] in excluded}
        partitions = tuple((r.schema, r.name) for r in tree.descendants(oid)) if relation.partitioned else ()
        text_columns, raw_json, conditions = _column_traits(conn, oid, qualified(schema, name), columns, type_cache)
        tables[oid] = Table(schema, name, columns, [str(p[0]) for p in pk],
                            [c for c in excluded if c in present], generated, required,
                            relation.partitioned, partitions, text_columns=text_columns, raw_json=raw_json,
                            exact_conditions=conditions)
    for oid, inherited in inherited_required.items():
        # an inherited column whose parent (in this backup) relaxes it too: ALTER TABLE on the
        # parent reaches the child, and the child alone may not drop it (PostgreSQL 18)
        covered = {c for a in tree.ancestors(oid) if a.oid in tables for c in tables[a.oid].excluded_required}
        if inherited & covered:
            table = tables[oid]
            tables[oid] = replace(table, excluded_required=[c for c in table.excluded_required
                                                            if not (c in inherited and c in covered)])
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
