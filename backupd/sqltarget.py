"""What a `restore --sql` target already holds, what the backup would put there, and the roles.

A plain target must be empty. A **Supabase project** never is: the platform creates the `auth`,
`storage`, `realtime`, `extensions` ... schemas, their tables, the reserved roles (`anon`,
`authenticated`, `service_role`, `supabase_*`) before its owner ever connects. `inspect_target`
recognises such a target (those roles plus the `auth` schema) and sets apart what the platform
owns: relations owned by a platform role (`supabase_*`, `pgbouncer`), in a schema such a role owns,
or belonging to an extension. Anything else must not be there. Of the platform's tables, those the
data dump loads (its `COPY` targets, found while the artifact is verified) must be empty: a
`restore --sql` never merges rows into a table that holds some.

`plan_roles` turns a backup's `roles.sql` (pg_dumpall `--roles-only`) into what the target can
apply without stopping the restore: a role that already exists is kept as it is (its CREATE and
ALTER are skipped), one it neither has nor creates gets no ALTER; attributes only a superuser may set (SUPERUSER, REPLICATION, BYPASSRLS) are
left out for a restoring role that is not one, as are `GRANT ... ON PARAMETER`. Each skip is a
warning naming the role; the rest of roles.sql runs in the restore's one transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from backupd.db import connect, one_line
from backupd.errors import BackupdError
from backupd.restore import RestoreError

PLATFORM_ROLE_PATTERN = r"^(supabase_.*|pgbouncer|pgsodium_.*)$"
SUPABASE_MARKER_ROLES = ("anon", "authenticated", "service_role", "supabase_admin")
# attributes PostgreSQL lets only a superuser set or change (ALTER ROLE ... WITH)
SUPERUSER_ATTRIBUTES = ("SUPERUSER", "REPLICATION", "BYPASSRLS")

_RELATIONS = r"""
SELECT n.nspname || '.' || c.relname, c.relkind::text,
       (c.relowner IN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname ~ %(platform)s)
        OR n.nspowner IN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname ~ %(platform)s)
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
                   AND d.objid = c.oid AND d.deptype = 'e')) AS platform
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'
ORDER BY 1
"""


@dataclass
class TargetFacts:
    """The target of a `restore --sql`, as inspected before anything is written."""

    server_version_num: int
    supabase: bool = False
    superuser: bool = False
    roles: set[str] = field(default_factory=set)
    other_relations: list[str] = field(default_factory=list)  # not the platform's: must not exist
    platform_tables: list[str] = field(default_factory=list)  # the platform's tables ("schema.table")


def inspect_target(dsn: str) -> TargetFacts:
    """Read what the target holds (read-only). Raises BackupdError when it cannot be read."""
    conn = connect(dsn, what="target database", autocommit=True)
    try:
        row = conn.execute("SELECT current_setting('server_version_num')::int, "
                           "(SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)").fetchone()
        assert row is not None
        facts = TargetFacts(int(str(row[0])), superuser=bool(row[1]))
        facts.roles = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_catalog.pg_roles")}
        has_auth = conn.execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'auth'").fetchone()
        facts.supabase = bool(has_auth) and all(r in facts.roles for r in SUPABASE_MARKER_ROLES)
        for name, kind, platform in conn.execute(_RELATIONS, {"platform": PLATFORM_ROLE_PATTERN}):
            if facts.supabase and platform:
                if kind in ("r", "p"):
                    facts.platform_tables.append(str(name))
            else:
                facts.other_relations.append(str(name))
    except psycopg.Error as exc:
        raise BackupdError(f"cannot inspect the target database: {one_line(exc)}") from None
    finally:
        conn.close()
    return facts


def tables_with_rows(dsn: str, tables: Iterable[str]) -> list[str]:
    """Which of `tables` ("schema.table", as the target names them) hold at least one row."""
    found = []
    conn = connect(dsn, what="target database", autocommit=True)
    try:
        for table in tables:
            schema, _, name = table.partition(".")
            query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {}.{})").format(
                sql.Identifier(schema), sql.Identifier(name))
            row = conn.execute(query).fetchone()
            if row and row[0]:
                found.append(table)
    except psycopg.Error as exc:
        raise BackupdError(f"cannot inspect the target database: {one_line(exc)}") from None
    finally:
        conn.close()
    return found


_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_COPY_LINE = re.compile(rb"^COPY\s+(" + _IDENT.encode() + rb")\.(" + _IDENT.encode() + rb")[\s(]")


def _unquote(identifier: str) -> str:
    if identifier.startswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier.lower()


class CopyTargets:
    """The tables a plain-format data dump loads (`COPY schema.table ... FROM stdin;`), found by
    feeding it chunk by chunk; the rows between a COPY line and its `\\.` are skipped quickly."""

    def __init__(self) -> None:
        self.tables: list[str] = []
        self._rest = b""
        self._in_copy = False

    def feed(self, chunk: bytes) -> None:
        """Scan the complete lines of what was fed so far (what is kept always starts a line)."""
        data = self._rest + chunk if self._rest else chunk
        position = 0
        while True:
            if self._in_copy:
                if data.startswith(b"\\.\n", position):
                    end = position
                else:
                    found = data.find(b"\n\\.\n", position)
                    end = found + 1 if found >= 0 else -1
                if end < 0:
                    last = data.rfind(b"\n", position)
                    position = last + 1 if last >= 0 else position
                    break
                position = end + 3
                self._in_copy = False
                continue
            newline = data.find(b"\n", position)
            if newline < 0:
                break
            line = data[position:newline]
            position = newline + 1
            match = _COPY_LINE.match(line)
            if match and line.rstrip().endswith(b"FROM stdin;"):
                self.tables.append(f"{_unquote(match.group(1).decode())}.{_unquote(match.group(2).decode())}")
                self._in_copy = True
        self._rest = data[position:]


_STATEMENT = re.compile(r"^(CREATE|ALTER) ROLE (" + _IDENT + r")(.*)$", re.S)
_ON_PARAMETER = re.compile(r"^GRANT .* ON PARAMETER .* TO (" + _IDENT + r")", re.S)


def split_statements(sql: str) -> list[str]:
    """pg_dumpall's roles output as statements (each ends with `;` at the end of a line, outside
    quotes; a COMMENT may span lines)."""
    statements, current, quote = [], "", ""
    for char in sql:
        current += char
        if quote:
            if char == quote:
                quote = ""
        elif char in ("'", '"'):
            quote = char
        elif char == ";":
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


def plan_roles(roles_sql: str, facts: TargetFacts, created_before: Iterable[str] = ()) -> tuple[str, list[str]]:
    """roles.sql as the target can take it, and one warning per role skipped or trimmed.
    `created_before`: roles the same transaction creates before roles.sql (the skeleton's)."""
    kept: list[str] = []
    warnings: list[str] = []
    existing_warned: set[str] = set()
    created: set[str] = set(created_before) - facts.roles
    for statement in split_statements(roles_sql):
        role_statement = _STATEMENT.match(statement)
        parameter = _ON_PARAMETER.match(statement)
        if role_statement:
            verb, quoted, rest = role_statement.groups()
            role = _unquote(quoted)
            if role in facts.roles and role not in created:
                if role not in existing_warned:
                    existing_warned.add(role)
                    warnings.append(f"role {role} already exists on the target: kept as it is "
                                    "(its CREATE/ALTER ROLE from the backup skipped)")
                continue
            if verb == "CREATE":
                created.add(role)
            elif role not in created:
                # the platform's own roles (anon, ...) get settings in roles.sql but are not created
                # there: on a plain server without the skeleton they do not exist
                warnings.append(f"role {role} does not exist on the target and roles.sql does not create it: "
                                f"`{statement.rstrip(';')[:120]}` skipped")
                continue
            elif not facts.superuser and rest.lstrip().upper().startswith("WITH"):
                statement, refused = _without_superuser_attributes(statement)
                if refused:
                    warnings.append(f"role {role}: {', '.join(refused)} needs a superuser on the target: "
                                    "left out (the role is created without it)")
                if re.fullmatch(r"ALTER ROLE " + re.escape(quoted) + r" WITH\s*;", statement):
                    continue
        elif parameter and not facts.superuser:
            warnings.append(f"role {_unquote(parameter.group(1))}: `{statement.rstrip(';')}` needs a superuser "
                            "on the target: skipped")
            continue
        kept.append(statement)
    return "\n".join(kept) + "\n", warnings


def _without_superuser_attributes(statement: str) -> tuple[str, list[str]]:
    """The ALTER ROLE ... WITH statement without SUPERUSER/REPLICATION/BYPASSRLS (nor their NO
    forms, a new role's defaults anyway); returns it and the positive ones that were dropped."""
    refused: list[str] = []

    def drop(match: re.Match[str]) -> str:
        if not match.group(1):
            refused.append(match.group(2).upper())
        return ""

    pattern = r"\s+(NO)?(" + "|".join(SUPERUSER_ATTRIBUTES) + r")\b"
    return re.sub(pattern, drop, statement, flags=re.I), refused


def check_target(facts: TargetFacts, loads: list[str], dsn: str) -> None:
    """Raise RestoreError, naming the relations, for a target that holds anything the restore
    could collide with: on a plain target any relation; on a Supabase project any
    relation not the platform's, and any platform table the data dump loads that holds rows."""
    if facts.other_relations:
        names = ", ".join(facts.other_relations[:3]) + (", ..." if len(facts.other_relations) > 3 else "")
        if facts.supabase:
            raise RestoreError(
                f"the target Supabase project is not empty ({len(facts.other_relations)} relations besides "
                f"the platform's: {names}): --sql restores into a new project only",
                "restore into a new project, or restore the JSON export instead")
        raise RestoreError(
            f"the target database is not empty ({len(facts.other_relations)} relations: {names}): --sql "
            "restores into an empty database only",
            "create a new database (createdb), or restore the JSON export instead")
    if facts.supabase:
        existing = set(facts.platform_tables)
        full = tables_with_rows(dsn, [t for t in loads if t in existing])
        if full:
            raise RestoreError(
                f"the target already holds rows in {', '.join(full)}, which the backup's data.sql loads: "
                "--sql never merges rows into a table", "restore into a new project, or empty those tables first")
