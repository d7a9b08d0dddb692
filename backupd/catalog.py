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
    # a partitioned table: it holds no rows itself, reading it reads its leaf partitions
    partitioned: bool = False
    # every partition below a partitioned table (schema, name), at any depth
    partitions: tuple[tuple[str, str], ...] = ()

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
        cols = ", ".join(quote_ident(c) for c in self.columns)
        return f"SELECT {cols} FROM {self.from_sql}" + (f" WHERE {where}" if where else "")

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
        tables[oid] = Table(schema, name, columns, [str(p[0]) for p in pk],
                            [c for c in excluded if c in present], generated, required,
                            relation.partitioned, partitions)
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
