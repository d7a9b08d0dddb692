"""The parts of `restore --sql`'s target handling that need no server: the COPY targets of a data
dump (fed in any chunking), and roles.sql planned for a non-superuser target."""

from __future__ import annotations

from backupd.sqltarget import CopyTargets, TargetFacts, plan_roles

DUMP = (b'SET session_replication_role = replica;\nCOPY "auth"."users" ("id") FROM stdin;\n'
        b"1\tCOPY public.fake FROM stdin;\n\\.\n\nCOPY public.tasks (id) FROM stdin;\n\\.\n"
        b'COPY "public"."Odd ""x""" (a) FROM stdin;\nrow\n\\.\nRESET ALL;\n')

ROLES = """SET default_transaction_read_only = off;
CREATE ROLE "reporting";
ALTER ROLE "reporting" WITH INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOBYPASSRLS;
CREATE ROLE "app_admin";
ALTER ROLE "app_admin" WITH NOINHERIT LOGIN BYPASSRLS REPLICATION;
ALTER ROLE "anon" SET "statement_timeout" TO '3s';
COMMENT ON ROLE "reporting" IS 'reads; for the "weekly" report';
GRANT SET ON PARAMETER "session_replication_role" TO "postgres";
RESET ALL;
"""


def test_copy_targets_in_any_chunking():
    """Every COPY target, once, however the stream is cut; a data row that looks like a COPY
    line is data, not a target."""
    for size in (1, 2, 3, 7, 64, len(DUMP)):
        targets = CopyTargets()
        for start in range(0, len(DUMP), size):
            targets.feed(DUMP[start:start + size])
        assert targets.tables == ["auth.users", "public.tasks", 'public.Odd "x"'], size


def test_roles_for_a_non_superuser_supabase_target():
    """Existing roles kept (one warning each), superuser-only attributes left out (a warning for a
    positive one), GRANT ON PARAMETER skipped; the rest kept in order."""
    sql, warnings = plan_roles(ROLES, TargetFacts(150000, supabase=True, roles={"anon", "postgres"}))
    assert 'ALTER ROLE "reporting" WITH INHERIT NOCREATEROLE NOCREATEDB NOLOGIN;' in sql
    assert 'ALTER ROLE "app_admin" WITH NOINHERIT LOGIN;' in sql
    assert "anon" not in sql and "ON PARAMETER" not in sql
    assert """COMMENT ON ROLE "reporting" IS 'reads; for the "weekly" report';""" in sql
    assert warnings == [
        "role app_admin: BYPASSRLS, REPLICATION needs a superuser on the target: left out "
        "(the role is created without it)",
        "role anon already exists on the target: kept as it is (its CREATE/ALTER ROLE from the backup skipped)",
        'role postgres: `GRANT SET ON PARAMETER "session_replication_role" TO "postgres"` needs a superuser '
        "on the target: skipped",
    ]


def test_roles_for_a_superuser_target_are_kept_whole():
    """A superuser target takes every attribute and parameter grant; only an existing role is
    skipped (kept as it is)."""
    sql, warnings = plan_roles(ROLES, TargetFacts(150000, superuser=True, roles={"postgres", "anon"}))
    assert "BYPASSRLS REPLICATION" in sql and "ON PARAMETER" in sql and 'ALTER ROLE "anon"' not in sql
    assert warnings == ["role anon already exists on the target: kept as it is (its CREATE/ALTER ROLE from "
                        "the backup skipped)"]


def test_settings_of_a_role_nobody_creates_are_skipped():
    """A plain server without the skeleton has no `anon`: its ALTER ROLE ... SET is skipped with a
    warning rather than failing the restore."""
    sql, warnings = plan_roles(ROLES, TargetFacts(150000, superuser=True, roles={"postgres"}))
    assert 'ALTER ROLE "anon"' not in sql and 'ALTER ROLE "app_admin" WITH NOINHERIT LOGIN BYPASSRLS' in sql
    assert warnings == ["role anon does not exist on the target and roles.sql does not create it: "
                        """`ALTER ROLE "anon" SET "statement_timeout" TO '3s'` skipped"""]


def test_settings_of_roles_the_skeleton_creates_first_are_kept():
    """With --supabase-skeleton the reserved roles are created in the same transaction just before
    roles.sql: their settings apply, no warning."""
    sql, warnings = plan_roles(ROLES, TargetFacts(150000, superuser=True, roles={"postgres"}), ["anon"])
    assert """ALTER ROLE "anon" SET "statement_timeout" TO '3s';""" in sql and warnings == []
